//! The `audit-tree` task of `serve`: extends the tree and takes due checkpoints until shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AuditStore, StoreError};
use crate::audit_log::checkpoint::AuditKey;

/// Tunables of the tree maintainer.
#[derive(Clone, Debug)]
pub struct MaintainerConfig {
    /// Events per transaction.
    pub batch: usize,
    /// Take a checkpoint after this many new events…
    pub checkpoint_every_events: u64,
    /// …or this long after the latest one, if the tree grew.
    pub checkpoint_every: Duration,
    /// How often to look for new events without a local append notice (other processes).
    pub poll: Duration,
    /// After a batch that caught up, wait at least this long before the next one: under load the
    /// tree then commits a few large batches a second instead of one per append notice (each
    /// commit is a write-lock turn and an fsync on the embedded journal, taken from the appends).
    pub settle: Duration,
}

impl Default for MaintainerConfig {
    fn default() -> Self {
        Self {
            batch: 1_000,
            checkpoint_every_events: 10_000,
            checkpoint_every: Duration::from_secs(10),
            poll: Duration::from_millis(250),
            settle: Duration::from_millis(200),
        }
    }
}

/// Extends the tree and takes due checkpoints until `shutdown`: the `audit-tree` task of `serve`.
/// Wakes on `appended` (local commits) or every `poll`, at most once per `settle` after it caught
/// up; failures are logged and retried with a
/// backoff, never fatal (the write path does not depend on the tree).
///
/// # Errors
/// Never; returns `Ok` at shutdown.
pub async fn run_tree_maintainer(
    store: AuditStore,
    key: AuditKey,
    config: MaintainerConfig,
    mut appended: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let step = async {
            let added = store.extend(config.batch).await?;
            store
                .checkpoint_if_due(
                    &key,
                    config.checkpoint_every_events,
                    config.checkpoint_every,
                )
                .await?;
            Ok::<u64, StoreError>(added)
        };
        match step.await {
            Ok(added) => {
                backoff.reset();
                metrics::counter!("audit_tree_leaves_added_total").increment(added);
                if added as usize >= config.batch {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error.message = %e, error.cause_chain = ?e, "audit tree: extend failed; retrying");
                if !backoff.sleep(&shutdown).await {
                    return Ok(());
                }
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(config.settle) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = appended.changed() => {
                if changed.is_err() {
                    // No local notices any more (the engine is gone): poll.
                    tokio::time::sleep(config.poll).await;
                }
            }
            () = tokio::time::sleep(config.poll) => {}
        }
    }
}
