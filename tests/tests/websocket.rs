//! WebSocket (HTTP Upgrade) through the proxy: echo end to end; an upgraded
//! connection survives a switch on the old color, new ones go to the new
//! color, and status counts what each color still holds.

use std::time::Duration;

use bgproxy_e2e::{wait_until, AppSpec, Backend, Daemon};
use tungstenite::protocol::frame::coding::CloseCode;
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

fn set_read_timeout(
    ws: &tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    t: Duration,
) {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(t)).unwrap();
    }
}

#[test]
fn upgraded_connections_are_closed_after_drain_timeout() {
    let (b1, g1) = (Backend::start("blue"), Backend::start("green"));
    let (b2, g2) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[
        AppSpec::new("chat", &[&b1], &[&g1])
            .hosts(&["chat.test"])
            .keys("drain_timeout = \"1s\""),
        AppSpec::new("feed", &[&b2], &[&g2])
            .hosts(&["feed.test"])
            .keys("drain_timeout = \"0\""),
    ]);
    for app in ["chat", "feed"] {
        assert!(d.wait_health(app, "green", "up", T));
    }
    let open = |host: &str| {
        let req = tungstenite::http::Request::builder()
            .uri(format!("ws://{}/socket", d.proxy))
            .header("Host", host)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header(
                "Sec-WebSocket-Key",
                tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .unwrap();
        tungstenite::connect(req).unwrap().0
    };
    let mut chat = open("chat.test");
    let mut feed = open("feed.test");
    assert_eq!(echo(&mut chat, "a"), "blue: a");
    assert_eq!(echo(&mut feed, "a"), "blue: a");

    let switched = std::time::Instant::now();
    assert_eq!(d.switch("chat", "green").0, 200);
    assert_eq!(d.switch("feed", "green").0, 200);
    // Inside drain_timeout the old color still serves its connection.
    assert_eq!(echo(&mut chat, "b"), "blue: b");

    // After it, the proxy closes the connection with "going away" (1001).
    set_read_timeout(&chat, Duration::from_secs(10));
    let close = loop {
        match chat.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    let after = switched.elapsed();
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    assert!(
        after >= Duration::from_millis(900),
        "closed after only {after:?}"
    );
    assert!(
        after < Duration::from_secs(5),
        "closed only after {after:?}"
    );
    assert!(
        wait_until(T, || d.app("chat")["colors"]["blue"]["connections"] == 0),
        "{}",
        d.app("chat")
    );
    assert_eq!(
        d.metric(r#"bgproxy_drained_connections_total{app="chat",color="blue"}"#),
        Some(1.0)
    );
    // The client reconnects, to the live color.
    let mut again = open("chat.test");
    assert_eq!(echo(&mut again, "c"), "green: c");

    // drain_timeout = 0: never closed.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(echo(&mut feed, "still"), "blue: still");
    assert_eq!(d.app("feed")["colors"]["blue"]["connections"], 1);
    assert_eq!(
        d.metric(r#"bgproxy_drained_connections_total{app="feed",color="blue"}"#),
        Some(0.0)
    );
}

/// A switch back to the old color inside `drain_timeout` cancels its drain:
/// the connection on it stays. Beside it, an app with the same drain that
/// does not switch back has its connection closed at the timeout, so the
/// drain was due and would have fired.
#[test]
fn switching_back_inside_drain_timeout_keeps_the_connection() {
    let (b1, g1) = (Backend::start("blue"), Backend::start("green"));
    let (b2, g2) = (Backend::start("blue"), Backend::start("green"));
    let drain = "drain_timeout = \"2s\"";
    let d = Daemon::start(&[
        AppSpec::new("back", &[&b1], &[&g1])
            .hosts(&["back.test"])
            .keys(drain),
        AppSpec::new("away", &[&b2], &[&g2])
            .hosts(&["away.test"])
            .keys(drain),
    ]);
    for app in ["back", "away"] {
        assert!(d.wait_health(app, "green", "up", T));
    }
    let open = |host: &str| {
        let req = tungstenite::http::Request::builder()
            .uri(format!("ws://{}/chat", d.proxy))
            .header("Host", host)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header(
                "Sec-WebSocket-Key",
                tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .unwrap();
        tungstenite::connect(req).unwrap().0
    };
    let (mut back, mut away) = (open("back.test"), open("away.test"));
    assert_eq!(echo(&mut back, "a"), "blue: a");
    assert_eq!(echo(&mut away, "a"), "blue: a");

    let switched = std::time::Instant::now();
    assert_eq!(d.switch("back", "green").0, 200);
    assert_eq!(d.switch("away", "green").0, 200);
    // Some time into the drain, well inside it, "back" returns to blue.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.switch("back", "blue").0, 200);
    assert!(
        switched.elapsed() < Duration::from_millis(1500),
        "the switch back came inside drain_timeout"
    );

    // "away" is closed when its drain is due...
    set_read_timeout(&away, Duration::from_secs(10));
    let close = loop {
        match away.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    assert!(switched.elapsed() >= Duration::from_millis(1900));
    // ...and "back", whose drain was cancelled, still talks to blue, also a
    // while past the moment its drain would have fired.
    assert_eq!(echo(&mut back, "b"), "blue: b");
    let past = Duration::from_millis(2000 + 1000);
    std::thread::sleep(past.saturating_sub(switched.elapsed()));
    assert_eq!(echo(&mut back, "c"), "blue: c");
    assert_eq!(d.app("back")["colors"]["blue"]["connections"], 1);
    assert_eq!(
        d.metric(r#"bgproxy_drained_connections_total{app="back",color="blue"}"#),
        Some(0.0)
    );
    assert_eq!(
        d.metric(r#"bgproxy_drained_connections_total{app="away",color="blue"}"#),
        Some(1.0)
    );
}

/// Upgraded connections get `tunnel_timeout` as their idle limit, not the
/// (short) request timeouts: idle past `read_timeout` and `client_timeout`
/// they live on; idle past `tunnel_timeout` they are closed.
#[test]
fn idle_websocket_lives_by_tunnel_timeout() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = bgproxy_e2e::Daemon::start_opts(
        &[AppSpec::new("web", &[&b], &[&g])
            .keys("read_timeout = \"700ms\"\ntunnel_timeout = \"2s\"")],
        bgproxy_e2e::Options {
            proxy: "client_timeout = \"700ms\"".into(),
            ..Default::default()
        },
    );
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/chat", d.proxy)).unwrap();
    assert_eq!(echo(&mut ws, "a"), "blue: a");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(echo(&mut ws, "b"), "blue: b");
    std::thread::sleep(Duration::from_millis(3500));
    set_read_timeout(&ws, Duration::from_secs(10));
    let _ = ws.send(Message::text("c"));
    let closed = loop {
        match ws.read() {
            Ok(Message::Text(t)) => panic!("still open after tunnel_timeout: {t}"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        !matches!(&closed, tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "not closed: {closed}"
    );
}
