//! The patch parser and applier: the input's first line (up to a NUL) is the old file, the
//! rest is the patch.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (old, patch) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let Ok(text) = std::str::from_utf8(patch) else { return };
    if let Ok(files) = pyro_patch::parse(text) {
        for fp in &files {
            let _ = pyro_patch::apply_file(fp, Some(old));
            let _ = pyro_patch::apply_file(fp, None);
        }
    }
});
