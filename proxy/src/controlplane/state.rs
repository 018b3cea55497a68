//! The state store: which color is live per app, switch counts and history,
//! in one JSON file written atomically and durably.
//!
//! Write: serialise -> overwrite the scratch file `state.json.tmp` ->
//! `fdatasync` -> hard-link the current file as `state.json.prev`
//! (atomically replacing the older one) -> rename the scratch file over
//! `state.json` -> fsync the directory. At every instant `state.json` and
//! `state.json.prev` are complete files, old or new; after the directory
//! fsync the new one survives power loss.
//!
//! The three files are recycled: the `.prev` a write retires becomes the next
//! scratch file, instead of a new file each time. The content is padded with
//! trailing spaces (valid JSON whitespace) to whole 4 KiB blocks, so the
//! rewrite usually keeps the scratch file's size and blocks: its `fdatasync`
//! is then a data write and a cache flush, with no journal commit, and no
//! blocks are freed (or discarded) per write. A switch waits for one journal
//! commit (the renames) instead of two. Under a saturated CPU the disk alone
//! took p99 1.2-1.4 ms this way against 4-8 ms with a new file per write
//! (benches/README.md, "Fifth pass").
//!
//! Read at start ([`StateStore::load`]): a missing file is a first start; a
//! corrupt or unreadable one is moved aside as `state.json.corrupt-<time>`
//! (never deleted), and the previous good copy is used where there is one.
//! The front door comes up either way; the caller logs every [`Recovery`].
//!
//! Every file here is opened with `O_NOFOLLOW` ([`super::state_dir`]): a
//! symbolic link planted as `state.json` is moved aside like a corrupt file
//! (never read through), and one planted as the scratch file or the lock
//! fails the write or the start with an error that names it.

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bgproxy_control::api::{Color, DeployRecord, HistoryEntry, PendingRequest, RolloutStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::state_dir;

/// The version this build writes. Every version ever written must stay
/// loadable (see the compat test below).
pub const STATE_VERSION: u32 = 1;

/// How many history entries are kept per app.
pub const HISTORY_LIMIT: usize = 200;

/// The state file is padded to a multiple of this (see the module docs).
const BLOCK: usize = 4096;

/// How many decided (approved or denied) requests are kept, newest last.
pub const REQUEST_LIMIT: usize = 50;

/// How many deploy records are kept per app.
pub const DEPLOY_LIMIT: usize = 50;

/// The state file's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Increases with every change that moves routing or its
    /// configuration; never goes backwards (absent before it existed: 0).
    #[serde(default)]
    pub generation: u64,
    /// Per app name. Apps removed from the config keep their record.
    pub apps: BTreeMap<String, AppState>,
    /// Pending requests, and the latest decided ones (see [`REQUEST_LIMIT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<PendingRequest>,
    /// The number of the last request made: ids are never reused.
    #[serde(default)]
    pub request_seq: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            generation: 0,
            apps: BTreeMap::new(),
            requests: Vec::new(),
            request_seq: 0,
        }
    }
}

/// One app's persisted state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    pub live: Color,
    pub switch_count: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_switch: Option<OffsetDateTime>,
    /// Oldest first, at most [`HISTORY_LIMIT`].
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// Finished deploys, oldest first, at most [`DEPLOY_LIMIT`].
    #[serde(default)]
    pub deploys: Vec<DeployRecord>,
    /// The rollout in progress (a share of the standby), if any. Absent in
    /// files written before rollouts existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

impl AppState {
    pub fn new(live: Color) -> Self {
        AppState {
            live,
            switch_count: 0,
            last_switch: None,
            history: Vec::new(),
            deploys: Vec::new(),
            rollout: None,
        }
    }

    /// Records a finished deploy.
    pub fn record_deploy(&mut self, record: DeployRecord) {
        self.deploys.push(record);
        if self.deploys.len() > DEPLOY_LIMIT {
            let extra = self.deploys.len() - DEPLOY_LIMIT;
            self.deploys.drain(..extra);
        }
    }

    /// Records a change of the live color (a switch of any kind, and a
    /// rollout that reached 100%); it ends any rollout.
    pub fn record(&mut self, entry: HistoryEntry) {
        self.live = entry.to;
        self.switch_count += 1;
        self.last_switch = Some(entry.time);
        self.rollout = None;
        self.record_event(entry);
    }

    /// Records a history entry that is not a switch (an aborted rollout):
    /// the live color and the switch count stay.
    pub fn record_event(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        if self.history.len() > HISTORY_LIMIT {
            let extra = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..extra);
        }
    }
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to persist state to {path}: {source}")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state file {path} is in use by another bgproxy (pid {holder}): stop that one first, or start this one with --upgrade to take over from it")]
    Locked { path: PathBuf, holder: String },
}

/// The exclusive lock on a state file (`state.json.lock`, holding the pid):
/// while it is held, this process is the state's only writer. Dropping it
/// releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Something that went wrong while loading, and what was done about it.
#[derive(Debug)]
pub struct Recovery {
    pub problem: StateError,
    /// Where the bad file was moved, if it was.
    pub moved_to: Option<PathBuf>,
    /// Where the state was recovered from (`state.json.prev`), if anywhere.
    pub recovered_from: Option<PathBuf>,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.problem)?;
        match &self.moved_to {
            Some(p) => write!(f, "; moved it aside to {}", p.display())?,
            None => write!(f, "; could not move it aside")?,
        }
        match &self.recovered_from {
            Some(p) => write!(f, "; recovered from {}", p.display()),
            None => write!(f, "; starting from initial_live"),
        }
    }
}

/// The state file on disk.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    prev: PathBuf,
    /// The scratch file the next state is written to.
    tmp: PathBuf,
    /// Where the current `.prev` waits, during a write, to become `tmp`.
    spare: PathBuf,
    /// Where the current file is linked before it replaces `.prev`.
    prev_tmp: PathBuf,
    dir: PathBuf,
    /// The serialised state, kept between writes so that a write does not
    /// allocate and regrow a ~48 KB buffer each time.
    buf: std::sync::Mutex<Vec<u8>>,
}

impl StateStore {
    pub fn new(path: &Path) -> Self {
        let with = |suffix: &str| {
            let mut s = path.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        StateStore {
            path: path.to_path_buf(),
            prev: with(".prev"),
            tmp: with(".tmp"),
            spare: with(".spare"),
            prev_tmp: with(".prev.tmp"),
            dir,
            buf: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the exclusive lock of the state file, waiting up to `wait` for
    /// another process to release it.
    pub fn lock(&self, wait: Duration) -> Result<StateLock, StateError> {
        let path = {
            let mut s = self.path.as_os_str().to_owned();
            s.push(".lock");
            PathBuf::from(s)
        };
        let err = |source| StateError::Persist {
            path: path.clone(),
            source,
        };
        let mut file = state_dir::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| err(state_dir::explain(e, &path)))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    file.set_len(0).map_err(err)?;
                    writeln!(file, "{}", std::process::id()).map_err(err)?;
                    return Ok(StateLock { _file: file });
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    let holder = state_dir::read(&path)
                        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                        .unwrap_or_default();
                    return Err(StateError::Locked {
                        path: self.path.clone(),
                        holder: if holder.is_empty() {
                            "unknown".into()
                        } else {
                            holder
                        },
                    });
                }
                Err(TryLockError::Error(e)) => return Err(err(e)),
            }
        }
    }

    /// Loads the state, recovering from a bad file as described in the module
    /// docs. Never fails: problems are returned for the caller to log.
    pub fn load(&self) -> (State, Vec<Recovery>) {
        let mut recoveries = Vec::new();
        match read(&self.path) {
            Ok(Some(s)) => return (s, recoveries),
            Ok(None) => {}
            Err(problem) => {
                let moved_to = self.move_aside();
                recoveries.push(Recovery {
                    problem,
                    moved_to,
                    recovered_from: None,
                });
            }
        }
        // Missing or bad: the previous good copy, if any.
        match read(&self.prev) {
            Ok(Some(s)) => {
                if let Some(r) = recoveries.last_mut() {
                    r.recovered_from = Some(self.prev.clone());
                }
                (s, recoveries)
            }
            Ok(None) => (State::default(), recoveries),
            Err(problem) => {
                recoveries.push(Recovery {
                    problem,
                    moved_to: None,
                    recovered_from: None,
                });
                (State::default(), recoveries)
            }
        }
    }

    /// Renames the bad file to `state.json.corrupt-<UTC time>`, keeping it.
    fn move_aside(&self) -> Option<PathBuf> {
        let stamp = OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_else(|_| "unknown-time".into());
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".corrupt-{stamp}"));
        let to = PathBuf::from(name);
        fs::rename(&self.path, &to).ok().map(|_| to)
    }

    /// Writes `state` durably: when this returns `Ok`, the new state survives
    /// `kill -9` and power loss. An error before the rename leaves
    /// `state.json` untouched. The steps are in the module docs.
    pub fn persist(&self, state: &State) -> Result<(), StateError> {
        let err = |source| StateError::Persist {
            path: self.path.clone(),
            source,
        };
        let mut bytes = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        bytes.clear();
        serde_json::to_writer_pretty(&mut *bytes, state).map_err(|e| err(e.into()))?;
        bytes.push(b'\n');
        pad(&mut bytes);
        self.write_scratch(&bytes).map_err(err)?;
        // Names left by a write that stopped half-way.
        for leftover in [&self.spare, &self.prev_tmp] {
            match fs::remove_file(leftover) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
                _ => {}
            }
        }
        // The current file becomes .prev: linked under a temporary name and
        // renamed over .prev, so .prev is always whole too. The .prev it
        // replaces is kept alive as `spare`, the next scratch file.
        let current = link_if_exists(&self.path, &self.prev_tmp).map_err(err)?;
        let spare = current && link_if_exists(&self.prev, &self.spare).map_err(err)?;
        if current {
            fs::rename(&self.prev_tmp, &self.prev).map_err(err)?;
        }
        fs::rename(&self.tmp, &self.path).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        // Not needed for this write: if it fails, the next write makes a
        // new scratch file.
        if spare {
            let _ = fs::rename(&self.spare, &self.tmp);
        }
        Ok(())
    }

    /// [`persist`](Self::persist) at start-up: then again (the same state)
    /// until `.prev` and the scratch file exist, so that the first switches
    /// after a start on a fresh or recovered directory rewrite a recycled
    /// file too. At most three writes, on an empty directory; one when the
    /// three files are there.
    pub fn persist_at_start(&self, state: &State) -> Result<(), StateError> {
        for _ in 0..3 {
            self.persist(state)?;
            if self.prev.exists() && self.tmp.exists() {
                break;
            }
        }
        Ok(())
    }

    /// Overwrites the scratch file with `bytes` and syncs its data. A
    /// scratch file that shares its inode with another name (only possible
    /// if someone linked it) is replaced rather than written through.
    fn write_scratch(&self, bytes: &[u8]) -> std::io::Result<()> {
        let open = || {
            state_dir::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.tmp)
                .map_err(|e| state_dir::explain(e, &self.tmp))
        };
        let mut f = open()?;
        if f.metadata()?.nlink() > 1 {
            drop(f);
            fs::remove_file(&self.tmp)?;
            f = open()?;
        }
        f.write_all_at(bytes, 0)?;
        if f.metadata()?.len() != bytes.len() as u64 {
            f.set_len(bytes.len() as u64)?;
        }
        f.sync_data()
    }
}

/// Pads serialised state with spaces (before its final newline) to a whole
/// number of [`BLOCK`]s.
fn pad(bytes: &mut Vec<u8>) {
    let len = bytes.len().div_ceil(BLOCK) * BLOCK;
    bytes.pop();
    bytes.resize(len - 1, b' ');
    bytes.push(b'\n');
}

/// Hard-links `from` as `to`; `Ok(false)` when `from` does not exist.
fn link_if_exists(from: &Path, to: &Path) -> std::io::Result<bool> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `Ok(None)` when the file does not exist.
fn read(path: &Path) -> Result<Option<State>, StateError> {
    let bytes = match state_dir::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse(&bytes)
        .map(Some)
        .map_err(|reason| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
}

/// Parses any version of the state file this build knows.
pub fn parse(bytes: &[u8]) -> Result<State, String> {
    #[derive(Deserialize)]
    struct Versioned {
        version: Option<u32>,
    }
    let v: Versioned = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match v.version {
        Some(1) => serde_json::from_slice::<State>(bytes).map_err(|e| e.to_string()),
        Some(n) => Err(format!(
            "unsupported state version {n} (this bgproxy reads version {STATE_VERSION}); was it written by a newer bgproxy?"
        )),
        None => Err("missing \"version\" field".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgproxy_control::api::SwitchKind;

    fn entry(to: Color) -> HistoryEntry {
        HistoryEntry {
            time: OffsetDateTime::now_utc(),
            from: to.other(),
            to,
            kind: SwitchKind::Switch,
            reason: Some("test".into()),
            actor: "me@here".into(),
            client: None,
        }
    }

    #[test]
    fn persist_then_load_keeps_prev() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(&dir.path().join("state.json"));
        let (mut s, rec) = store.load();
        assert!(rec.is_empty());
        assert_eq!(s, State::default());
        s.apps.insert("web".into(), AppState::new(Color::Blue));
        store.persist(&s).unwrap();
        let first = s.clone();
        s.apps.get_mut("web").unwrap().record(entry(Color::Green));
        store.persist(&s).unwrap();
        assert_eq!(store.load().0, s);
        assert_eq!(
            read(&dir.path().join("state.json.prev")).unwrap().unwrap(),
            first
        );
    }

    /// A store in a fresh directory, and a state with one app.
    fn fixture() -> (tempfile::TempDir, StateStore, State) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(&dir.path().join("state.json"));
        let mut s = State::default();
        s.apps.insert("web".into(), AppState::new(Color::Blue));
        (dir, store, s)
    }

    fn inode(path: &Path) -> (u64, u64) {
        let m = fs::metadata(path).unwrap();
        (m.ino(), m.nlink())
    }

    /// From the third write on, the same three files take turns: the .prev a
    /// write retires is the next scratch file; nothing else is left behind.
    #[test]
    fn writes_recycle_three_files() {
        let (dir, store, mut s) = fixture();
        let [path, prev, tmp] =
            ["state.json", "state.json.prev", "state.json.tmp"].map(|n| dir.path().join(n));
        let mut before = s.clone();
        for i in 0..6 {
            let to = if i % 2 == 0 {
                Color::Green
            } else {
                Color::Blue
            };
            s.apps.get_mut("web").unwrap().record(entry(to));
            let retiring = prev.exists().then(|| inode(&prev).0);
            let was_current = path.exists().then(|| inode(&path).0);
            store.persist(&s).unwrap();
            assert_eq!(store.load().0, s);
            if i > 0 {
                assert_eq!(read(&prev).unwrap().unwrap(), before);
                assert_eq!(Some(inode(&prev).0), was_current);
            }
            if let Some(retired) = retiring {
                assert_eq!(inode(&tmp), (retired, 1), "write {i}");
                assert_eq!(inode(&path).1, 1);
                assert_eq!(inode(&prev).1, 1);
            }
            let len = fs::metadata(&path).unwrap().len();
            assert_eq!(len % BLOCK as u64, 0, "padded to whole blocks");
            before = s.clone();
        }
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["state.json", "state.json.prev", "state.json.tmp"]);
    }

    /// A first start, and a start that recovered from `.prev`, leave the
    /// three files in place, the recovered `.prev` kept.
    #[test]
    fn start_prepares_the_three_files() {
        let (dir, store, mut s) = fixture();
        let [path, prev, tmp] =
            ["state.json", "state.json.prev", "state.json.tmp"].map(|n| dir.path().join(n));
        store.persist_at_start(&s).unwrap();
        assert!(prev.exists() && tmp.exists());
        assert_eq!(read(&prev).unwrap().unwrap(), s);
        assert_eq!(inode(&tmp).1, 1);

        s.apps.get_mut("web").unwrap().record(entry(Color::Green));
        store.persist(&s).unwrap();
        fs::write(&path, "garbage").unwrap();
        fs::remove_file(&tmp).unwrap();
        let (recovered, problems) = store.load();
        assert_eq!(problems.len(), 1);
        store.persist_at_start(&recovered).unwrap();
        assert_eq!(store.load().0, recovered);
        assert_eq!(read(&prev).unwrap().unwrap(), recovered);
        assert!(tmp.exists());
    }

    /// Names left by a write that stopped half-way do not get in the way, and
    /// a scratch file linked to the live file is never written through.
    #[test]
    fn leftovers_of_an_interrupted_write() {
        let (dir, store, mut s) = fixture();
        let path = dir.path().join("state.json");
        store.persist(&s).unwrap();
        let old = s.clone();
        fs::hard_link(&path, dir.path().join("state.json.tmp")).unwrap();
        fs::write(dir.path().join("state.json.spare"), "x").unwrap();
        fs::write(dir.path().join("state.json.prev.tmp"), "y").unwrap();
        s.apps.get_mut("web").unwrap().record(entry(Color::Green));
        store.persist(&s).unwrap();
        assert_eq!(store.load().0, s);
        assert_eq!(
            read(&dir.path().join("state.json.prev")).unwrap().unwrap(),
            old
        );
        assert!(!dir.path().join("state.json.spare").exists());
        assert!(!dir.path().join("state.json.prev.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_prev_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = StateStore::new(&path);
        let mut s = State::default();
        s.apps.insert("web".into(), AppState::new(Color::Green));
        store.persist(&s).unwrap();
        store.persist(&s).unwrap();
        fs::write(&path, b"{\"version\": 1, \"apps\": {tru").unwrap();
        let (loaded, rec) = store.load();
        assert_eq!(loaded, s);
        assert_eq!(rec.len(), 1);
        let moved = rec[0].moved_to.clone().unwrap();
        assert_eq!(
            fs::read(&moved).unwrap(),
            b"{\"version\": 1, \"apps\": {tru"
        );
        assert!(rec[0].to_string().contains("recovered from"), "{}", rec[0]);
    }

    #[test]
    fn corrupt_without_prev_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"garbage").unwrap();
        let (loaded, rec) = StateStore::new(&path).load();
        assert_eq!(loaded, State::default());
        assert!(rec[0].to_string().contains("starting from initial_live"));
        assert!(!path.exists());
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(&dir.path().join("state.json"));
        let held = store.lock(Duration::ZERO).unwrap();
        let e = store.lock(Duration::from_millis(120)).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        store.lock(Duration::ZERO).unwrap();
    }

    /// A link planted in place of a file is never followed: as the state
    /// file it is moved aside and `.prev` used; as the scratch file or the
    /// lock it fails the write, naming the link; its target is untouched.
    #[test]
    fn symlinks_are_refused_not_followed() {
        let (dir, store, mut s) = fixture();
        let victim = dir.path().join("victim");
        let mut other = s.clone();
        other.apps.get_mut("web").unwrap().live = Color::Green;
        fs::write(&victim, serde_json::to_vec(&other).unwrap()).unwrap();
        store.persist(&s).unwrap();
        store.persist(&s).unwrap();
        let path = dir.path().join("state.json");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let (loaded, rec) = store.load();
        assert_eq!(loaded, s, "recovered from .prev, not read through the link");
        assert!(
            rec[0].to_string().contains("is a symbolic link"),
            "{}",
            rec[0]
        );

        let tmp = dir.path().join("state.json.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let before = fs::read(&victim).unwrap();
        s.apps.get_mut("web").unwrap().record(entry(Color::Green));
        let e = store.persist(&s).unwrap_err().to_string();
        assert!(e.contains("state.json.tmp is a symbolic link"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), before);

        let lock = dir.path().join("state.json.lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let e = store.lock(Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("state.json.lock is a symbolic link"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), before);
    }

    #[test]
    fn future_version_is_refused() {
        let e = parse(br#"{"version": 9, "apps": {}}"#).unwrap_err();
        assert!(e.contains("unsupported state version 9"), "{e}");
    }

    /// Every state version ever written must stay loadable.
    #[test]
    fn loads_version_1() {
        let v1 = br#"{
  "version": 1,
  "apps": {
    "attendant": {
      "live": "green",
      "switch_count": 6,
      "last_switch": "2025-10-25T12:30:00Z",
      "history": [
        {"time": "2025-10-25T12:30:00Z", "from": "blue", "to": "green", "kind": "switch",
         "reason": "release 42", "actor": "ops@lb1", "client": "127.0.0.1"},
        {"time": "2025-10-25T12:00:00Z", "from": "green", "to": "blue", "kind": "emergency",
         "actor": "unknown"}
      ]
    }
  }
}"#;
        let s = parse(v1).unwrap();
        let a = &s.apps["attendant"];
        assert_eq!(
            (a.live, a.switch_count, a.history.len()),
            (Color::Green, 6, 2)
        );
        assert_eq!(a.history[1].kind, SwitchKind::Emergency);
    }

    #[test]
    fn history_is_bounded() {
        let mut a = AppState::new(Color::Blue);
        for i in 0..(HISTORY_LIMIT + 10) {
            a.record(entry(if i % 2 == 0 {
                Color::Green
            } else {
                Color::Blue
            }));
        }
        assert_eq!(a.history.len(), HISTORY_LIMIT);
        assert_eq!(a.switch_count as usize, HISTORY_LIMIT + 10);
    }
}
