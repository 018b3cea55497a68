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

/// The Grafana dashboard and the alert rules name only metrics bgproxy
/// really exports, and the dashboard is valid JSON.
#[test]
fn dashboard_and_alerts_name_only_real_metrics() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
    let dashboard = std::fs::read_to_string(conf.join("grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 6));
    for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(conf.join(file)).unwrap();
        let mut found = 0;
        for (i, _) in text.match_indices("bgproxy_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            // Dashboard uids and titles may say "bgproxy-..." but never "bgproxy_".
            assert!(
                bgproxy::metrics::names::ALL.contains(&base),
                "{file} names unknown metric {name}"
            );
            found += 1;
        }
        assert!(found >= 5, "{file} uses bgproxy metrics");
    }
}
