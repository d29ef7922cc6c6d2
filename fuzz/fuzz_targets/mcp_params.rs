//! The MCP tools' parameters as a client sends them (JSON objects of any shape).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyro_mcp::params::*;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = serde_json::from_value::<VmRunParams>(v.clone());
    let _ = serde_json::from_value::<VmCreateParams>(v.clone());
    let _ = serde_json::from_value::<VmExecParams>(v.clone());
    let _ = serde_json::from_value::<WorkspaceCreateParams>(v.clone());
    let _ = serde_json::from_value::<WorkspaceUpdateParams>(v.clone());
    let _ = serde_json::from_value::<WorkspaceExecParams>(v.clone());
    let _ = serde_json::from_value::<WorkspaceExportParams>(v.clone());
    let _ = serde_json::from_value::<WorkspaceFileReadParams>(v.clone());
    let _ = serde_json::from_value::<ShellOpenParams>(v.clone());
    let _ = serde_json::from_value::<ShellReadParams>(v.clone());
    let _ = serde_json::from_value::<ShellSignalParams>(v.clone());
    let _ = serde_json::from_value::<ServiceStartParams>(v.clone());
    let _ = serde_json::from_value::<ServiceLogsParams>(v);
});
