//! Run artifacts built on a worker thread, pipelined with the event lines: the export loop hands
//! each page's run rows (moved, not copied) to the worker and goes on reading and writing the next
//! page while the worker decodes them and folds them into receipts and replay hashes. The lines of
//! the runs a page finished come back as one block, written after the next page's events (so after
//! every event of those runs: a terminal run takes no further events).

use anyhow::Context;
use engine::artifacts::record::MetadataLookup;
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use super::metadata::LookupSpans;
use super::options::ExportOptions;
use super::runs::{fold_run, run_event, write_artifacts, OpenRun};
use super::writer::LineWriter;
use super::FastMap;
use crate::audit::source::AuditRow;

/// One run event for the worker.
pub(super) struct RunRow {
    pub(super) row: AuditRow,
    /// The payload, when the export loop parsed it.
    pub(super) payload: Option<Value>,
    /// The metadata as the export loop read it: parsed (without chain keys), or split as text.
    pub(super) metadata: RunMetadata,
    /// The run's first event, and the bundle holds none of its earlier ones: start its artifacts.
    pub(super) opens: bool,
}

/// An event's metadata as handed to the worker.
pub(super) enum RunMetadata {
    /// Parsed by the export loop, without its chain keys.
    Parsed(Value),
    /// Split as text by the export loop: where the members the artifacts read are in the row's
    /// stored metadata.
    Split(LookupSpans),
}

enum Work {
    Page(Vec<RunRow>),
    /// Write the runs still open, in id order, and stop.
    Finish,
}

/// What the worker made of one page (or of the runs still open at the end).
#[derive(Default)]
pub(super) struct Done {
    /// Receipt and replay lines, each ending in `\n`.
    pub(super) lines: Vec<u8>,
    /// The page's row buffer, emptied, for the export loop to fill again.
    rows: Vec<RunRow>,
    pub(super) runs: u64,
    pub(super) runs_without_artifacts: u64,
}

/// The worker and the page it is working on.
pub(super) struct ArtifactWorker {
    /// Pages to fold; dropping it (with the worker handle) ends the worker after its current
    /// page.
    work: mpsc::Sender<Work>,
    /// One [`Done`] per page sent, in order; the worker's error ends it.
    done: mpsc::Receiver<anyhow::Result<Done>>,
    /// Pages sent whose [`Done`] has not been taken.
    in_flight: usize,
    /// Emptied row buffers handed back by the worker.
    spare: Vec<Vec<RunRow>>,
    task: tokio::task::JoinHandle<()>,
}

impl ArtifactWorker {
    pub(super) fn start(options: &ExportOptions) -> Self {
        let (work, mut work_rx) = mpsc::channel::<Work>(2);
        let (done_tx, done) = mpsc::channel(2);
        let options = options.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut open_runs: FastMap<String, OpenRun> = FastMap::default();
            while let Some(work) = work_rx.blocking_recv() {
                let (result, last) = match work {
                    Work::Page(rows) => (fold_page(&mut open_runs, rows, &options), false),
                    Work::Finish => (finish(std::mem::take(&mut open_runs), &options), true),
                };
                let failed = result.is_err();
                if done_tx.blocking_send(result).is_err() || failed || last {
                    return;
                }
            }
        });
        Self {
            work,
            done,
            in_flight: 0,
            spare: Vec::new(),
            task,
        }
    }

    /// An empty row buffer (one the worker handed back, when there is one).
    pub(super) fn spare_rows(&mut self) -> Vec<RunRow> {
        self.spare.pop().unwrap_or_default()
    }

    /// Hands a page's run rows to the worker.
    pub(super) async fn send(&mut self, rows: Vec<RunRow>) -> anyhow::Result<()> {
        self.work
            .send(Work::Page(rows))
            .await
            .map_err(|_| anyhow::anyhow!("the artifact worker stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Writes the lines of every page sent but the last (`keep` pages stay in flight).
    pub(super) async fn write_done<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut LineWriter<W>,
        keep: usize,
        into: &mut Done,
    ) -> anyhow::Result<()> {
        while self.in_flight > keep {
            let mut done = self
                .done
                .recv()
                .await
                .context("the artifact worker stopped")??;
            self.in_flight -= 1;
            self.spare.push(std::mem::take(&mut done.rows));
            w.lines(&done.lines).await?;
            into.runs += done.runs;
            into.runs_without_artifacts += done.runs_without_artifacts;
        }
        Ok(())
    }

    /// Writes every page's lines, then those of the runs still open, and stops the worker.
    pub(super) async fn finish<W: AsyncWrite + Unpin>(
        mut self,
        w: &mut LineWriter<W>,
        into: &mut Done,
    ) -> anyhow::Result<()> {
        self.work
            .send(Work::Finish)
            .await
            .map_err(|_| anyhow::anyhow!("the artifact worker stopped"))?;
        self.in_flight += 1;
        self.write_done(w, 0, into).await?;
        self.task.await.context("artifact worker")?;
        Ok(())
    }
}

fn fold_page(
    open_runs: &mut FastMap<String, OpenRun>,
    mut rows: Vec<RunRow>,
    options: &ExportOptions,
) -> anyhow::Result<Done> {
    let mut done = Done::default();
    for RunRow {
        row,
        payload,
        metadata,
        opens,
    } in rows.drain(..)
    {
        if opens {
            open_runs.insert(row.aggregate_id.clone(), OpenRun::default());
        }
        if !open_runs.contains_key(&row.aggregate_id) {
            continue;
        }
        let split;
        let lookup: &dyn MetadataLookup = match &metadata {
            RunMetadata::Parsed(m) => m,
            RunMetadata::Split(spans) => {
                split = spans.lookup(&row.metadata);
                &split
            }
        };
        let finished =
            run_event(&row, payload)?.and_then(|event| fold_run(open_runs, &row, event, lookup));
        match finished {
            Ok(false) => {}
            Ok(true) => {
                let run = open_runs.remove(&row.aggregate_id).expect("open");
                write_artifacts(&mut done.lines, &row.aggregate_id, run, options)?;
                done.runs += 1;
            }
            Err(e) => {
                tracing::warn!(error.message = %e, run_id = %row.aggregate_id, "no receipt or replay for this run in the bundle");
                open_runs.remove(&row.aggregate_id);
                done.runs_without_artifacts += 1;
            }
        }
    }
    done.rows = rows;
    Ok(done)
}

fn finish(open_runs: FastMap<String, OpenRun>, options: &ExportOptions) -> anyhow::Result<Done> {
    let mut done = Done::default();
    let mut still_open: Vec<(String, OpenRun)> = open_runs.into_iter().collect();
    still_open.sort_by(|a, b| a.0.cmp(&b.0));
    for (run_id, run) in still_open {
        if run.artifacts.is_some() {
            write_artifacts(&mut done.lines, &run_id, run, options)?;
            done.runs += 1;
        }
    }
    Ok(done)
}
