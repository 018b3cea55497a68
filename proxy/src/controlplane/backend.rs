//! Where the controller's commit writes the next state: a [`StateBackend`].
//!
//! ```text
//! commit -> backend.persist(next, decided on revision) -> publish -> ...
//!   FileBackend   the state file alone (one host; the default)
//!   Cluster       an etcd transaction conditioned on the revision the
//!                 change was decided on, then the local copy (several
//!                 hosts; `[cluster]`, see `super::cluster`)
//! ```
//!
//! The file backend is exactly the state file's durable write
//! ([`StateStore::persist`]): no copy, no task, no lock beyond the
//! controller's own.

use std::sync::Arc;

use async_trait::async_trait;

use super::state::{State, StateError, StateStore};

/// The revision a state was read at: etcd's `mod_revision` of the state key,
/// 0 for the local file (which has no revisions) or when none is known yet.
pub type Revision = i64;

/// Why the next state was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The write itself failed; nothing changed.
    #[error(transparent)]
    Persist(#[from] StateError),
    /// The shared state cannot be reached (no etcd quorum); nothing changed.
    #[error("{0}")]
    NoQuorum(String),
    /// The shared state moved since the change was decided (another
    /// instance changed it): nothing was written. Carries the state now in
    /// force and its revision, when they could be read in the same
    /// transaction.
    #[error("the shared state changed since the change was decided")]
    Conflict(Option<Box<(State, Revision)>>),
}

/// Makes a decided state the state in force, durably.
#[async_trait]
pub trait StateBackend: Send + Sync {
    /// Writes `next`, decided on the state read at revision `base`. When
    /// this returns `Ok(revision)`, `next` survives `kill -9` (and, for the
    /// file, power loss) and is the state at `revision`.
    async fn persist(&self, next: &State, base: Revision) -> Result<Revision, BackendError>;
}

/// The local state file, alone: today's single-host behaviour.
pub struct FileBackend {
    store: Arc<StateStore>,
}

impl FileBackend {
    /// Writes through `store`.
    pub fn new(store: Arc<StateStore>) -> Self {
        FileBackend { store }
    }
}

#[async_trait]
impl StateBackend for FileBackend {
    async fn persist(&self, next: &State, _base: Revision) -> Result<Revision, BackendError> {
        // Synchronous on purpose, as before the trait: the fsync'd write is
        // the commit, and the writer lock already serialises commits.
        self.store.persist(next)?;
        Ok(0)
    }
}
