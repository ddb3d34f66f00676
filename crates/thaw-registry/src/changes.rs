//! What changed, told to every worker sharing the database.
//!
//! A change that alters what a worker serves (a version going live, an
//! alias moving, a function or namespace going) is announced inside the
//! transaction that makes it, with PostgreSQL's `NOTIFY`, so the
//! announcement goes out when, and only when, the change commits. Each
//! worker listens on a connection of its own ([`Registry::watch`]) and
//! reads again what it was told changed. After it (re)connects it is told
//! [`Change::Everything`], since it may have missed announcements while it
//! was not listening. On SQLite there is one worker and nothing to tell.

use crate::db::{params, Tx};
use crate::{FunctionId, Registry, RegistryError};
use postgres::fallible_iterator::FallibleIterator;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The channel changes are announced on.
const CHANNEL: &str = "thaw_changes";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A function's versions or aliases, or the function itself.
    Function(FunctionId),
    /// A namespace's limits, or the namespace itself.
    Namespace(String),
    /// Anything: read it all again.
    Everything,
}

impl Tx<'_> {
    /// Announces `change` when this transaction commits.
    pub(crate) fn announce(&mut self, change: &Change) -> Result<(), RegistryError> {
        if let Tx::Postgres(_) = self {
            let payload = serde_json::to_string(change).expect("a change serialises");
            self.execute("SELECT pg_notify(?1, ?2)", params![CHANNEL, payload])?;
        }
        Ok(())
    }
}

/// How long the listener waits for an announcement before it asks its
/// caller whether to go on.
const IDLE: Duration = Duration::from_secs(1);

impl Registry {
    /// Calls `on_change` with every change other workers (and this one)
    /// announce, from a thread of its own, until it returns `false`; it is
    /// also called with `None` each second without announcements, so that
    /// it can say when to stop. On SQLite there is nothing to watch and no
    /// thread is started.
    pub fn watch(
        &self,
        mut on_change: impl FnMut(Option<Change>) -> bool + Send + 'static,
    ) -> Option<std::thread::JoinHandle<()>> {
        let url = self.db.postgres_url()?.to_string();
        let thread = std::thread::Builder::new()
            .name("thaw-changes".into())
            .spawn(move || {
                loop {
                    let listening = crate::db::connect(&url).and_then(|mut c| {
                        c.batch_execute(&format!("LISTEN {CHANNEL}"))
                            .map(|_| c)
                            .map_err(RegistryError::from)
                    });
                    let mut client = match listening {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("cannot listen for changes: {e}; trying again");
                            if !on_change(None) {
                                return;
                            }
                            std::thread::sleep(IDLE);
                            continue;
                        }
                    };
                    // What changed before this connection listened (since
                    // the start's first read, or while it was lost) was
                    // not heard: read everything again.
                    if !on_change(Some(Change::Everything)) {
                        return;
                    }
                    loop {
                        let next = client.notifications().timeout_iter(IDLE).next();
                        let change = match next {
                            Ok(Some(n)) => match serde_json::from_str::<Change>(n.payload()) {
                                Ok(c) => Some(c),
                                Err(_) => Some(Change::Everything),
                            },
                            Ok(None) => None,
                            Err(e) => {
                                tracing::warn!("lost the change feed: {e}; reconnecting");
                                break;
                            }
                        };
                        if !on_change(change) {
                            return;
                        }
                    }
                }
            })
            .expect("a thread for the change feed");
        Some(thread)
    }
}
