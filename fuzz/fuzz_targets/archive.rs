//! The archive checker, both profiles: a guest's output (the untrusted one) and an image layer,
//! unpacked into a fresh directory. Whatever the archive, nothing may land outside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyro_image::unpack::{unpack, ArchiveProfile, OutputLimits, Owner};

fuzz_target!(|data: &[u8]| {
    let Ok(root) = tempfile::tempdir() else { return };
    let dest = root.path().join("out");
    let untrusted = ArchiveProfile::UntrustedGuestOutput {
        owner: Owner::caller(),
        limits: OutputLimits::default(),
    };
    let _ = unpack(data, &dest, &untrusted);
    let _ = std::fs::remove_dir_all(&dest);
    let _ = unpack(data, &dest, &ArchiveProfile::TrustedImageLayer { uid_shift: 100_000 });
    // Nothing escaped: the only entry beside the output is the output itself.
    let beside: Vec<_> = std::fs::read_dir(root.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(beside.iter().all(|n| n == "out"), "wrote beside the output: {beside:?}");
});
