//! The SQLite file's one writer: the in-process write lock every writer of the file holds, and
//! group commit for journal appends.
//!
//! SQLite commits one transaction at a time and, with `synchronous=FULL`, pays one fsync per
//! commit, so appends that each commit alone are bound by the disk's flush rate however many
//! clients send them. Appends are therefore queued to one committer task per file. It takes
//! whatever is queued (up to [`MAX_BATCH`] appends; it never waits for more), writes each append
//! inside a savepoint of one `BEGIN IMMEDIATE` transaction — an append that fails its checks
//! (a sequence conflict, a taken idempotency key or nonce) rolls back to its savepoint alone —,
//! commits once, and only then answers every append of the batch. Each append is acknowledged
//! only after the commit that made it durable; a failed commit answers every append of the batch
//! with an unknown outcome (`Unavailable`), as a failed commit always did. An append alone in
//! its batch whose write is a single statement runs it in autocommit instead (see
//! `commit_batch`): the same durability, two fewer round trips.

use std::sync::{Arc, Mutex as SyncMutex, Weak};

use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot, Mutex, MutexGuard, OwnedMutexGuard};

use super::{to_i64, to_u64, Appended, GlobalCursor, JournalError, NewIdempotencyRecord, NewNonce};

/// Most appends committed together.
pub const MAX_BATCH: usize = 256;
/// Appends queued for the committer before senders wait.
const QUEUE: usize = 4 * MAX_BATCH;

/// The writer of one SQLite file: the lock and the group-commit queue. Shared by every handle on
/// the file in this process (`Database::Sqlite`), so all of them queue behind one committer.
pub struct SqliteWriter {
    lock: Arc<Mutex<()>>,
    /// The committer's queue; (re)started on demand, e.g. after the runtime that ran it ended.
    queue: SyncMutex<Option<mpsc::Sender<Pending>>>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter").finish_non_exhaustive()
    }
}

impl Default for SqliteWriter {
    fn default() -> Self {
        Self {
            lock: Arc::new(Mutex::new(())),
            queue: SyncMutex::new(None),
        }
    }
}

/// One append, owned (rows already serialised) so it can wait in the queue.
#[derive(Debug)]
pub(crate) struct OwnedAppend {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub expected_sequence: u64,
    /// `(event_type, event_version, payload JSON, metadata JSON)` in sequence order; not empty.
    pub events: Vec<(String, String, String, String)>,
    pub idempotency: Option<NewIdempotencyRecord>,
    pub nonce: Option<NewNonce>,
}

struct Pending {
    append: OwnedAppend,
    reply: oneshot::Sender<Result<Appended, JournalError>>,
}

impl SqliteWriter {
    /// Waits for the file's write lock; hold the guard for the length of one write transaction.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Like [`SqliteWriter::lock`], for a guard that outlives the borrow (a transaction object).
    pub async fn lock_owned(&self) -> OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }

    /// Queues `append` for the next group commit on `pool` and waits until it is durable (or
    /// refused).
    pub(crate) async fn append(
        self: &Arc<Self>,
        pool: &SqlitePool,
        append: OwnedAppend,
    ) -> Result<Appended, JournalError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue(pool);
        queue
            .send(Pending { append, reply })
            .await
            .map_err(|_| committer_gone())?;
        answer.await.map_err(|_| committer_gone())?
    }

    fn queue(self: &Arc<Self>, pool: &SqlitePool) -> mpsc::Sender<Pending> {
        let mut queue = self.queue.lock().expect("writer queue lock poisoned");
        match queue.as_ref() {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(commit_loop(pool.clone(), Arc::downgrade(self), receiver));
                *queue = Some(sender.clone());
                sender
            }
        }
    }
}

fn committer_gone() -> JournalError {
    JournalError::Database(sqlx::Error::WorkerCrashed)
}

/// An error every append of a failed batch gets: the outcome is unknown (`Unavailable`).
fn batch_failed(error: &sqlx::Error) -> JournalError {
    JournalError::Database(sqlx::Error::Io(std::io::Error::other(format!(
        "journal group commit failed: {error}"
    ))))
}

/// The committer: one batch at a time, each under the file's write lock. Ends when every handle
/// on the writer is gone (the queue closes).
async fn commit_loop(
    pool: SqlitePool,
    writer: Weak<SqliteWriter>,
    mut queue: mpsc::Receiver<Pending>,
) {
    while let Some(first) = queue.recv().await {
        let Some(writer) = writer.upgrade() else {
            let _ = first.reply.send(Err(committer_gone()));
            continue;
        };
        let guard = writer.lock.lock().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let appends: Vec<&OwnedAppend> = batch.iter().map(|p| &p.append).collect();
        let results = commit_batch(&pool, &appends).await;
        drop(guard);
        metrics::histogram!("runtime_journal_group_commit_size").record(batch.len() as f64);
        for (pending, result) in batch.into_iter().zip(results) {
            // A caller that stopped waiting learns nothing; its append's fate is in the journal.
            let _ = pending.reply.send(result);
        }
    }
}

/// Writes `appends` in one transaction, each in its own savepoint, and commits once. An append
/// alone in its batch whose whole write is one statement (one event, no idempotency record, no
/// nonce: most commands when they do not arrive together) is that statement in autocommit, one
/// round trip to the connection's thread instead of three (`BEGIN IMMEDIATE`, the insert,
/// `COMMIT`); the statement is its own transaction, committed (and, with `synchronous=FULL`,
/// fsynced) before it returns.
async fn commit_batch(
    pool: &SqlitePool,
    appends: &[&OwnedAppend],
) -> Vec<Result<Appended, JournalError>> {
    let all_failed =
        |error: &sqlx::Error| appends.iter().map(|_| Err(batch_failed(error))).collect();
    if let [only] = appends {
        if only.events.len() == 1 && only.idempotency.is_none() && only.nonce.is_none() {
            return match pool.acquire().await {
                Ok(mut conn) => vec![write(&mut conn, only).await],
                Err(error) => all_failed(&error),
            };
        }
    }
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(error) => return all_failed(&error),
    };
    let mut results = Vec::with_capacity(appends.len());
    if let [only] = appends {
        // No savepoint needed: a failure rolls the whole transaction back.
        let result = write(&mut tx, only).await;
        if result.is_err() {
            return vec![result];
        }
        results.push(result);
    } else {
        for append in appends {
            if let Err(error) = sqlx::query("SAVEPOINT append").execute(&mut *tx).await {
                return all_failed(&error);
            }
            let result = write(&mut tx, append).await;
            if result.is_err() {
                if let Err(error) = sqlx::query("ROLLBACK TO append").execute(&mut *tx).await {
                    return all_failed(&error);
                }
            }
            if let Err(error) = sqlx::query("RELEASE append").execute(&mut *tx).await {
                return all_failed(&error);
            }
            results.push(result);
        }
        if results.iter().all(Result::is_err) {
            return results;
        }
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(error) => results
            .into_iter()
            .map(|r| r.and_then(|_| Err(batch_failed(&error))))
            .collect(),
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        // 2067 SQLITE_CONSTRAINT_UNIQUE, 1555 SQLITE_CONSTRAINT_PRIMARYKEY
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("2067") | Some("1555")),
        _ => false,
    }
}

/// One append's statements inside the open transaction.
async fn write(
    conn: &mut SqliteConnection,
    append: &OwnedAppend,
) -> Result<Appended, JournalError> {
    let first = append.expected_sequence + 1;
    let last = append.expected_sequence + append.events.len() as u64;
    if let Some(idem) = &append.idempotency {
        let inserted = sqlx::query(
            "INSERT INTO runtime_idempotency_keys
                (scope, idempotency_key, request_hash, aggregate_type, aggregate_id,
                 first_sequence, last_sequence, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&idem.scope)
        .bind(&idem.key)
        .bind(&idem.request_hash)
        .bind(&append.aggregate_type)
        .bind(&append.aggregate_id)
        .bind(to_i64(first, "sequence out of range")?)
        .bind(to_i64(last, "sequence out of range")?)
        .bind(idem.created_at.to_rfc3339())
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(JournalError::IdempotencyKeyTaken),
            Err(e) => return Err(JournalError::Database(e)),
        }
    }
    if let Some(nonce) = &append.nonce {
        let inserted =
            sqlx::query("INSERT INTO runtime_auth_nonces (nonce, expires_at) VALUES ($1, $2)")
                .bind(&nonce.nonce)
                .bind(nonce.expires_at_unix)
                .execute(&mut *conn)
                .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(JournalError::NonceTaken),
            Err(e) => return Err(JournalError::Database(e)),
        }
    }
    let mut cursors = Vec::with_capacity(append.events.len());
    for (offset, (event_type, event_version, payload, metadata)) in append.events.iter().enumerate()
    {
        let sequence = first + offset as u64;
        let row = sqlx::query(
            "INSERT INTO events
                (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING position",
        )
        .bind(&append.aggregate_type)
        .bind(&append.aggregate_id)
        .bind(to_i64(sequence, "sequence out of range")?)
        .bind(event_type)
        .bind(event_version)
        .bind(payload)
        .bind(metadata)
        .fetch_one(&mut *conn)
        .await;
        match row {
            Ok(row) => {
                let position: i64 = row
                    .try_get(0)
                    .map_err(|e| JournalError::Corrupt(e.to_string()))?;
                cursors.push(GlobalCursor::new(0, to_u64(position, "position")?));
            }
            Err(e) if is_unique_violation(&e) => {
                return Err(JournalError::Conflict {
                    aggregate_type: append.aggregate_type.clone(),
                    aggregate_id: append.aggregate_id.clone(),
                    expected_sequence: append.expected_sequence,
                })
            }
            Err(e) => return Err(JournalError::Database(e)),
        }
    }
    Ok(Appended {
        last_sequence: last,
        cursors,
    })
}
