//! Property tests of the two parsers that read hostile input in-process:
//! the config parser (`bgproxy --check`, reloads) and the front door's head
//! classifier (`front_door::shape`, the first thing to read a client's
//! bytes). Arbitrary input never panics; config errors always say
//! file:line:column, and a bad value always names its key; the classifier
//! never calls a head it has not seen the end of servable by the lean loop.
//! (The control API's bodies are tested against the real daemon, in
//! tests/tests/hardening_control.rs.)
//!
//! Case counts are kept modest so that `cargo test` stays fast.

use std::path::Path;

use bgproxy::config::{from_str, ConfigError};
use bgproxy::dataplane::front_door::{shape, Shape};
use proptest::prelude::*;

/// A config using most kinds of value: strings, durations, sizes,
/// integers, booleans, arrays, an enum, tables and arrays of tables. Every
/// upstream is an IP literal, so nothing is resolved.
const VALID: &str = r#"[proxy]
listen = ["127.0.0.1:18080"]
threads = 2
work_stealing = true
max_header_size = "16KiB"
max_headers = 64
client_timeout = "5s"

[control]
listen = "127.0.0.1:19900"
watch_config = false

[metrics]
listen = "127.0.0.1:19901"

[state]
path = "s/state.json"

[log]
level = "info"
access = true
access_sample = 0.5

[[app]]
name = "web"
hosts = ["a.example"]
initial_live = "blue"
max_body = "1MiB"
h2 = false

[app.health]
path = "/health"
interval = "1s"
rise = 2
expect_status = 200

[app.blue]
upstreams = ["127.0.0.1:3001"]

[app.green]
upstreams = ["127.0.0.1:3002"]

[[app.deploy.steps]]
name = "pull"
run = "echo {host}"
timeout = "10s"
migrate = false
"#;

const FILE: &str = "F.toml";

/// Values of every TOML type, each wrong for some key.
const VALUES: &[&str] = &[
    "\"purple\"",
    "\"\"",
    "\"fast\"",
    "\"-1s\"",
    "\"10QB\"",
    "\"999.1.2.3:80\"",
    "-1",
    "0",
    "70000",
    "9223372036854775807",
    "1.5",
    "nan",
    "true",
    "[]",
    "[1, \"a\"]",
    "[[]]",
    "{}",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
];

/// Loads `text`; every problem must be placed in the file (1-based line
/// and column within it, shown as `F.toml:line:column: `) and say
/// something. Returns the problems.
fn placed_problems(text: &str) -> Result<Vec<bgproxy::config::Problem>, TestCaseError> {
    match from_str(text, Path::new(FILE)) {
        Ok(_) => Ok(Vec::new()),
        Err(ConfigError::Invalid(problems)) => {
            prop_assert!(!problems.is_empty());
            let last_line = text.matches('\n').count() + 1;
            for p in &problems {
                prop_assert!(
                    (1..=last_line).contains(&p.line) && p.column >= 1,
                    "{p} in a text of {last_line} lines"
                );
                let shown = p.to_string();
                prop_assert!(
                    shown.starts_with(&format!("{FILE}:{}:{}: ", p.line, p.column)),
                    "{shown}"
                );
                prop_assert!(!p.message.trim().is_empty(), "{shown}");
            }
            Ok(problems)
        }
        Err(e) => Err(TestCaseError::fail(format!("not a placed error: {e}"))),
    }
}

/// The nearest char boundary at or below `i`.
fn floor(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// TOML-ish lines: headers, `key = value` with real and made-up keys, and
/// noise.
fn tomlish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("listen".to_string()),
        Just("name".to_string()),
        Just("initial_live".to_string()),
        Just("upstreams".to_string()),
        Just("threads".to_string()),
        "[a-z_]{1,12}",
        "\"[^\"\\\\]{0,8}\"",
    ];
    let header = prop_oneof![
        Just("[proxy]"),
        Just("[[app]]"),
        Just("[app.blue]"),
        Just("[app.health]"),
        Just("[[app.deploy.steps]]"),
        Just("[state]"),
        Just("[control]"),
        Just("[proxy.tls]"),
        Just("[[proxy]]"),
        Just("[app"),
    ]
    .prop_map(String::from);
    let value = prop_oneof![
        prop::sample::select(VALUES).prop_map(String::from),
        "\"[ -~]{0,20}\"",
        "[ -~]{0,12}",
    ];
    let line = prop_oneof![
        3 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => header,
        1 => "\\PC{0,30}",
    ];
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text at all.
    #[test]
    fn config_any_text_is_placed(text in "\\PC{0,400}") {
        placed_problems(&text)?;
    }

    /// Text shaped like TOML, so that most of it gets past the TOML
    /// parser into the schema and the validator.
    #[test]
    fn config_tomlish_text_is_placed(text in tomlish()) {
        placed_problems(&text)?;
    }

    /// The valid config, cut and pasted at random.
    #[test]
    fn config_mutated_is_placed(
        cuts in prop::collection::vec((0..VALID.len(), 0..40usize, "\\PC{0,12}"), 1..4),
    ) {
        let mut text = VALID.to_string();
        for (at, len, insert) in cuts {
            let start = floor(&text, at);
            let end = floor(&text, start + len);
            text.replace_range(start..end, &insert);
        }
        placed_problems(&text)?;
    }

    /// One value of the valid config replaced by a value of any type:
    /// every problem on that line names the key (item 9 of #17: enum
    /// variants and wrong types included).
    #[test]
    fn config_bad_value_names_its_key(
        line in 0..VALID.lines().count(),
        value in prop::sample::select(VALUES),
    ) {
        let lines: Vec<&str> = VALID.lines().collect();
        prop_assume!(lines[line].contains(" = "));
        let (key, _) = lines[line].split_once(" = ").unwrap();
        let mut text = String::new();
        for (i, l) in lines.iter().enumerate() {
            if i == line {
                text.push_str(&format!("{key} = {value}"));
            } else {
                text.push_str(l);
            }
            text.push('\n');
        }
        for p in placed_problems(&text)? {
            if p.line == line + 1 {
                prop_assert!(p.key.contains(key), "{p}");
            }
        }
    }
}

#[test]
fn the_base_config_is_valid() {
    if let Err(e) = from_str(VALID, Path::new(FILE)) {
        panic!("{e}");
    }
}

/// A bad enum value, and a value of the wrong type, name their key like
/// every other problem.
#[test]
fn enum_and_type_errors_name_the_key() {
    let text = VALID.replace("initial_live = \"blue\"", "initial_live = \"purple\"");
    let e = from_str(&text, Path::new(FILE)).unwrap_err().to_string();
    assert!(
        e.contains(
            "F.toml:27:16: app[0].initial_live: unknown variant `purple`, expected `blue` or `green`"
        ),
        "{e}"
    );
    let text = VALID.replace("rise = 2", "rise = \"two\"");
    let e = from_str(&text, Path::new(FILE)).unwrap_err().to_string();
    assert!(e.contains(": app[0].health.rise: invalid type"), "{e}");
    let text = VALID.replace("[app.green]\nupstreams = [\"127.0.0.1:3002\"]\n", "");
    let e = from_str(&text, Path::new(FILE)).unwrap_err().to_string();
    assert!(
        e.contains("F.toml:24:1: app[0]: missing field `green`"),
        "{e}"
    );
}

/// Request heads: a plausible request line, then header lines from a set
/// that covers every reason to leave the lean loop, in any case.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec![
        "GET", "HEAD", "OPTIONS", "POST", "PUT", "get", "G\tET",
    ]);
    let target = prop::sample::select(vec!["/", "/a?b=c", "*", "http://x/", "", "/ /"]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1"]);
    let name = prop::sample::select(vec![
        "Host",
        "Connection",
        "Content-Length",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
        "TE",
        "Trailer",
        "Keep-Alive",
        "Proxy-Connection",
        "X-Other",
        "Host ",
        " Host",
    ]);
    let value = prop::sample::select(vec![
        "a.example",
        "keep-alive",
        "close",
        "upgrade",
        "chunked",
        "5",
        "",
        "a.example:80@evil.test",
    ]);
    let header = (name, value, any::<bool>()).prop_map(|(n, v, upper)| {
        let n = if upper {
            n.to_uppercase()
        } else {
            n.to_lowercase()
        };
        format!("{n}: {v}\r\n")
    });
    (method, target, version, prop::collection::vec(header, 0..6)).prop_map(|(m, t, v, headers)| {
        format!("{m} {t} {v}\r\n{}\r\n", headers.concat()).into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes: no panic, and the same answer twice.
    #[test]
    fn shape_any_bytes(buf in prop::collection::vec(any::<u8>(), 0..600), yes in any::<bool>()) {
        let first = shape(&buf, |_| yes);
        prop_assert_eq!(first, shape(&buf, |_| yes));
    }

    /// A head is lean only when complete (its length, all of it), with
    /// exactly one Host (the value asked about), a lean method over HTTP/1.1
    /// and none of the headers that mean a body, an upgrade or hop-by-hop
    /// semantics; none of its strict prefixes is lean.
    #[test]
    fn shape_lean_only_when_whole_and_simple(buf in head()) {
        let mut asked = Vec::new();
        let got = shape(&buf, |host| {
            asked.push(host.to_vec());
            true
        });
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        if let Shape::Lean(len) = got {
            prop_assert_eq!(len, buf.len());
            prop_assert!(text.starts_with("get ") || text.starts_with("head ") || text.starts_with("options "), "{text:?}");
            prop_assert!(text.contains(" http/1.1\r\n"), "{text:?}");
            prop_assert_eq!(text.matches("\r\nhost:").count(), 1, "{:?}", text);
            for banned in [
                "content-length:", "transfer-encoding:", "upgrade:", "expect:", "\r\nte:",
                "trailer:", "keep-alive:", "proxy-connection:",
            ] {
                prop_assert!(!text.contains(banned), "{banned} in {text:?}");
            }
            prop_assert_eq!(asked.len(), 1);
            let host_line = format!(
                "\r\nhost: {}\r\n",
                String::from_utf8_lossy(&asked[0]).to_ascii_lowercase()
            );
            prop_assert!(text.contains(&host_line), "{:?} in {:?}", host_line, text);
        }
        for end in 0..buf.len() {
            let prefix = shape(&buf[..end], |_| true);
            prop_assert!(!matches!(prefix, Shape::Lean(_)), "prefix of {} bytes: {:?}", end, prefix);
        }
    }
}
