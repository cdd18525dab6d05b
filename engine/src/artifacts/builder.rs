//! Building a run's receipt and REPLAY.jsonl together while its stream goes past, rendering each
//! event's shared pieces once ([`RenderedEvent`]).

use std::io::{self, Write};

use aggregates::run::RunStatus;

use super::receipt::{Receipt, ReceiptBuilder, SettledPayment};
use super::record::{RunHeader, RunStreamEvent};
use super::rendered::RenderedEvent;
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
        let rendered = RenderedEvent::render(event, &mut self.canonical);
        self.receipt.push_rendered(&rendered);
        self.replay.push_rendered(&rendered)
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
