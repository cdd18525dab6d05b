//! Building a run's receipt and REPLAY.jsonl together while its stream goes past, serialising
//! each payload canonically once (for the trajectory hash and the replay's `payload_hash`).

use std::io::{self, Write};

use aggregates::canonical::{sha256_prefixed, write_canonical_map};
use aggregates::run::RunStatus;

use super::receipt::{Receipt, ReceiptBuilder, SettledPayment};
use super::record::{RunHeader, RunStreamEvent};
use super::replay::ReplayWriter;

/// A run's receipt and replay, built incrementally.
pub struct RunArtifactsBuilder<W: Write> {
    receipt: ReceiptBuilder,
    replay: ReplayWriter<W>,
    canonical: Vec<u8>,
}

impl<W: Write> RunArtifactsBuilder<W> {
    /// Starts both artifacts; the replay's header lines go to `out` now.
    ///
    /// # Errors
    /// Whatever `out` returns.
    pub fn start(header: &RunHeader, out: W) -> io::Result<Self> {
        Ok(Self {
            receipt: ReceiptBuilder::new(header.clone()),
            replay: ReplayWriter::start(header, out)?,
            canonical: Vec::with_capacity(256),
        })
    }

    /// Adds the next stream event to both.
    ///
    /// # Errors
    /// Whatever the replay's sink returns.
    pub fn push(&mut self, event: &RunStreamEvent) -> io::Result<()> {
        self.canonical.clear();
        write_canonical_map(&event.payload, &mut self.canonical)?;
        self.receipt.push_canonical(event, &self.canonical);
        self.replay
            .push_hashed(event, &sha256_prefixed(&self.canonical))
    }

    /// The unsigned receipt and the replay's sink (after its SessionEnd line).
    ///
    /// # Errors
    /// Whatever the replay's sink returns.
    pub fn finish(self, status: RunStatus, settled: &[SettledPayment]) -> io::Result<(Receipt, W)> {
        let out = self.replay.finish(status)?;
        Ok((self.receipt.finish(settled), out))
    }
}
