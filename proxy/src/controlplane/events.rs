//! The event hub behind `GET /v1/events` (Server-Sent Events) and the
//! status page.
//!
//! ```text
//! controller effects / health transitions / deploy steps
//!     -> Events::publish (never blocks: a short lock, a ring push, a
//!        tokio broadcast send)
//!     -> every subscriber's bounded buffer (the broadcast channel's ring of
//!        CLIENT_BUFFER events) -> its SSE connection task
//! ```
//!
//! One event per change, as JSON: `{"type", "app", "generation", ...}`
//! with `type` one of [`EventType`]. Each gets an id `<epoch>-<seq>`: the
//! process's start time in milliseconds and a sequence number, so a client
//! that reconnects with `Last-Event-ID` resumes from the [`KEEP`] most
//! recent events, and one that was away too long, or whose id is from
//! another process, is told to `resync` (reload everything) instead.
//!
//! A slow or vanished client never slows the publisher: the broadcast
//! channel keeps a fixed number of events per channel and a receiver that
//! falls behind loses its place ([`broadcast::error::RecvError::Lagged`]);
//! its connection is then closed and counted in
//! `bgproxy_events_dropped_clients_total`, as is one whose socket holds
//! more than [`QUEUE_LIMIT`] unsent bytes for [`WRITE_TIMEOUT`] (the
//! kernel would otherwise buffer megabytes for a client that stopped
//! reading). It reconnects and resumes from the ring.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for clients that reconnect with `Last-Event-ID`.
pub const KEEP: usize = 1024;

/// Events a client may fall behind before it is dropped.
pub const CLIENT_BUFFER: usize = 256;

/// How long a write to one client may wait for its socket before the
/// client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unsent bytes a client's socket may hold before an event is written to
/// it: above this, the write waits (up to [`WRITE_TIMEOUT`]) for the
/// client to read.
pub const QUEUE_LIMIT: u32 = 32 * 1024;

/// How often an idle stream gets a comment, so proxies and browsers keep
/// it open and a dead peer is noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What changed: the `type` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A color became live (switch, rollback, promote, last rollout step,
    /// automatic rollback).
    Switch,
    /// An upstream's observed health changed.
    Health,
    /// A rollout started, moved a step, paused, resumed, was aborted, or a
    /// share was set by weight.
    Rollout,
    /// An analysis window was judged.
    Analysis,
    /// A deploy started, moved to a step, or finished.
    Deploy,
    /// A pending request was made, approved or denied.
    Request,
    /// The configuration was reloaded.
    Reload,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Switch => "switch",
            EventType::Health => "health",
            EventType::Rollout => "rollout",
            EventType::Analysis => "analysis",
            EventType::Deploy => "deploy",
            EventType::Request => "request",
            EventType::Reload => "reload",
        }
    }
}

/// One published event, ready to send.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    /// `<epoch>-<seq>`, the SSE `id`.
    pub id: String,
    /// The JSON object, on one line.
    pub data: String,
}

impl Event {
    /// The event as an SSE frame.
    pub fn frame(&self) -> String {
        format!("id: {}\ndata: {}\n\n", self.id, self.data)
    }
}

/// Where a new subscriber starts.
#[derive(Debug)]
pub enum Resume {
    /// From now on (no `Last-Event-ID`).
    Live,
    /// These kept events first (those after its `Last-Event-ID`).
    From(Vec<Arc<Event>>),
    /// Its `Last-Event-ID` is no longer kept or not ours: reload
    /// everything; the reason says which.
    Resync(&'static str),
}

/// A subscriber: where it starts and its bounded buffer.
pub struct Subscription {
    pub resume: Resume,
    pub events: broadcast::Receiver<Arc<Event>>,
}

struct Ring {
    next: u64,
    kept: VecDeque<Arc<Event>>,
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Events {
    epoch: u64,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Event>>,
    dropped: IntCounter,
}

impl Events {
    /// A hub whose dropped clients are counted on `dropped`.
    pub fn new(dropped: IntCounter) -> Events {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Events {
            epoch,
            ring: Mutex::new(Ring {
                next: 1,
                kept: VecDeque::with_capacity(KEEP),
            }),
            tx: broadcast::channel(CLIENT_BUFFER).0,
            dropped,
        }
    }

    /// Publishes one event of `kind` about `app` (`None`: every app, e.g. a
    /// reload) at `generation`, with `details` (a JSON object; other
    /// values are ignored) after the common fields. Never blocks on a
    /// client.
    pub fn publish(&self, kind: EventType, app: Option<&str>, generation: u64, details: Value) {
        // The common fields first (for people reading the stream), then the
        // details in their own order; details cannot override them.
        const COMMON: [&str; 4] = ["type", "app", "generation", "seq"];
        let mut rest = String::new();
        if let Value::Object(details) = details {
            for (k, v) in details
                .iter()
                .filter(|(k, _)| !COMMON.contains(&k.as_str()))
            {
                rest.push(',');
                rest.push_str(&Value::from(k.as_str()).to_string());
                rest.push(':');
                rest.push_str(&v.to_string());
            }
        }
        let app = app.map_or(Value::Null, Value::from);
        // A poisoned lock only means a panic elsewhere mid-push: the ring
        // is still a valid deque.
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ring.next;
        ring.next += 1;
        let event = Arc::new(Event {
            seq,
            id: format!("{}-{seq}", self.epoch),
            data: format!(
                "{{\"type\":\"{}\",\"app\":{app},\"generation\":{generation},\"seq\":{seq}{rest}}}",
                kind.as_str()
            ),
        });
        if ring.kept.len() == KEEP {
            ring.kept.pop_front();
        }
        ring.kept.push_back(event.clone());
        // Sent under the lock, so every receiver sees events in seq order
        // and a subscriber (which subscribes under it) misses none. No
        // receiver is not an error.
        let _ = self.tx.send(event);
    }

    /// Subscribes a client that last saw `last_event_id` (the
    /// `Last-Event-ID` header, if any).
    pub fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let events = self.tx.subscribe();
        let resume = match last_event_id.map(str::trim).filter(|s| !s.is_empty()) {
            None => Resume::Live,
            Some(id) => resume_after(self.epoch, &ring, id),
        };
        Subscription { resume, events }
    }

    /// Counts a client dropped for falling behind or not reading.
    pub fn dropped_client(&self) {
        self.dropped.inc();
    }

    /// The id of the newest event, if any.
    pub fn last_id(&self) -> Option<String> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.kept.back().map(|e| e.id.clone())
    }
}

/// Where a client that last saw `id` resumes, given the kept events.
fn resume_after(epoch: u64, ring: &Ring, id: &str) -> Resume {
    let Some((e, s)) = id.split_once('-') else {
        return Resume::Resync("unreadable Last-Event-ID");
    };
    let (Ok(e), Ok(seq)) = (e.parse::<u64>(), s.parse::<u64>()) else {
        return Resume::Resync("unreadable Last-Event-ID");
    };
    if e != epoch {
        return Resume::Resync("bgproxy restarted since this event");
    }
    if seq >= ring.next {
        return Resume::Resync("Last-Event-ID is newer than any event");
    }
    let oldest = ring.kept.front().map_or(ring.next, |e| e.seq);
    // Events seq+1.. must all be kept.
    if seq + 1 < oldest {
        return Resume::Resync("events since Last-Event-ID are no longer kept");
    }
    Resume::From(ring.kept.iter().filter(|e| e.seq > seq).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hub() -> Events {
        Events::new(IntCounter::new("dropped", "test").unwrap())
    }

    fn seqs(resume: &Resume) -> Vec<u64> {
        match resume {
            Resume::From(v) => v.iter().map(|e| e.seq).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn event_json_has_the_common_fields_first_and_details() {
        let h = hub();
        let mut sub = h.subscribe(None);
        h.publish(
            EventType::Switch,
            Some("web"),
            7,
            json!({"to": "green", "type": "ignored"}),
        );
        let e = sub.events.try_recv().unwrap();
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["type"], "switch", "details cannot override the type");
        assert_eq!(v["app"], "web");
        assert_eq!(v["generation"], 7);
        assert_eq!(v["to"], "green");
        assert!(!e.data.contains('\n'), "one line per data field");
        assert!(
            e.data
                .starts_with(r#"{"type":"switch","app":"web","generation":7,"seq":1,"#),
            "{}",
            e.data
        );
        assert!(e.frame().starts_with(&format!("id: {}\ndata: {{", e.id)));
        assert!(e.frame().ends_with("}\n\n"));
    }

    #[test]
    fn resume_from_the_ring_or_resync() {
        let h = hub();
        for i in 0..5 {
            h.publish(EventType::Health, Some("a"), i, json!({}));
        }
        let id = |seq: u64| format!("{}-{seq}", h.epoch);
        assert!(matches!(h.subscribe(None).resume, Resume::Live));
        assert_eq!(seqs(&h.subscribe(Some(&id(2))).resume), vec![3, 4, 5]);
        assert_eq!(seqs(&h.subscribe(Some(&id(5))).resume), Vec::<u64>::new());
        assert_eq!(seqs(&h.subscribe(Some(&id(0))).resume), vec![1, 2, 3, 4, 5]);
        for bad in [
            id(6),
            format!("{}-1", h.epoch + 1),
            "x".into(),
            "1-x".into(),
        ] {
            assert!(
                matches!(h.subscribe(Some(&bad)).resume, Resume::Resync(_)),
                "{bad}"
            );
        }
        // Past the ring: too old.
        for i in 0..KEEP as u64 {
            h.publish(EventType::Health, Some("a"), i, json!({}));
        }
        assert!(matches!(
            h.subscribe(Some(&id(2))).resume,
            Resume::Resync(_)
        ));
        let from = seqs(&h.subscribe(Some(&id(5))).resume);
        assert_eq!(from.len(), KEEP);
        assert_eq!(from[0], 6);
    }

    #[test]
    fn a_client_that_does_not_read_never_blocks_publish_and_lags() {
        let h = hub();
        let mut stalled = h.subscribe(None);
        for i in 0..(CLIENT_BUFFER as u64 * 4) {
            h.publish(EventType::Health, Some("a"), i, json!({}));
        }
        assert!(matches!(
            stalled.events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
