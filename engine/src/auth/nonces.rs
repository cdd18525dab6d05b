//! Single-use nonces: the shared table every process checks, and the in-process reservations
//! and tickets that let a command record its token's nonce in its own transaction.
//!
//! Two ways to use a nonce, both leaving at most one request with an effect per nonce:
//! - [`NonceStore::consume`] records it up front (one durable write of its own);
//! - [`NonceStore::reserve`] reserves it in this process (no database access); the request's
//!   command then carries the [`NonceTicket`] into its journal append, so the events and
//!   the nonce commit together, and [`NonceReservation::settle`] records the nonce afterwards only
//!   when no append did (a rejected, unchanged or idempotently replayed command). Across processes
//!   the table's key on the nonce decides: the second append carrying it fails and writes nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::AuthError;
use crate::db::Database;
use crate::journal::NewNonce;

/// Single-use nonces, persisted in `runtime.auth_nonces` (PostgreSQL) or `runtime_auth_nonces`
/// (SQLite) so every process on the database shares them. A nonce is kept until its token could
/// no longer pass the time check (`exp + skew`), then pruned.
pub struct NonceStore {
    database: Database,
    /// Unix seconds of the last prune; pruning runs at most once per [`PRUNE_EVERY_SECS`].
    last_prune: AtomicI64,
    /// Nonces of requests admitted by [`NonceStore::reserve`] and not yet settled. Bounded by
    /// the requests in flight (the server caps those).
    in_flight: Mutex<HashSet<String>>,
}

/// How often expired nonces are deleted (piggy-backed on `consume` and `reserve`).
pub const PRUNE_EVERY_SECS: i64 = 60;

impl NonceStore {
    pub fn new(database: Database) -> Self {
        Self {
            database,
            last_prune: AtomicI64::new(0),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// Records `nonce` as used until `expires_at_unix`.
    ///
    /// # Errors
    /// [`AuthError::Replayed`] if it was already recorded; [`AuthError::Store`] if the database
    /// failed (the nonce may or may not be recorded).
    pub async fn consume(
        &self,
        nonce: &str,
        expires_at_unix: i64,
        now_unix: i64,
    ) -> Result<(), AuthError> {
        let inserted = match &self.database {
            Database::Postgres(pool) => sqlx::query(
                "INSERT INTO runtime.auth_nonces (nonce, expires_at)
                 VALUES ($1, to_timestamp($2)) ON CONFLICT (nonce) DO NOTHING",
            )
            .bind(nonce)
            .bind(expires_at_unix as f64)
            .execute(pool)
            .await
            .map_err(AuthError::Store)?
            .rows_affected(),
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query(
                    "INSERT INTO runtime_auth_nonces (nonce, expires_at) VALUES ($1, $2)
                     ON CONFLICT (nonce) DO NOTHING",
                )
                .bind(nonce)
                .bind(expires_at_unix)
                .execute(pool)
                .await
                .map_err(AuthError::Store)?
                .rows_affected()
            }
        };
        if inserted == 0 {
            return Err(AuthError::Replayed);
        }
        self.maybe_prune(now_unix).await;
        Ok(())
    }

    /// Reserves `nonce` in this process for a request whose only effects are appends that carry
    /// it; see [`NonceReservation`]. Nothing is read: a nonce already recorded is caught by the
    /// table's key when such an append or [`NonceReservation::settle`] records it, and the
    /// request is then answered as a replay, having had no effect.
    ///
    /// # Errors
    /// [`AuthError::Replayed`] if a request of this process holds it right now.
    pub async fn reserve(
        self: &Arc<Self>,
        nonce: &str,
        expires_at_unix: i64,
        now_unix: i64,
    ) -> Result<NonceReservation, AuthError> {
        if !self
            .in_flight
            .lock()
            .expect("nonce set lock poisoned")
            .insert(nonce.to_owned())
        {
            return Err(AuthError::Replayed);
        }
        let reservation = NonceReservation {
            store: self.clone(),
            ticket: Arc::new(NonceTicket::new(NewNonce {
                nonce: nonce.to_owned(),
                expires_at_unix,
            })),
        };
        self.maybe_prune(now_unix).await;
        Ok(reservation)
    }

    /// Prunes expired nonces at most once per [`PRUNE_EVERY_SECS`] across callers.
    async fn maybe_prune(&self, now_unix: i64) {
        let last = self.last_prune.load(Ordering::Relaxed);
        if now_unix - last >= PRUNE_EVERY_SECS
            && self
                .last_prune
                .compare_exchange(last, now_unix, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Err(error) = self.prune(now_unix).await {
                tracing::warn!(error.message = %error, "pruning expired nonces failed");
            }
        }
    }

    /// Deletes nonces whose tokens can no longer pass verification. Returns how many.
    ///
    /// # Errors
    /// [`AuthError::Store`] when the database fails.
    pub async fn prune(&self, now_unix: i64) -> Result<u64, AuthError> {
        let deleted = match &self.database {
            Database::Postgres(pool) => {
                sqlx::query("DELETE FROM runtime.auth_nonces WHERE expires_at < to_timestamp($1)")
                    .bind(now_unix as f64)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
            Database::Sqlite { pool, write_lock } => {
                let _writer = write_lock.lock().await;
                sqlx::query("DELETE FROM runtime_auth_nonces WHERE expires_at < $1")
                    .bind(now_unix)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
        };
        deleted.map_err(AuthError::Store)
    }
}

/// Where a [`NonceTicket`]'s nonce stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketState {
    /// Not recorded by any append yet.
    Pending,
    /// Recorded by an append that committed.
    Recorded,
    /// Carried by an append whose outcome is unknown (the database failed mid-commit).
    Unknown,
}

/// A request's nonce on its way into the journal: the engine puts [`NonceTicket::pending`] into
/// the first append it makes for the request and marks the outcome.
#[derive(Debug)]
pub struct NonceTicket {
    nonce: NewNonce,
    state: AtomicU8,
}

impl NonceTicket {
    fn new(nonce: NewNonce) -> Self {
        Self {
            nonce,
            state: AtomicU8::new(TicketState::Pending as u8),
        }
    }

    /// The nonce to record, while no append has carried it.
    pub fn pending(&self) -> Option<&NewNonce> {
        (self.state() == TicketState::Pending).then_some(&self.nonce)
    }

    /// Records what the append that carried the nonce did.
    pub fn mark(&self, state: TicketState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn state(&self) -> TicketState {
        match self.state.load(Ordering::Acquire) {
            0 => TicketState::Pending,
            1 => TicketState::Recorded,
            _ => TicketState::Unknown,
        }
    }
}

/// An admitted request's hold on its nonce. Dropping it releases the in-process reservation;
/// settle it before answering.
#[derive(Debug)]
pub struct NonceReservation {
    store: Arc<NonceStore>,
    ticket: Arc<NonceTicket>,
}

impl NonceReservation {
    /// The ticket to hand to the request's command.
    pub fn ticket(&self) -> Arc<NonceTicket> {
        self.ticket.clone()
    }

    /// Makes sure the nonce is recorded before the request is answered: nothing to do when the
    /// request's append recorded it; otherwise it is recorded now (one durable write, as
    /// [`NonceStore::consume`]).
    ///
    /// # Errors
    /// [`AuthError::Replayed`] when the nonce was recorded before (by an earlier request, here or
    /// in another process) and no append of this request did: this request had no effect and
    /// must be answered as a replay.
    /// [`AuthError::Store`] when the table cannot be written (the request had no effect either).
    /// After an append of unknown outcome the nonce is recorded best-effort and `Ok` returned:
    /// the request's own answer (unavailable) stands.
    pub async fn settle(self, now_unix: i64) -> Result<(), AuthError> {
        let nonce = &self.ticket.nonce;
        match self.ticket.state() {
            TicketState::Recorded => Ok(()),
            TicketState::Pending => {
                self.store
                    .consume(&nonce.nonce, nonce.expires_at_unix, now_unix)
                    .await
            }
            TicketState::Unknown => {
                match self
                    .store
                    .consume(&nonce.nonce, nonce.expires_at_unix, now_unix)
                    .await
                {
                    Ok(()) | Err(AuthError::Replayed) => {}
                    Err(error) => {
                        tracing::warn!(error.message = %error, "recording a nonce after an unknown append outcome failed");
                    }
                }
                Ok(())
            }
        }
    }
}

impl Drop for NonceReservation {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.store.in_flight.lock() {
            in_flight.remove(&self.ticket.nonce.nonce);
        }
    }
}

impl std::fmt::Debug for NonceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceStore").finish_non_exhaustive()
    }
}
