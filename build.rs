//! Generates the Rust view of include/sersync.h, the C contract.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=include/sersync.h");
    let bindings = bindgen::Builder::default()
        .header("include/sersync.h")
        .allowlist_type("sersync_.*")
        .allowlist_var("SERSYNC_.*")
        .allowlist_function("sersync_.*")
        .rustified_enum("sersync_(rc|op|log_level|peer_state|quarantine_action|resync_state)")
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on include/sersync.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("sersync_h.rs");
    bindings.write_to_file(out).expect("writing bindings");
}
