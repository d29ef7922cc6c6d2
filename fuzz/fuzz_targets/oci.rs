//! OCI documents from registries and layouts: index, manifest, image config, and references.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pyro_image::fuzz::oci_documents(data);
});
