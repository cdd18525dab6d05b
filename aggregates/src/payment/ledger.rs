//! The SpendLedger aggregate: one per wallet, the single point where spend is reserved. Every
//! reservation is a command on this one stream, so the journal's optimistic concurrency serialises
//! them: two concurrent payments can never both fit under a cap that only has room for one.
//!
//! A reservation (the executor reserves the amount plus the routing-fee limit) counts against every
//! cap from the moment it is made until it is committed (the settled amount plus the fee actually
//! paid then counts, for as long as it sits inside the window) or released (the payment failed or
//! never left). A reservation whose outcome is unknown stays counted until reconciled.

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::policy::{Denial, DenialCode, SpendCaps};
use super::types::{Msat, PaymentHash};
use crate::ids::{Owner, RunId};
use crate::{RuntimeAggregate, Stamped, Timestamp};

/// Settled entries older than this are forgotten by the ledger (longest window the executor accepts).
pub const MAX_WINDOW_MS: u64 = 86_400_000;

pub const SPEND_LEDGER_EVENT_VERSION: &str = "1.0";

#[derive(Clone, Debug, PartialEq)]
pub enum SpendLedgerCommand {
    /// Reserve `amount_msats` for one payment attempt, if every cap allows it.
    ReserveSpend {
        payment_hash: PaymentHash,
        attempt: u32,
        amount_msats: Msat,
        host: String,
        run_id: Option<RunId>,
        owner: Option<Owner>,
        caps: SpendCaps,
    },
    /// The attempt settled: replace its reservation by the settled amount.
    CommitSpend {
        payment_hash: PaymentHash,
        attempt: u32,
        settled_msats: u64,
        fee_msats: u64,
        receipt_id: String,
        paid_at_ms: i64,
        run_id: Option<RunId>,
        owner: Option<Owner>,
        window_ms: u64,
    },
    /// The attempt failed or never left: drop its reservation.
    ReleaseSpend {
        payment_hash: PaymentHash,
        attempt: u32,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SpendLedgerEvent {
    SpendReserved {
        payment_hash: PaymentHash,
        attempt: u32,
        amount_msats: u64,
        run_id: Option<RunId>,
        owner: Option<Owner>,
        window_spend_before_msats: u64,
        reserved_at: Timestamp,
    },
    SpendCommitted {
        payment_hash: PaymentHash,
        attempt: u32,
        settled_msats: u64,
        fee_msats: u64,
        receipt_id: String,
        paid_at_ms: i64,
        run_id: Option<RunId>,
        owner: Option<Owner>,
        window_spend_after_msats: u64,
        committed_at: Timestamp,
    },
    SpendReleased {
        payment_hash: PaymentHash,
        attempt: u32,
        amount_msats: u64,
        reason: String,
        released_at: Timestamp,
    },
}

impl SpendLedgerEvent {
    pub fn at(&self) -> Timestamp {
        match self {
            SpendLedgerEvent::SpendReserved { reserved_at, .. } => *reserved_at,
            SpendLedgerEvent::SpendCommitted { committed_at, .. } => *committed_at,
            SpendLedgerEvent::SpendReleased { released_at, .. } => *released_at,
        }
    }
}

impl DomainEvent for SpendLedgerEvent {
    fn event_type(&self) -> String {
        match self {
            SpendLedgerEvent::SpendReserved { .. } => "spend.reserved",
            SpendLedgerEvent::SpendCommitted { .. } => "spend.committed",
            SpendLedgerEvent::SpendReleased { .. } => "spend.released",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        SPEND_LEDGER_EVENT_VERSION.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpendLedgerError {
    /// A cap does not leave room for the amount.
    #[error("{}", .0.message)]
    Denied(Denial),
}

/// An open reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub payment_hash: PaymentHash,
    pub attempt: u32,
    pub amount_msats: u64,
    pub run_id: Option<RunId>,
    pub owner: Option<Owner>,
    pub reserved_at: Timestamp,
}

/// A settled spend still inside the longest window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledSpend {
    pub payment_hash: PaymentHash,
    pub amount_msats: u64,
    pub owner: Option<Owner>,
    pub committed_at: Timestamp,
}

/// The ledger's state; also its summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpendLedger {
    /// Open reservations by `payment_hash:attempt`.
    pub reservations: BTreeMap<String, Reservation>,
    /// Settled spends of the last [`MAX_WINDOW_MS`].
    pub recent: Vec<SettledSpend>,
    /// Payment hashes ever committed (commits are idempotent).
    pub committed: BTreeSet<PaymentHash>,
    /// Lifetime spend (settled + reserved) per run.
    pub run_spend: BTreeMap<RunId, u64>,
    pub version: u64,
}

fn key(payment_hash: &PaymentHash, attempt: u32) -> String {
    format!("{payment_hash}:{attempt}")
}

fn inside(now: Timestamp, at: Timestamp, window_ms: u64) -> bool {
    now.millis_since(at) <= window_ms
}

impl SpendLedger {
    /// Settled (inside the window) plus reserved spend, optionally for one owner only.
    pub fn window_spend(&self, now: Timestamp, window_ms: u64, owner: Option<&Owner>) -> u64 {
        let settled: u64 = self
            .recent
            .iter()
            .filter(|s| inside(now, s.committed_at, window_ms))
            .filter(|s| owner.is_none() || s.owner.as_ref() == owner)
            .map(|s| s.amount_msats)
            .sum();
        let reserved: u64 = self
            .reservations
            .values()
            .filter(|r| owner.is_none() || r.owner.as_ref() == owner)
            .map(|r| r.amount_msats)
            .sum();
        settled.saturating_add(reserved)
    }

    /// Settled spend inside the window, without open reservations.
    pub fn settled_window_spend(&self, now: Timestamp, window_ms: u64) -> u64 {
        self.recent
            .iter()
            .filter(|s| inside(now, s.committed_at, window_ms))
            .map(|s| s.amount_msats)
            .sum()
    }

    /// Settled spends inside the window (the original's "recent payments").
    pub fn recent_count(&self, now: Timestamp, window_ms: u64) -> usize {
        self.recent
            .iter()
            .filter(|s| inside(now, s.committed_at, window_ms))
            .count()
    }

    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &self,
        at: Timestamp,
        payment_hash: PaymentHash,
        attempt: u32,
        amount: Msat,
        host: String,
        run_id: Option<RunId>,
        owner: Option<Owner>,
        caps: SpendCaps,
    ) -> Result<Option<SpendLedgerEvent>, SpendLedgerError> {
        if self.reservations.contains_key(&key(&payment_hash, attempt))
            || self.committed.contains(&payment_hash)
        {
            return Ok(None);
        }
        let amount = amount.get();
        let deny = |code: DenialCode, message: String, spend: u64, cap: u64| {
            SpendLedgerError::Denied(Denial {
                code,
                message,
                host: Some(host.clone()),
                max_allowed_msats: None,
                quoted_amount_msats: Some(amount),
                window_spend_msats: Some(spend),
                window_cap_msats: Some(cap),
            })
        };
        let window_spend = self.window_spend(at, caps.window_ms, None);
        if window_spend.saturating_add(amount) > caps.window_cap.get() {
            return Err(deny(
                DenialCode::WindowCapExceeded,
                format!(
                    "window cap exceeded: {} > {} msats",
                    window_spend.saturating_add(amount),
                    caps.window_cap.get()
                ),
                window_spend,
                caps.window_cap.get(),
            ));
        }
        if let (Some(cap), Some(run)) = (caps.run_cap, run_id.as_ref()) {
            let spent = self.run_spend.get(run).copied().unwrap_or(0);
            if spent.saturating_add(amount) > cap.get() {
                return Err(deny(
                    DenialCode::RunCapExceeded,
                    format!(
                        "run cap exceeded for {run}: {} > {} msats",
                        spent.saturating_add(amount),
                        cap.get()
                    ),
                    spent,
                    cap.get(),
                ));
            }
        }
        if let (Some(cap), Some(who)) = (caps.owner_window_cap, owner.as_ref()) {
            let spent = self.window_spend(at, caps.window_ms, Some(who));
            if spent.saturating_add(amount) > cap.get() {
                return Err(deny(
                    DenialCode::OwnerCapExceeded,
                    format!(
                        "owner cap exceeded for {who}: {} > {} msats",
                        spent.saturating_add(amount),
                        cap.get()
                    ),
                    spent,
                    cap.get(),
                ));
            }
        }
        Ok(Some(SpendLedgerEvent::SpendReserved {
            payment_hash,
            attempt,
            amount_msats: amount,
            run_id,
            owner,
            window_spend_before_msats: window_spend,
            reserved_at: at,
        }))
    }
}

impl Aggregate for SpendLedger {
    const TYPE: &'static str = "lightning_spend_ledger";
    type Command = Stamped<SpendLedgerCommand>;
    type Event = SpendLedgerEvent;
    type Error = SpendLedgerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let at = command.at;
        let event = match command.command {
            SpendLedgerCommand::ReserveSpend {
                payment_hash,
                attempt,
                amount_msats,
                host,
                run_id,
                owner,
                caps,
            } => self.reserve(
                at,
                payment_hash,
                attempt,
                amount_msats,
                host,
                run_id,
                owner,
                caps,
            )?,
            SpendLedgerCommand::CommitSpend {
                payment_hash,
                attempt,
                settled_msats,
                fee_msats,
                receipt_id,
                paid_at_ms,
                run_id,
                owner,
                window_ms,
            } => {
                if self.committed.contains(&payment_hash) {
                    None
                } else {
                    // Settled spend only (amounts and routing fees): other payments' open
                    // reservations are not spend.
                    let after = self
                        .settled_window_spend(at, window_ms)
                        .saturating_add(settled_msats)
                        .saturating_add(fee_msats);
                    Some(SpendLedgerEvent::SpendCommitted {
                        payment_hash,
                        attempt,
                        settled_msats,
                        fee_msats,
                        receipt_id,
                        paid_at_ms,
                        run_id,
                        owner,
                        window_spend_after_msats: after,
                        committed_at: at,
                    })
                }
            }
            SpendLedgerCommand::ReleaseSpend {
                payment_hash,
                attempt,
                reason,
            } => self
                .reservations
                .get(&key(&payment_hash, attempt))
                .map(|r| SpendLedgerEvent::SpendReleased {
                    payment_hash,
                    attempt,
                    amount_msats: r.amount_msats,
                    reason,
                    released_at: at,
                }),
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        let at = event.at();
        match event {
            SpendLedgerEvent::SpendReserved {
                payment_hash,
                attempt,
                amount_msats,
                run_id,
                owner,
                reserved_at,
                ..
            } => {
                if let Some(run) = &run_id {
                    *self.run_spend.entry(run.clone()).or_default() += amount_msats;
                }
                self.reservations.insert(
                    key(&payment_hash, attempt),
                    Reservation {
                        payment_hash,
                        attempt,
                        amount_msats,
                        run_id,
                        owner,
                        reserved_at,
                    },
                );
            }
            SpendLedgerEvent::SpendCommitted {
                payment_hash,
                attempt,
                settled_msats,
                fee_msats,
                run_id,
                owner,
                committed_at,
                ..
            } => {
                // Routing fees are spend: they count against every cap like the amount.
                let spent = settled_msats.saturating_add(fee_msats);
                let reserved = self.reservations.remove(&key(&payment_hash, attempt));
                if let Some(run) = &run_id {
                    let entry = self.run_spend.entry(run.clone()).or_default();
                    let reserved_for_run = reserved
                        .as_ref()
                        .filter(|r| r.run_id.as_ref() == Some(run))
                        .map(|r| r.amount_msats)
                        .unwrap_or(0);
                    *entry = entry.saturating_sub(reserved_for_run).saturating_add(spent);
                }
                self.committed.insert(payment_hash.clone());
                self.recent.push(SettledSpend {
                    payment_hash,
                    amount_msats: spent,
                    owner,
                    committed_at,
                });
            }
            SpendLedgerEvent::SpendReleased {
                payment_hash,
                attempt,
                ..
            } => {
                if let Some(r) = self.reservations.remove(&key(&payment_hash, attempt)) {
                    if let Some(run) = &r.run_id {
                        if let Some(total) = self.run_spend.get_mut(run) {
                            *total = total.saturating_sub(r.amount_msats);
                        }
                    }
                }
            }
        }
        self.recent
            .retain(|s| inside(at, s.committed_at, MAX_WINDOW_MS));
    }
}

impl RuntimeAggregate for SpendLedger {
    type Action = SpendLedgerCommand;
    type Summary = SpendLedger;

    fn summary(&self) -> SpendLedger {
        self.clone()
    }
}
