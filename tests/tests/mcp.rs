//! `bgctl mcp` end to end with a real MCP client: the official Python SDK
//! (`mcp` from PyPI; installed into a venv under the target directory when
//! the system's python3 lacks it) runs `tests/mcp_client.py`, which starts
//! the real `bgctl mcp` over stdio against the real daemon with the
//! requester's token. An assistant can read, deploy to the standby and ask;
//! only `bgctl approve` with the operator's token moves traffic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bgproxy_e2e::{bin, wait_until, AppSpec, Backend, Daemon, Options};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
const OPERATOR: &str = "operator-token";
const REQUESTER: &str = "requester-token";
/// The SDK versions the client script is written for.
const MCP_SDK: &str = "mcp>=1.10,<3";

/// Whether `python` can import the SDK.
fn has_sdk(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import mcp.client.stdio"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A python that has the MCP SDK: the system's python3 if it has it, else
/// a venv under the target directory, made and filled from PyPI once; where
/// python3 cannot make a venv (Debian without python3-venv), the user's
/// site-packages (`pip install --user`).
fn mcp_python() -> PathBuf {
    let system = PathBuf::from("python3");
    if has_sdk(&system) {
        return system;
    }
    // target/<profile>/deps/<test> -> target/mcp-venv
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
    let venv = target.join("mcp-venv");
    let python = venv.join("bin").join("python");
    if has_sdk(&python) {
        return python;
    }
    let pip = |python: &Path, user: bool| {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "pip", "install", "--quiet"]);
        if user {
            cmd.arg("--user");
        }
        let out = cmd.arg(MCP_SDK).output().expect("python3 runs");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let venv_made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let (python, why) = if venv_made {
        let why = pip(&python, false);
        (python, why)
    } else {
        let why = pip(&system, true);
        (system, why)
    };
    assert!(
        has_sdk(&python),
        "cannot install the MCP Python SDK ({MCP_SDK}) from PyPI with {}: {why}",
        python.display()
    );
    python
}

/// A `[[app.deploy.steps]]` table.
fn step(name: &str, run: &str, extra: &str) -> String {
    format!("\n[[app.deploy.steps]]\nname = \"{name}\"\nrun = '''{run}'''\n{extra}\n")
}

/// The JSON of a tool result's second text (the daemon's answer).
fn data(result: &Value) -> Value {
    let text = result["text"][1].as_str().unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {result}"))
}

#[test]
fn an_assistant_deploys_and_asks_and_only_a_human_moves_traffic() {
    let python = mcp_python();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let dir = tempfile::tempdir().unwrap();
    let requester = dir.path().join("requester.token");
    std::fs::write(&requester, format!("{REQUESTER}\n")).unwrap();
    let m = dir.path().display();
    let steps = [
        step(
            "build",
            &format!("echo building {{color}}; touch {m}/built-{{color}}"),
            "",
        ),
        step("migrate", &format!("touch {m}/migrated"), "migrate = true"),
    ]
    .concat();
    let d = Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g]).extra(&steps)],
        Options {
            token: Some(OPERATOR.into()),
            control: format!("requester_token_file = \"{}\"\n", requester.display()),
            ..Options::default()
        },
    );
    assert!(d.wait_health("web", "green", "up", T), "{}", d.log());
    assert!(d.wait_health("web", "blue", "up", T), "{}", d.log());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(bin("bgctl"))
        .env("BGCTL_ADDR", format!("http://{}", d.control))
        .env("BGCTL_TOKEN", REQUESTER)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_until(Duration::from_secs(60), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        ended && out.status.success(),
        "the MCP client failed: {stdout}{stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).expect("one JSON report");

    // The server and its tools, with the read-only ones marked.
    assert_eq!(report["server"]["name"], "bgctl", "{report}");
    assert!(
        report["server"]["instructions"]
            .as_str()
            .unwrap()
            .contains("bgctl approve"),
        "{report}"
    );
    let tools = report["tools"].as_object().unwrap();
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "deploy_to_standby",
            "get_deployment_status",
            "get_history",
            "rollback",
            "switch_traffic"
        ]
    );
    for (name, read_only, properties) in [
        ("get_deployment_status", true, &["app"][..]),
        ("get_history", true, &["app"]),
        ("deploy_to_standby", false, &["app", "runMigrations"]),
        ("switch_traffic", false, &["app", "emergency", "reason"]),
        ("rollback", false, &["app", "reason"]),
    ] {
        let t = &tools[name];
        assert_eq!(t["annotations"]["readOnlyHint"], read_only, "{name}: {t}");
        assert_eq!(
            t["properties"],
            serde_json::json!(properties),
            "{name}: {t}"
        );
        assert!(!t["description"].as_str().unwrap().is_empty(), "{name}");
    }
    assert_eq!(
        tools["switch_traffic"]["annotations"]["destructiveHint"],
        false
    );
    assert!(
        tools["switch_traffic"]["description"]
            .as_str()
            .unwrap()
            .contains("does NOT move traffic"),
        "{report}"
    );

    // get_deployment_status.
    let status = &report["status"];
    assert_eq!(status["isError"], false, "{status}");
    assert!(
        status["text"][0]
            .as_str()
            .unwrap()
            .contains("LIVE blue (100% of requests), STANDBY green (healthy)"),
        "{status}"
    );
    assert_eq!(data(status)["apps"][0]["live"], "blue");

    // rollback before any switch: a tool error the assistant reads.
    let rollback = &report["rollback"];
    assert_eq!(rollback["isError"], true, "{rollback}");
    assert!(
        rollback["text"][0]
            .as_str()
            .unwrap()
            .contains("never been switched"),
        "{rollback}"
    );

    // deploy_to_standby: the standby only, each step as progress.
    let deploy = &report["deploy"];
    assert_eq!(deploy["isError"], false, "{deploy}");
    assert!(
        deploy["text"][0]
            .as_str()
            .unwrap()
            .contains("Deployed app 'web' to green (the standby) and it is healthy"),
        "{deploy}"
    );
    assert!(
        dir.path().join("built-green").exists(),
        "the step ran on green"
    );
    assert!(
        !dir.path().join("built-blue").exists(),
        "never on the live color"
    );
    assert!(
        !dir.path().join("migrated").exists(),
        "runMigrations was false"
    );
    let progress = deploy["progress"].as_array().unwrap();
    let messages: Vec<&str> = progress
        .iter()
        .map(|p| p["message"].as_str().unwrap_or_default())
        .collect();
    for expected in [
        "deploying to green (the standby): 1 step(s), skipping migrate",
        "step 1/1 'build' running",
        "step 1 'build' ok",
        "green is healthy",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "{expected} missing from {messages:?}"
        );
    }
    let values: Vec<f64> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(
        values.windows(2).all(|w| w[1] > w[0]),
        "progress increases: {values:?}"
    );
    assert_eq!(progress[0]["total"], 2.0, "one step and the health wait");

    // switch_traffic: a pending request, not a switch.
    let switch = &report["switch"];
    assert_eq!(switch["isError"], false, "{switch}");
    let asked = data(switch);
    let id = asked["request_id"].as_str().unwrap().to_string();
    assert_eq!(asked["approve_with"], format!("bgctl approve {id}"));
    assert!(
        switch["text"][0]
            .as_str()
            .unwrap()
            .contains("Traffic has NOT moved"),
        "{switch}"
    );
    let app = d.app("web");
    assert_eq!(
        (&app["live"], &app["switch_count"]),
        (&"blue".into(), &0.into()),
        "routing unchanged"
    );
    assert_eq!(d.color_of("x"), "blue");
    let (_, pending) = d.api("GET", "/v1/requests", None);
    assert_eq!(pending["requests"][0]["id"], id.as_str(), "{pending}");
    assert!(
        pending["requests"][0]["requested_by"]
            .as_str()
            .unwrap()
            .contains("(assistant, bgctl mcp)"),
        "{pending}"
    );

    // get_history shows the deploy; an unknown app is a tool error.
    let history = &report["history"];
    assert_eq!(history["isError"], false, "{history}");
    assert!(
        history["text"][0]
            .as_str()
            .unwrap()
            .contains("deploy to green: success"),
        "{history}"
    );
    assert_eq!(report["unknown_app"]["isError"], true, "{report}");
    assert!(
        report["unknown_app"]["text"][0]
            .as_str()
            .unwrap()
            .contains("unknown app 'no-such-app'"),
        "{report}"
    );

    // The requester's token cannot approve; the operator's moves traffic.
    let mut d = d;
    d.token = Some(REQUESTER.into());
    let (code, _, err) = d.bgctl(&["approve", &id, "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("requester"), "{err}");
    assert_eq!(d.color_of("x"), "blue");
    d.token = Some(OPERATOR.into());
    let (code, out, err) = d.bgctl(&["approve", &id, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("GREEN is now LIVE"), "{out}");
    assert_eq!(d.color_of("x"), "green");
    let (_, h) = d.api("GET", "/v1/apps/web/history", None);
    let reason = h["history"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("release 45 via MCP") && reason.contains("(assistant, bgctl mcp)"),
        "{h}"
    );
}
