//! `[cluster]`: several LB hosts sharing one state through etcd v3.
//!
//! Keys under `cluster.prefix` (`P`):
//!
//! ```text
//! P/state            the state document (the JSON of the state file)
//! P/applied/<name>   the revision of P/state that <name> applied   (its lease)
//! P/leader           the name of the instance that runs automatic
//!                    actions                                       (its lease)
//! P/counts/<name>    <name>'s per-color counters, for the leader    (its lease)
//! ```
//!
//! Writing: [`Cluster`] is the controller's [`StateBackend`]. A commit is one
//! transaction `if mod_revision(P/state) == <the revision the change was
//! decided on> then put P/state else get P/state`: of two instances (or two
//! operators) deciding on the same state, one wins and the other is refused
//! as `plan_stale` and takes the winner's state. The local state file is
//! then written as the last applied copy.
//!
//! Following: [`ClusterService`] (a background service) keeps one session
//! at a time: connect, take a lease, read everything under `P` (the whole
//! state, the members, the leader), apply the state through
//! [`Controller::adopt`] (no rules: publish the routing, write the local
//! copy), then watch `P` from the next revision. Every state it applies,
//! its own changes included, it acknowledges in `P/applied/<name>`; the
//! answer to a change waits up to `ack_timeout` for them
//! ([`Cluster::acks`]). When the session breaks (etcd unreachable, lease
//! lost, watch compacted or cancelled) the instance is disconnected: it
//! routes by the last state it applied, refuses changes with `no_quorum`,
//! leads nothing, and starts a new session, which reads the whole state
//! again (so compaction never leaves it behind).
//!
//! Leader: a lease-bound `P/leader` created with `create_revision == 0`;
//! when it goes (lease expired, revoked) every connected instance tries
//! again. Only the leader runs automatic actions (the rollout driver).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bgproxy_control::api::{ClusterMember, ClusterResponse};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tracing::{debug, error, info, warn};

use super::backend::{BackendError, Revision, StateBackend};
use super::controller::Controller;
use super::state::{State, StateStore};
use crate::config::ClusterConfig;
use crate::metrics::{Counts, Metrics};

/// Seconds a lease lives without keep-alive: how long a dead instance stays
/// leader (and listed as a member).
pub const LEASE_TTL: i64 = 3;

/// How long one etcd request may take before the instance counts as cut off.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between two sessions.
const RETRY: Duration = Duration::from_millis(250);

/// How often the lease is kept alive (a third of its life).
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How often the counters are published to the leader.
pub const COUNTS_PERIOD: Duration = Duration::from_millis(200);

/// Every instance's counters: app -> `[blue, green]`.
pub type AppCounts = BTreeMap<String, [Counts; 2]>;

/// What the watch tells about the other instances.
#[derive(Clone, Debug, Default)]
struct View {
    /// Applied revision by instance (the live leases).
    members: BTreeMap<String, Revision>,
    leader: Option<String>,
    /// The counters other instances published.
    counts: BTreeMap<String, AppCounts>,
}

/// The shared side of the cluster: the controller's backend, and what the
/// API, the ack wait and the rollout driver read.
pub struct Cluster {
    config: ClusterConfig,
    store: Arc<StateStore>,
    metrics: Arc<Metrics>,
    client: Mutex<Option<Client>>,
    connected: AtomicBool,
    leading: AtomicBool,
    view: watch::Sender<View>,
}

impl Cluster {
    /// The cluster of `config`, writing its local copy through `store`.
    /// Disconnected until [`ClusterService`] connects it.
    pub fn new(config: ClusterConfig, store: Arc<StateStore>, metrics: Arc<Metrics>) -> Self {
        metrics
            .cluster_connected
            .with_label_values(&[&config.name])
            .set(0);
        metrics
            .cluster_leader
            .with_label_values(&[&config.name])
            .set(0);
        Cluster {
            config,
            store,
            metrics,
            client: Mutex::new(None),
            connected: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            view: watch::channel(View::default()).0,
        }
    }

    /// This instance's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this instance reaches etcd (and so takes changes).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether this instance is the elected one for automatic actions.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire) && self.connected()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.config.prefix)
    }

    fn state_key(&self) -> String {
        self.key("state")
    }

    fn client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        self.metrics
            .cluster_connected
            .with_label_values(&[&self.config.name])
            .set(up as i64);
        if !up {
            self.set_leading(false);
        }
    }

    fn set_leading(&self, leads: bool) {
        let was = self.leading.swap(leads, Ordering::AcqRel);
        self.metrics
            .cluster_leader
            .with_label_values(&[&self.config.name])
            .set(leads as i64);
        if was != leads {
            if leads {
                info!(name = %self.config.name, "cluster: this instance leads (automatic actions run here)");
            } else {
                info!(name = %self.config.name, "cluster: this instance no longer leads");
            }
        }
    }

    /// Waits up to `ack_timeout` until every instance known now (and this
    /// one) has applied `revision`; returns who did and who did not.
    pub async fn acks(&self, revision: Revision) -> (Vec<String>, Vec<String>) {
        let mut rx = self.view.subscribe();
        let expected: BTreeSet<String> = rx
            .borrow()
            .members
            .keys()
            .cloned()
            .chain([self.config.name.clone()])
            .collect();
        let deadline = Instant::now() + self.config.ack_timeout;
        loop {
            let done = {
                let v = rx.borrow_and_update();
                expected
                    .iter()
                    .all(|n| v.members.get(n).is_some_and(|r| *r >= revision))
            };
            if done {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let v = rx.borrow();
        expected
            .into_iter()
            .partition(|n| v.members.get(n).is_some_and(|r| *r >= revision))
    }

    /// `GET /v1/cluster`, with this instance's applied `revision`.
    pub fn response(&self, revision: Revision) -> ClusterResponse {
        let v = self.view.borrow();
        let mut members: BTreeMap<String, Revision> = v.members.clone();
        // This instance is a member even before its key is written.
        members.entry(self.config.name.clone()).or_insert(revision);
        ClusterResponse {
            name: self.config.name.clone(),
            prefix: self.config.prefix.clone(),
            etcd: self.config.etcd.clone(),
            connected: self.connected(),
            revision,
            leader: v.leader.clone(),
            members: members
                .into_iter()
                .map(|(name, applied_revision)| ClusterMember {
                    leader: v.leader.as_deref() == Some(name.as_str()),
                    name,
                    applied_revision,
                })
                .collect(),
        }
    }

    /// The counters every other instance published, by instance.
    pub fn others_counts(&self) -> BTreeMap<String, AppCounts> {
        self.view.borrow().counts.clone()
    }

    /// Why changes are refused while disconnected.
    pub fn unreachable(&self) -> String {
        format!(
            "etcd is not reachable from instance '{}' ({})",
            self.config.name,
            self.config.etcd.join(", ")
        )
    }

    fn no_quorum(&self) -> BackendError {
        BackendError::NoQuorum(self.unreachable())
    }
}

/// The state document of a key-value, or why not.
fn parse_state(kv: &KeyValue) -> Result<State, String> {
    serde_json::from_slice::<State>(kv.value()).map_err(|e| e.to_string())
}

#[async_trait]
impl StateBackend for Cluster {
    async fn persist(&self, next: &State, base: Revision) -> Result<Revision, BackendError> {
        let Some(mut client) = self.client().filter(|_| self.connected()) else {
            return Err(self.no_quorum());
        };
        let value = serde_json::to_vec(next).map_err(|e| {
            BackendError::Persist(super::state::StateError::Persist {
                path: self.store.path().to_path_buf(),
                source: std::io::Error::other(e),
            })
        })?;
        let key = self.state_key();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, base)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = match timeout(OP_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                return Err(BackendError::NoQuorum(format!(
                    "the etcd transaction failed ({e}); if it reached etcd after all, every instance applies it"
                )))
            }
            Err(_) => {
                return Err(BackendError::NoQuorum(format!(
                    "etcd did not answer within {}s; if the change reached etcd after all, every instance applies it",
                    OP_TIMEOUT.as_secs()
                )))
            }
        };
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            // etcd holds the change: the local copy is for starting without
            // etcd, a failure to write it is logged, not a refusal.
            if let Err(e) = self.store.persist(next) {
                self.metrics.state_write_failures.inc();
                error!("cannot write the local copy of the shared state: {e}");
            }
            return Ok(revision);
        }
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .and_then(|kv| parse_state(kv).ok().map(|s| (s, kv.mod_revision()))),
            _ => None,
        });
        Err(BackendError::Conflict(current.map(Box::new)))
    }
}

/// The background service that keeps this instance in the cluster.
pub struct ClusterService {
    pub cluster: Arc<Cluster>,
    pub controller: Arc<Controller>,
}

/// Why a session ended.
type SessionEnd = String;

fn err(what: &str) -> impl Fn(etcd_client::Error) -> SessionEnd + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs an etcd request with [`OP_TIMEOUT`].
async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, SessionEnd> {
    match timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(err(what)),
        Err(_) => Err(format!(
            "{what}: no answer within {}s",
            OP_TIMEOUT.as_secs()
        )),
    }
}

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let c = &self.cluster;
        let mut was_up = true; // so that the first failure is logged
        loop {
            let end = tokio::select! {
                end = self.session(&mut was_up) => match end {
                    Err(why) => why,
                    Ok(()) => "the session ended".to_string(),
                },
                _ = shutdown.changed() => {
                    self.leave().await;
                    return;
                }
            };
            let revision = self.controller.revision().await;
            if was_up {
                warn!(
                    name = %c.config.name, etcd = %c.config.etcd.join(", "),
                    "cluster: not connected to etcd ({end}): routing by the last applied state (revision {revision}), refusing changes until connected"
                );
            } else {
                debug!("cluster: still not connected to etcd: {end}");
            }
            was_up = false;
            c.set_connected(false);
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// TLS to etcd from the files of `[cluster]`, read at every connect (a
/// renewed certificate is taken up at the next one).
fn tls_options(tls: &crate::config::ClusterTls) -> Result<etcd_client::TlsOptions, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut options = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca_file)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

impl ClusterService {
    /// One session: connect, sync, watch, until something breaks.
    async fn session(&self, was_up: &mut bool) -> Result<(), SessionEnd> {
        let c = &self.cluster;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &c.config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let mut client = within(
            "connect",
            Client::connect(c.config.etcd.clone(), Some(options)),
        )
        .await?;
        let lease = within("lease", client.lease_grant(LEASE_TTL, None))
            .await?
            .id();
        let (mut keeper, mut keep_alives) = within("lease", client.lease_keep_alive(lease)).await?;

        // Everything under the prefix: the whole state, members, leader.
        let dir = c.key("");
        let all = within(
            "read",
            client.get(dir.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut next = all.header().map_or(0, |h| h.revision()) + 1;
        let mut view = View::default();
        let mut shared = None;
        for kv in all.kvs() {
            self.note(&mut view, kv, true, lease);
            if kv.key() == c.state_key().as_bytes() {
                match parse_state(kv) {
                    Ok(s) => shared = Some((s, kv.mod_revision())),
                    Err(e) => error!(
                        "cluster: the shared state in etcd ({}) is not valid: {e}; keeping the local one until a valid one is written",
                        c.state_key()
                    ),
                }
            }
        }
        let before = self.controller.revision().await;
        match shared {
            Some((state, revision)) => {
                self.controller.reload_shared(state, revision).await;
                if before > 0 && revision > before {
                    info!(
                        "cluster: reloaded the whole shared state from etcd at revision {revision} (had applied {before})"
                    );
                }
            }
            None => {
                // The first instance seeds the cluster with its local state.
                let (state, _) = self.controller.shared_state().await;
                let key = c.state_key();
                let value = serde_json::to_vec(&state).map_err(|e| e.to_string())?;
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), value, None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = within("seed", client.txn(txn)).await?;
                let revision = resp.header().map_or(0, |h| h.revision());
                if resp.succeeded() {
                    info!("cluster: no shared state in etcd yet: seeded it with this instance's state (revision {revision})");
                    self.controller.reload_shared(state, revision).await;
                } else {
                    // Another instance seeded it meanwhile: the watch from
                    // `next` brings its state.
                }
                next = next.max(1);
            }
        }

        *c.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        let mut watch = within(
            "watch",
            client.watch(
                dir.clone(),
                Some(WatchOptions::new().with_prefix().with_start_revision(next)),
            ),
        )
        .await?;
        let leader_present = view.leader.is_some();
        c.view.send_replace(view);
        c.set_connected(true);
        let revision = self.controller.revision().await;
        self.ack(&mut client, lease, revision).await?;
        if !leader_present {
            self.campaign(&mut client, lease).await?;
        }
        info!(
            name = %c.config.name, etcd = %c.config.etcd.join(", "),
            "cluster: connected to etcd; applied revision {revision}"
        );
        *was_up = true;

        let mut keep = tokio::time::interval(KEEP_ALIVE);
        let mut publish = tokio::time::interval(COUNTS_PERIOD);
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err("the watch ended".into()),
                        Err(e) => return Err(format!("watch: {e}")),
                    };
                    if resp.compact_revision() > 0 {
                        return Err(format!(
                            "etcd compacted the history past revision {}: the whole state is read again",
                            resp.compact_revision()
                        ));
                    }
                    if resp.canceled() {
                        return Err(format!("the watch was cancelled ({})", resp.cancel_reason()));
                    }
                    let mut applied = None;
                    let mut campaign = false;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let put = ev.event_type() == EventType::Put;
                        if kv.key() == c.state_key().as_bytes() && put {
                            match parse_state(kv) {
                                Ok(state) => {
                                    self.controller.adopt(state, kv.mod_revision()).await;
                                    applied = Some(kv.mod_revision());
                                }
                                Err(e) => error!(
                                    "cluster: ignored an invalid shared state at revision {}: {e}",
                                    kv.mod_revision()
                                ),
                            }
                        } else {
                            let mut gone_leader = false;
                            c.view.send_modify(|v| {
                                gone_leader = self.note(v, kv, put, lease);
                            });
                            campaign |= gone_leader;
                        }
                    }
                    if let Some(revision) = applied {
                        let revision = revision.max(self.controller.revision().await);
                        self.ack(&mut client, lease, revision).await?;
                    }
                    if campaign {
                        self.campaign(&mut client, lease).await?;
                    }
                }
                _ = keep.tick() => {
                    within("lease keep-alive", keeper.keep_alive()).await?;
                }
                ka = keep_alives.message() => match ka {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return Err("the lease expired".into()),
                    Ok(None) => return Err("the lease keep-alive stream ended".into()),
                    Err(e) => return Err(format!("lease keep-alive: {e}")),
                },
                _ = publish.tick() => {
                    self.publish_counts(&mut client, lease).await?;
                }
            }
        }
    }

    /// Takes one key of the prefix into `view`. Returns whether the leader
    /// key went away (time to campaign).
    fn note(&self, view: &mut View, kv: &KeyValue, put: bool, lease: i64) -> bool {
        let c = &self.cluster;
        let Ok(key) = std::str::from_utf8(kv.key()) else {
            return false;
        };
        let Some(rest) = key.strip_prefix(&c.key("")) else {
            return false;
        };
        if let Some(name) = rest.strip_prefix("applied/") {
            if put {
                let revision = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                view.members.insert(name.to_string(), revision);
            } else {
                view.members.remove(name);
                view.counts.remove(name);
            }
        } else if let Some(name) = rest.strip_prefix("counts/") {
            if name != c.config.name {
                if put {
                    match serde_json::from_slice::<AppCounts>(kv.value()) {
                        Ok(counts) => {
                            view.counts.insert(name.to_string(), counts);
                        }
                        Err(e) => debug!("cluster: ignored counters of {name}: {e}"),
                    }
                } else {
                    view.counts.remove(name);
                }
            }
        } else if rest == "leader" {
            if put {
                let name = String::from_utf8_lossy(kv.value()).into_owned();
                c.set_leading(name == c.config.name && kv.lease() == lease);
                view.leader = Some(name);
            } else {
                view.leader = None;
                c.set_leading(false);
                return true;
            }
        }
        false
    }

    /// Records that this instance applied `revision`.
    async fn ack(
        &self,
        client: &mut Client,
        lease: i64,
        revision: Revision,
    ) -> Result<(), SessionEnd> {
        let c = &self.cluster;
        let key = c.key(&format!("applied/{}", c.config.name));
        within(
            "ack",
            client.put(
                key,
                revision.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok(())
    }

    /// Tries to become leader: creates the leader key if there is none.
    async fn campaign(&self, client: &mut Client, lease: i64) -> Result<(), SessionEnd> {
        let c = &self.cluster;
        let key = c.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                c.config.name.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        // Whoever wins shows in the watch (a put of the leader key).
        within("campaign", client.txn(txn)).await?;
        Ok(())
    }

    /// Publishes this instance's per-color counters for the leader's
    /// analysis windows.
    async fn publish_counts(&self, client: &mut Client, lease: i64) -> Result<(), SessionEnd> {
        let c = &self.cluster;
        let counts = self.controller.local_counts();
        let value = serde_json::to_vec(&counts).map_err(|e| e.to_string())?;
        let key = c.key(&format!("counts/{}", c.config.name));
        within(
            "counters",
            client.put(key, value, Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        Ok(())
    }

    /// At shutdown: gives up the lease, so that the leader key and this
    /// instance's keys go at once (another instance takes over without
    /// waiting for the lease to expire).
    async fn leave(&self) {
        let c = &self.cluster;
        c.set_connected(false);
        let Some(mut client) = c.client() else { return };
        let key = c.key(&format!("applied/{}", c.config.name));
        if let Ok(Ok(resp)) = timeout(Duration::from_millis(500), client.get(key, None)).await {
            if let Some(kv) = resp.kvs().first() {
                let _ = timeout(Duration::from_millis(500), client.lease_revoke(kv.lease())).await;
            }
        }
    }
}

/// Adds `theirs` to `sum`: request classes, histogram buckets (the same
/// layout on every instance of one build) and observations.
pub fn add_counts(sum: &mut Counts, theirs: &Counts) {
    for (s, t) in sum.by_class.iter_mut().zip(&theirs.by_class) {
        *s += t;
    }
    if sum.buckets.len() == theirs.buckets.len() {
        for ((_, s), (_, t)) in sum.buckets.iter_mut().zip(&theirs.buckets) {
            *s += t;
        }
    }
    sum.count += theirs.count;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up() {
        let mut a = Counts {
            by_class: [0, 10, 0, 0, 1, 0],
            buckets: vec![(0.01, 5), (0.1, 11)],
            count: 11,
        };
        let b = Counts {
            by_class: [0, 4, 0, 0, 2, 1],
            buckets: vec![(0.01, 1), (0.1, 6)],
            count: 6,
        };
        add_counts(&mut a, &b);
        assert_eq!(a.by_class, [0, 14, 0, 0, 3, 1]);
        assert_eq!(a.buckets, vec![(0.01, 6), (0.1, 17)]);
        assert_eq!(a.count, 17);
    }
}
