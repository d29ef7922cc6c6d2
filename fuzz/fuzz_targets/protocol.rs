//! The wire protocol as either end reads it: frames from a byte stream, and each JSON frame as
//! a request (the agent's side) and as a response (the host's side).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyro_protocol::{read_frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok((_kind, payload)) = read_frame(&mut r) {
        let _ = serde_json::from_slice::<Request>(&payload);
        let _ = serde_json::from_slice::<Response>(&payload);
    }
});
