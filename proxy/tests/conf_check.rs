//! Every example configuration in `conf/` passes `bgproxy --check`.
//! (Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `bgproxy` binary that the end-to-end
//! tests in `tests/` run.)

use std::process::Command;

#[test]
fn every_example_config_passes_check() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(env!("CARGO_BIN_EXE_bgproxy"))
                .arg("--check")
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} failed --check:\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected conf/bgproxy.toml and conf/demo.toml"
    );
}
