//! Several LB hosts on one etcd (`[cluster]`, #24), end to end: real
//! bgproxy processes on a real three-member etcd cluster (Debian's
//! etcd-server) on 127.0.0.1. A switch on one is routed by all; two racing
//! switches: one wins, the other is `plan_stale`; an instance cut off from
//! etcd (through a relay the test cuts) keeps routing by its last state,
//! refuses changes with 503 `no_quorum`, says so in its metrics, and
//! catches up on reconnect, also after etcd compacted the history; an
//! instance started while etcd is unreachable comes up from its local
//! copy; `kill -9` of the leader during a rollout: another instance takes
//! over and the rollout goes on from its step. etcd over TLS with client
//! certificates: a bgproxy with its certificate works, one without is
//! refused by etcd and says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgproxy_e2e::etcd::{Etcd, Relay, TlsEtcd};
use bgproxy_e2e::{check_text, wait_until, AppSpec, Backend, Daemon, Options};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

fn app(b: &Backend, g: &Backend, extra: &str) -> AppSpec {
    AppSpec::new("web", &[b], &[g]).extra(extra)
}

/// A bgproxy named `name` in the cluster at `urls`.
fn instance(name: &str, urls: &[String], apps: &[AppSpec]) -> Daemon {
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Daemon::start_opts(
        apps,
        Options {
            toml: format!(
                "[cluster]\netcd = [{list}]\nprefix = \"/e2e\"\nname = \"{name}\"\nack_timeout = \"2s\"\n"
            ),
            ..Options::default()
        },
    )
}

/// Instances `names` on `etcd`, each connected and seeing all of them.
fn instances(names: &[&str], etcd: &Etcd, apps: &[AppSpec]) -> Vec<Daemon> {
    let ds: Vec<Daemon> = names
        .iter()
        .map(|n| instance(n, &etcd.urls(), apps))
        .collect();
    for d in &ds {
        wait_connected(d, names.len());
    }
    ds
}

fn cluster(d: &Daemon) -> Value {
    let (s, v) = d.api("GET", "/v1/cluster", None);
    assert_eq!(s, 200, "{v}");
    v
}

/// Waits until `d` is connected and sees `members` instances.
fn wait_connected(d: &Daemon, members: usize) {
    let ok = wait_until(T, || {
        let c = cluster(d);
        c["connected"] == true && c["members"].as_array().is_some_and(|m| m.len() >= members)
    });
    assert!(ok, "not connected: {}\nlog:\n{}", cluster(d), d.log());
}

fn connected_metric(d: &Daemon) -> Option<f64> {
    let name = cluster(d)["name"].as_str().unwrap().to_string();
    d.metric(&format!("bgproxy_cluster_connected{{name=\"{name}\"}}"))
}

#[test]
fn a_switch_on_one_instance_is_routed_by_all() {
    let etcd = Etcd::start();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let ds = instances(&["lb1", "lb2", "lb3"], &etcd, &[app(&b, &g, "")]);
    for d in &ds {
        assert_eq!(connected_metric(d), Some(1.0));
        assert_eq!(d.color_of("any"), "blue");
    }
    assert!(ds[0].wait_health("web", "green", "up", T));
    // The state is in etcd, one document.
    assert!(etcd.get("/e2e/state").is_some());

    let started = Instant::now();
    let (s, v) = ds[0].switch("web", "green");
    let answered = started.elapsed();
    assert_eq!(s, 200, "{v}");
    // Every instance serves green: how long after the switch was sent.
    let mut until = Vec::new();
    for d in &ds {
        let ok = wait_until(T, || d.color_of("any") == "green");
        assert!(ok, "an instance still routes blue:\n{}", d.log());
        until.push(started.elapsed());
    }
    println!(
        "switch answered in {:.1} ms (applied_by {}, missing {}); every instance served green after {:.1} ms (per instance: {:?})",
        answered.as_secs_f64() * 1000.0,
        v["applied_by"],
        v["missing"],
        until.iter().max().unwrap().as_secs_f64() * 1000.0,
        until
            .iter()
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
    );
    assert_eq!(v["applied_by"], json!(["lb1", "lb2", "lb3"]), "{v}");
    assert_eq!(v["missing"], json!([]), "{v}");
    let (_, st) = ds[2].api("GET", "/v1/status", None);
    assert_eq!(st["cluster"]["connected"], true, "{st}");
    for d in &ds {
        let a = d.app("web");
        assert_eq!(a["live"], "green");
        assert_eq!(a["switch_count"], 1, "one switch, shared: {a}");
    }
    // The cluster view: members, their revisions, one leader.
    let c = cluster(&ds[1]);
    let members = c["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{c}");
    assert_eq!(
        members.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{c}"
    );
    assert!(c["leader"].is_string(), "{c}");
    // bgctl cluster prints the same.
    let (code, out, err) = ds[1].bgctl(&["cluster"]);
    assert_eq!(code, 0, "{out}{err}");
    for n in ["lb1", "lb2", "lb3"] {
        assert!(out.contains(n), "{out}");
    }
    let (s, v) = ds[1].api("POST", "/v1/cluster", None);
    assert_eq!((s, &v["code"]), (405, &json!("method_not_allowed")), "{v}");
    // bgctl switch says who applied it.
    assert!(ds[2].wait_health("web", "blue", "up", T));
    let (code, out, err) = ds[2].bgctl(&["switch", "blue", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("applied by every instance: lb1, lb2, lb3"),
        "{out}"
    );
    for d in &ds {
        assert!(wait_until(T, || d.color_of("any") == "blue"));
    }
}

#[test]
fn two_racing_switches_on_two_instances_one_wins_the_other_is_plan_stale() {
    let etcd = Etcd::start();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let apps = [app(&b, &g, "")];
    let d1 = instance("lb1", &etcd.urls(), &apps);
    let d2 = instance("lb2", &etcd.urls(), &apps);
    wait_connected(&d1, 2);
    wait_connected(&d2, 2);
    assert!(d1.wait_health("web", "green", "up", T));
    assert!(d2.wait_health("web", "green", "up", T));
    assert!(d1.wait_health("web", "blue", "up", T));
    assert!(d2.wait_health("web", "blue", "up", T));

    for round in 0..6 {
        let a = d1.app("web");
        let live = a["live"].as_str().unwrap().to_string();
        let to = if live == "blue" { "green" } else { "blue" };
        let generation = d1.api("GET", "/v1/status", None).1["generation"].clone();
        let count = a["switch_count"].as_u64().unwrap();
        let body = json!({"to": to, "actor": "e2e", "expect_generation": generation});
        let results: Vec<(u16, Value)> = std::thread::scope(|s| {
            let h1 = s.spawn(|| d1.api("POST", "/v1/apps/web/switch", Some(body.clone())));
            let h2 = s.spawn(|| d2.api("POST", "/v1/apps/web/switch", Some(body.clone())));
            vec![h1.join().unwrap(), h2.join().unwrap()]
        });
        let won = results.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(won, 1, "round {round}: exactly one wins: {results:?}");
        let lost = results.iter().find(|(s, _)| *s != 200).unwrap();
        assert_eq!(lost.0, 409, "{results:?}");
        assert_eq!(lost.1["code"], "plan_stale", "{results:?}");
        println!("round {round}: loser said: {}", lost.1["error"]);
        // One switch, seen by both.
        for d in [&d1, &d2] {
            let ok = wait_until(T, || {
                let a = d.app("web");
                a["live"] == to && a["switch_count"] == count + 1
            });
            assert!(ok, "round {round}: {}", d.app("web"));
        }
    }
}

/// lb1 reaches every member; lb2 only member 0, through a relay.
struct Partitioned {
    etcd: Etcd,
    relay: Relay,
    d1: Daemon,
    d2: Daemon,
    _b: Backend,
    _g: Backend,
}

fn partitioned() -> Partitioned {
    let etcd = Etcd::start();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let apps = [app(&b, &g, "")];
    let relay = Relay::start(etcd.clients[0]);
    let d1 = instance("lb1", &etcd.urls(), &apps);
    let d2 = instance("lb2", &[format!("http://{}", relay.addr)], &apps);
    wait_connected(&d1, 2);
    wait_connected(&d2, 2);
    assert!(d1.wait_health("web", "green", "up", T));
    assert!(d1.wait_health("web", "blue", "up", T));
    Partitioned {
        etcd,
        relay,
        d1,
        d2,
        _b: b,
        _g: g,
    }
}

fn cut_off(p: &Partitioned) {
    p.relay.cut();
    let gone = wait_until(T, || connected_metric(&p.d2) == Some(0.0));
    assert!(gone, "lb2 still says connected:\n{}", p.d2.log());
    assert_eq!(cluster(&p.d2)["connected"], false);
    // Status says so, and bgctl status too.
    let (_, st) = p.d2.api("GET", "/v1/status", None);
    assert_eq!(st["cluster"]["connected"], false, "{st}");
    let (_, out, _) = p.d2.bgctl(&["status"]);
    assert!(out.contains("NOT CONNECTED"), "{out}");
}

#[test]
fn an_instance_cut_off_keeps_its_color_refuses_changes_and_catches_up() {
    let p = partitioned();
    let (s, v) = p.d1.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    assert!(wait_until(T, || p.d2.color_of("any") == "green"));

    cut_off(&p);
    // Keeps routing by the last state it applied.
    for _ in 0..20 {
        assert_eq!(p.d2.color_of("any"), "green");
    }
    // Refuses changes, and says why.
    let (s, v) = p.d2.switch("web", "blue");
    assert_eq!((s, &v["code"]), (503, &json!("no_quorum")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("etcd"), "{v}");
    assert_eq!(p.d2.app("web")["live"], "green");

    // The other side goes on.
    let (s, v) = p.d1.switch("web", "blue");
    assert_eq!(s, 200, "{v}");
    println!(
        "switch while lb2 is cut off: applied_by {}, missing {}",
        v["applied_by"], v["missing"]
    );
    assert_eq!(p.d1.color_of("any"), "blue");
    assert_eq!(
        p.d2.color_of("any"),
        "green",
        "cut off: still the last applied"
    );

    let back = Instant::now();
    p.relay.restore();
    let ok = wait_until(T, || p.d2.color_of("any") == "blue");
    assert!(ok, "lb2 did not catch up:\n{}", p.d2.log());
    println!(
        "lb2 routed blue {:.0} ms after the relay was restored",
        back.elapsed().as_secs_f64() * 1000.0
    );
    assert!(wait_until(T, || connected_metric(&p.d2) == Some(1.0)));
    let a = p.d2.app("web");
    assert_eq!(
        (&a["live"], &a["switch_count"]),
        (&json!("blue"), &json!(2)),
        "{a}"
    );
    // And takes changes again.
    let (s, v) = p.d2.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    assert!(wait_until(T, || p.d1.color_of("any") == "green"));
}

#[test]
fn compaction_during_a_partition_reloads_the_whole_state_on_reconnect() {
    let p = partitioned();
    cut_off(&p);
    let before = p.etcd.revision();
    for to in ["green", "blue", "green"] {
        let (s, v) = p.d1.switch("web", to);
        assert_eq!(s, 200, "{v}");
    }
    // Enough writes for the history lb2 missed to be compacted away.
    for i in 0..5 {
        p.etcd.put("/e2e-other/filler", &i.to_string());
    }
    let now = p.etcd.revision();
    assert!(now > before + 3);
    p.etcd.compact(now);
    assert_eq!(p.d2.color_of("any"), "blue");

    p.relay.restore();
    let ok = wait_until(T, || p.d2.color_of("any") == "green");
    assert!(ok, "lb2 did not catch up:\n{}", p.d2.log());
    let a = p.d2.app("web");
    assert_eq!(a["switch_count"], 3, "{a}");
    let log = p.d2.log_with(&["reloaded the whole shared state"]);
    assert!(log.contains("reloaded the whole shared state"), "{log}");
}

#[test]
fn an_instance_started_while_etcd_is_unreachable_serves_its_local_copy() {
    let p = partitioned();
    let Partitioned {
        etcd: _etcd,
        relay,
        d1,
        mut d2,
        ..
    } = p;
    let (s, v) = d1.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    assert!(wait_until(T, || d2.color_of("any") == "green"));
    // The local copy has it too.
    let local = std::fs::read_to_string(d2.state_dir().join("state.json")).unwrap();
    assert!(local.contains("\"green\""), "{local}");

    d2.kill9();
    relay.cut();
    let (s, v) = d1.switch("web", "blue");
    assert_eq!(s, 200, "{v}");
    d2.spawn();
    // Comes up from its local copy, serves, refuses changes.
    assert_eq!(d2.color_of("any"), "green");
    assert_eq!(connected_metric(&d2), Some(0.0));
    let (s, v) = d2.switch("web", "blue");
    assert_eq!((s, &v["code"]), (503, &json!("no_quorum")), "{v}");

    relay.restore();
    let ok = wait_until(T, || d2.color_of("any") == "blue");
    assert!(ok, "lb2 did not catch up:\n{}", d2.log());
    assert!(wait_until(T, || connected_metric(&d2) == Some(1.0)));
}

#[test]
fn kill_9_of_the_leader_during_a_rollout_another_takes_over_from_its_step() {
    let etcd = Etcd::start();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let apps = [app(
        &b,
        &g,
        "[app.rollout]\nsticky = \"none\"\n[app.analysis]\nmin_requests = 3\nmax_inconclusive = 100\nmax_latency_ratio = 1000.0\nmax_error_ratio = 0.5\n",
    )];
    let mut ds: Vec<Daemon> = ["lb1", "lb2"]
        .iter()
        .map(|n| instance(n, &etcd.urls(), &apps))
        .collect();
    for d in &ds {
        wait_connected(d, 2);
        assert!(d.wait_health("web", "green", "up", T));
    }
    let leader = {
        let mut name = Value::Null;
        assert!(wait_until(T, || {
            name = cluster(&ds[0])["leader"].clone();
            name.is_string()
        }));
        name.as_str().unwrap().to_string()
    };
    let (li, si) = if leader == "lb1" { (0, 1) } else { (1, 0) };
    println!("leader: {leader}");

    // Traffic on both front doors, bounded in time, for the analysis.
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<_> = ds.iter().map(|d| d.proxy).collect();
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Acquire) && Instant::now() < end {
                for a in &addrs {
                    let _ = http
                        .get(format!("http://{a}/"))
                        .header("Host", "any")
                        .send();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let (s, v) = ds[si].api(
        "POST",
        "/v1/apps/web/canary",
        Some(json!({"to": "green", "steps": [10, 30, 60, 100], "step_interval": "2s", "actor": "e2e"})),
    );
    assert_eq!(s, 200, "{v}");
    // The leader moves it to its second step.
    let moved = wait_until(Duration::from_secs(30), || {
        ds[si].app("web")["rollout"]["step"]
            .as_u64()
            .is_some_and(|s| s >= 1)
    });
    assert!(
        moved,
        "the rollout did not move: {}\n{}",
        ds[si].app("web"),
        ds[li].log()
    );
    let at_kill = ds[si].app("web")["rollout"]["step"].as_u64().unwrap();
    let killed = Instant::now();
    ds[li].kill9();

    let survivor = &ds[si];
    let took_over = wait_until(T, || {
        cluster(survivor)["leader"].as_str() == Some(survivor_name(si))
    });
    assert!(took_over, "no takeover: {}", cluster(survivor));
    println!(
        "{} leads {:.1} s after kill -9 of {leader} (rollout at step {at_kill})",
        survivor_name(si),
        killed.elapsed().as_secs_f64()
    );
    let mut steps = vec![at_kill];
    let done = wait_until(Duration::from_secs(40), || {
        let a = survivor.app("web");
        if let Some(s) = a["rollout"]["step"].as_u64() {
            if steps.last() != Some(&s) {
                steps.push(s);
            }
        }
        a["live"] == "green"
    });
    stop.store(true, Ordering::Release);
    traffic.join().unwrap();
    assert!(
        done,
        "the rollout did not finish: {}\n{}",
        survivor.app("web"),
        survivor.log()
    );
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "never back: {steps:?}"
    );
    println!("steps seen on the survivor: {steps:?}");
    let a = survivor.app("web");
    assert_eq!(a["switch_count"], 1, "{a}");
}

fn survivor_name(i: usize) -> &'static str {
    ["lb1", "lb2"][i]
}

#[test]
fn without_a_cluster_there_is_no_cluster_view_nor_series() {
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let d = Daemon::start(&[app(&b, &g, "")]);
    let (s, v) = d.api("GET", "/v1/cluster", None);
    assert_eq!((s, &v["code"]), (404, &json!("no_cluster")), "{v}");
    let (_, st) = d.api("GET", "/v1/status", None);
    assert!(st.get("cluster").is_none(), "{st}");
    // No series: an alert on bgproxy_cluster_connected == 0 stays quiet.
    assert!(!d.scrape().contains("bgproxy_cluster_connected{"));
}

#[test]
fn check_names_bad_cluster_keys_with_their_line() {
    let base = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n\n[[app]]\nname = \"web\"\n[app.blue]\nupstreams = [\"127.0.0.1:2\"]\n[app.green]\nupstreams = [\"127.0.0.1:3\"]\n";
    let good = format!("{base}\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/bgproxy/prod\"\nname = \"lb1\"\nack_timeout = \"1s\"\n");
    let (ok, err) = check_text(&good);
    assert!(ok, "{err}");
    for (bad, key, line) in [
        ("etcd = []", "cluster.etcd", 12),
        // https needs the CA of etcd's certificates.
        ("etcd = [\"https://127.0.0.1:2379\"]", "cluster.ca_file", 12),
        ("etcd = [\"127.0.0.1:2379\"]", "cluster.etcd", 12),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\nprefix = \"bgproxy\"",
            "cluster.prefix",
            13,
        ),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\nname = \"lb 1\"",
            "cluster.name",
            13,
        ),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\nack_timeout = \"0s\"",
            "cluster.ack_timeout",
            13,
        ),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\nleader = true",
            "leader",
            13,
        ),
    ] {
        let (ok, err) = check_text(&format!("{base}\n[cluster]\n{bad}\n"));
        assert!(!ok, "{bad}");
        assert!(err.contains(key), "{bad}: {err}");
        assert!(err.contains(&format!("F:{line}:")), "{bad}: {err}");
    }
}

/// The leader judges a rollout step by every instance's counters: with
/// traffic on the other instance only, its analysis still sees the
/// requests (alone it would find none and hold the step as inconclusive).
#[test]
fn the_leader_analyses_the_counters_of_every_instance() {
    let etcd = Etcd::start();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let apps = [app(
        &b,
        &g,
        "[app.rollout]\nsticky = \"none\"\n[app.analysis]\nmin_requests = 5\nmax_inconclusive = 100\nmax_latency_ratio = 1000.0\nmax_error_ratio = 0.5\n",
    )];
    let ds = instances(&["lb1", "lb2"], &etcd, &apps);
    for d in &ds {
        assert!(d.wait_health("web", "green", "up", T));
    }
    let mut leader = String::new();
    assert!(wait_until(T, || {
        leader = cluster(&ds[0])["leader"].as_str().unwrap_or("").to_string();
        !leader.is_empty()
    }));
    let other = if leader == "lb1" { &ds[1] } else { &ds[0] };
    let (s, v) = other.api(
        "POST",
        "/v1/apps/web/canary",
        Some(json!({"to": "green", "steps": [50, 100], "step_interval": "2s", "actor": "e2e"})),
    );
    assert_eq!(s, 200, "{v}");
    // Requests on the other instance only, bounded in count and time.
    let end = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    let mut analysis = Value::Null;
    while Instant::now() < end && sent < 2000 {
        let _ = other.get("any", "/");
        sent += 1;
        if sent % 20 == 0 {
            let a = other.app("web");
            if a["live"] == "green" || !a["rollout"]["last_analysis"].is_null() {
                analysis = a["rollout"]["last_analysis"].clone();
                if a["live"] == "green" {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let a = other.app("web");
    println!("leader {leader}; {sent} requests on the other instance; analysis seen: {analysis}");
    assert_eq!(
        a["live"], "green",
        "the step passed on the summed counters: {a}"
    );
    let (_, h) = other.api("GET", "/v1/apps/web/history", None);
    let entry = h["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(entry["kind"], "canary", "{h}");
    assert_eq!(entry["actor"], "bgproxy", "the leader moved it: {h}");
}

/// `https://` etcd with `--client-cert-auth`: a bgproxy with `ca_file`,
/// `cert_file` and `key_file` connects, takes a switch and routes by it; one
/// with only the CA (no client certificate) is refused by etcd, so it
/// stays disconnected and refuses changes with `no_quorum`.
#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let etcd = TlsEtcd::start();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let apps = [app(&b, &g, "")];
    let tls = |with_identity: bool| {
        let mut keys = format!(
            "[cluster]\netcd = [\"{}\"]\nprefix = \"/e2e\"\nname = \"{}\"\nca_file = \"{}\"\n",
            etcd.url(),
            if with_identity { "lb1" } else { "lb2" },
            etcd.file("ca.pem").display()
        );
        if with_identity {
            keys += &format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                etcd.file("client.pem").display(),
                etcd.file("client.key").display()
            );
        }
        Daemon::start_opts(
            &apps,
            Options {
                toml: keys,
                ..Options::default()
            },
        )
    };
    let d = tls(true);
    wait_connected(&d, 1);
    assert_eq!(connected_metric(&d), Some(1.0));
    assert!(d.wait_health("web", "green", "up", T));
    let (s, v) = d.switch("web", "green");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied_by"], json!(["lb1"]), "{v}");
    assert_eq!(d.color_of("any"), "green");

    let refused = tls(false);
    std::thread::sleep(Duration::from_secs(3));
    let c = cluster(&refused);
    assert_eq!(c["connected"], false, "{c}");
    assert_eq!(connected_metric(&refused), Some(0.0));
    let (s, v) = refused.switch("web", "blue");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["code"], "no_quorum", "{v}");
    // Routing by its local copy (it never had the shared state): blue.
    assert_eq!(refused.color_of("any"), "blue");
    // The one with its certificate is still connected and green.
    assert_eq!(cluster(&d)["connected"], true);
    assert_eq!(d.color_of("any"), "green");
}

/// `GET /v1/traffic` on any instance shows the site's traffic: requests
/// sent through one instance only show on the other, counted once, and
/// `instances` says how many instances the numbers sum.
#[test]
fn the_traffic_of_every_instance_shows_on_each() {
    let etcd = Etcd::start();
    let (b, g) = (Backend::start("blue"), Backend::start("green"));
    let ds = instances(&["lb1", "lb2"], &etcd, &[app(&b, &g, "")]);
    for _ in 0..40 {
        assert_eq!(ds[1].get("any", "/").0, 200);
    }
    let blue = |d: &Daemon| {
        let (s, v) = d.api("GET", "/v1/traffic", None);
        assert_eq!(s, 200, "{v}");
        (
            v["instances"].as_u64(),
            v["apps"][0]["blue"]["requests"].as_u64(),
        )
    };
    assert!(
        wait_until(T, || blue(&ds[0]) == (Some(2), Some(40))),
        "lb1 shows lb2's 40 requests: {:?}",
        blue(&ds[0])
    );
    assert!(
        wait_until(T, || blue(&ds[1]) == (Some(2), Some(40))),
        "lb2 counts its own once: {:?}",
        blue(&ds[1])
    );
}
