//! What does bgproxy's own per-request work cost, and what does a durable
//! switch cost?
//!
//! - `route/*`: the routing decision the data plane makes per request: one
//!   `ArcSwap` load of the snapshot, the Host lookup (exact, mixed case with
//!   a port), the color choice and the round-robin pick with health.
//! - `state/persist`: one durable state write (rewrite the recycled scratch
//!   file, fdatasync, link the previous copy, rename, fsync the directory):
//!   the floor of a switch's latency.
//!
//! Run: `cargo bench -p bgproxy-benches --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bgproxy::controlplane::state::{AppState, State, StateStore};
use bgproxy::dataplane::routing::Snapshot;
use bgproxy_control::api::{Color, HistoryEntry, SwitchKind};
use criterion::{criterion_group, criterion_main, Criterion};

fn route(c: &mut Criterion) {
    for apps in [1usize, 100] {
        let routing = Arc::new(ArcSwap::from_pointee(bgproxy_benches::snapshot(apps, 3)));
        let last = format!("h2.app{}.example.net", apps - 1);
        let mixed = format!("H2.App{}.Example.NET:8080", apps - 1);
        c.bench_function(&format!("route/{apps}_apps/exact_host"), |b| {
            b.iter(|| decide(&routing, black_box(last.as_bytes())))
        });
        c.bench_function(
            &format!("route/{apps}_apps/mixed_case_host_with_port"),
            |b| b.iter(|| decide(&routing, black_box(mixed.as_bytes()))),
        );
    }
}

/// The data plane's decision, as in `DataPlane::request_filter` and
/// `upstream_peer`: load, find the app, choose the color, pick.
fn decide(routing: &ArcSwap<Snapshot>, host: &[u8]) -> Option<std::net::SocketAddr> {
    let snapshot = routing.load_full();
    let app = snapshot.app_for_host(Some(host))?;
    let route = &snapshot.apps[app];
    let color = route.live;
    route.pool(color).pick(None).map(|p| p.upstream.addr)
}

fn state(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(&dir.path().join("state.json"));
    let mut state = State::default();
    let mut app = AppState::new(Color::Blue);
    for i in 0..200 {
        app.record(HistoryEntry {
            time: time::OffsetDateTime::now_utc(),
            from: if i % 2 == 0 {
                Color::Blue
            } else {
                Color::Green
            },
            to: if i % 2 == 0 {
                Color::Green
            } else {
                Color::Blue
            },
            kind: SwitchKind::Switch,
            reason: Some("release".into()),
            actor: "ops@lb1".into(),
            client: Some("127.0.0.1".into()),
        });
    }
    state.apps.insert("web".into(), app);
    c.bench_function("state/persist_200_history_entries", |b| {
        b.iter(|| store.persist(black_box(&state)).unwrap())
    });
}

criterion_group!(benches, route, state);
criterion_main!(benches);
