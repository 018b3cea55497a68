//! WebSocket (HTTP Upgrade) through the proxy: echo end to end; an upgraded
//! connection survives a switch on the old color, new ones go to the new
//! color, and status counts what each color still holds.

use std::time::Duration;

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon};
use tungstenite::Message;

const T: Duration = Duration::from_secs(10);

fn echo<S: std::io::Read + std::io::Write>(
    ws: &mut tungstenite::WebSocket<S>,
    text: &str,
) -> String {
    ws.send(Message::text(text)).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return t.as_str().to_string(),
            _ => continue,
        }
    }
}

#[test]
fn websocket_survives_a_switch_and_is_counted() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[AppSpec::new("web", &[&b], &[&g])]);
    assert!(d.wait_health("web", "green", "up", T));
    let url = format!("ws://{}/chat", d.proxy);
    let (mut old, resp) = tungstenite::connect(&url).unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(echo(&mut old, "hello"), "blue: hello");

    assert_eq!(d.switch("web", "green").0, 200);
    // The upgraded connection stays on the old color until it closes...
    assert_eq!(echo(&mut old, "still here"), "blue: still here");
    // ...new connections go to the new live color...
    let (mut new, _) = tungstenite::connect(&url).unwrap();
    assert_eq!(echo(&mut new, "hi"), "green: hi");
    // ...and status shows what each color still holds.
    let app = d.app("web");
    assert_eq!(app["colors"]["blue"]["connections"], 1, "{app}");
    assert_eq!(app["colors"]["green"]["connections"], 1, "{app}");
    let (code, out, _) = d.bgctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 in flight"), "{out}");

    // The client goes away: the connection ends and the count follows.
    old.close(None).unwrap();
    let _ = old.flush();
    drop(old);
    assert!(
        wait_until(T, || d.app("web")["colors"]["blue"]["connections"] == 0),
        "{}",
        d.app("web")
    );
}
