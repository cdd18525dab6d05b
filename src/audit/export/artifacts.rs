//! Run artifacts built on worker threads, pipelined with the event lines: the export loop hands
//! each page's run rows (moved, not copied) to the workers and goes on reading and writing the
//! next page while the workers decode them and fold them into receipts and replay hashes. Runs are
//! sharded over the workers by id (a run's events all go to one worker, in order), so folding uses
//! the cores the export loop and the database leave free. The lines of the runs a page finished
//! come back from every shard and are merged into one block in the order a single worker would
//! have written them (by the row that finished each run; the runs still open at the end by id),
//! so the bundle's bytes do not depend on the number of workers. The block is written after the
//! next page's events (so after every event of those runs: a terminal run takes no further
//! events).

use std::hash::{BuildHasher, BuildHasherDefault};
use std::ops::Range;

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

/// Most folding workers, whatever the machine has: beyond this the export loop is the limit.
const MAX_WORKERS: usize = 4;

/// One run event for the workers.
pub(super) struct RunRow {
    pub(super) row: AuditRow,
    /// The payload, when the export loop parsed it.
    pub(super) payload: Option<Value>,
    /// The metadata as the export loop read it: parsed (without chain keys), or split as text.
    pub(super) metadata: RunMetadata,
    /// The run's first event, and the bundle holds none of its earlier ones: start its artifacts.
    pub(super) opens: bool,
}

/// An event's metadata as handed to the workers.
pub(super) enum RunMetadata {
    /// Parsed by the export loop, without its chain keys.
    Parsed(Value),
    /// Split as text by the export loop: where the members the artifacts read are in the row's
    /// stored metadata.
    Split(LookupSpans),
}

/// Where one run's lines go in the merged block: runs finished by a page's rows in the order of
/// those rows, then the runs still open at the end in id order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Order {
    Row(u64),
    Open(String),
}

enum Work {
    /// A page's rows for this shard, each with its ordinal in the export.
    Page(Vec<(u64, RunRow)>),
    /// Write the runs still open and stop.
    Finish,
}

/// Totals of the runs written.
#[derive(Default)]
pub(super) struct Done {
    pub(super) runs: u64,
    pub(super) runs_without_artifacts: u64,
}

/// What one shard made of one page (or of the runs still open at the end).
#[derive(Default)]
struct ShardDone {
    /// Receipt and replay lines, each ending in `\n`.
    lines: Vec<u8>,
    /// Each run's lines in `lines`, with its place in the merged block.
    chunks: Vec<(Order, Range<usize>)>,
    /// The page's row buffer, emptied, for the export loop to fill again.
    rows: Vec<(u64, RunRow)>,
    totals: Done,
}

/// One folding thread and its channels.
struct Shard {
    /// Pages to fold; dropping it ends the worker after its current page.
    work: mpsc::Sender<Work>,
    /// One [`ShardDone`] per page sent, in order; the worker's error ends it.
    done: mpsc::Receiver<anyhow::Result<ShardDone>>,
    /// Rows of the page being read, for this shard.
    filling: Vec<(u64, RunRow)>,
    /// Emptied row buffers handed back by the worker.
    spare: Vec<Vec<(u64, RunRow)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Shard {
    fn start(options: &ExportOptions) -> Self {
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
            filling: Vec::new(),
            spare: Vec::new(),
            task,
        }
    }

    async fn send(&mut self, work: Work) -> anyhow::Result<()> {
        self.work
            .send(work)
            .await
            .map_err(|_| anyhow::anyhow!("an artifact worker stopped"))
    }

    async fn recv(&mut self) -> anyhow::Result<ShardDone> {
        let mut done = self
            .done
            .recv()
            .await
            .context("an artifact worker stopped")??;
        self.spare.push(std::mem::take(&mut done.rows));
        Ok(done)
    }
}

/// The workers and the pages they are working on.
pub(super) struct ArtifactWorker {
    shards: Vec<Shard>,
    /// Which shard folds a run (fixed seed: the same run always goes to the same shard).
    route: BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
    /// Ordinal of the next run row pushed.
    next: u64,
    /// Pages sent whose lines have not been written.
    in_flight: usize,
    /// The merged block being built, reused.
    block: Vec<u8>,
}

impl ArtifactWorker {
    /// One worker per core the machine offers, at most [`MAX_WORKERS`].
    pub(super) fn start(options: &ExportOptions) -> Self {
        let workers = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_WORKERS);
        Self::with_workers(options, workers)
    }

    fn with_workers(options: &ExportOptions, workers: usize) -> Self {
        Self {
            shards: (0..workers.max(1)).map(|_| Shard::start(options)).collect(),
            route: BuildHasherDefault::default(),
            next: 0,
            in_flight: 0,
            block: Vec::new(),
        }
    }

    /// Adds a run row to the page being read.
    pub(super) fn push(&mut self, row: RunRow) {
        let shard = if self.shards.len() == 1 {
            0
        } else {
            (self.route.hash_one(row.row.aggregate_id.as_str()) % self.shards.len() as u64) as usize
        };
        let shard = &mut self.shards[shard];
        if shard.filling.capacity() == 0 {
            if let Some(spare) = shard.spare.pop() {
                shard.filling = spare;
            }
        }
        shard.filling.push((self.next, row));
        self.next += 1;
    }

    /// Hands the page's run rows to the workers.
    pub(super) async fn send(&mut self) -> anyhow::Result<()> {
        for shard in &mut self.shards {
            let rows = std::mem::take(&mut shard.filling);
            shard.send(Work::Page(rows)).await?;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Writes the lines of every page sent but the last `keep`.
    pub(super) async fn write_done<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut LineWriter<W>,
        keep: usize,
        into: &mut Done,
    ) -> anyhow::Result<()> {
        while self.in_flight > keep {
            self.write_next(w, into).await?;
        }
        Ok(())
    }

    /// Merges one page's lines from every shard and writes them.
    async fn write_next<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut LineWriter<W>,
        into: &mut Done,
    ) -> anyhow::Result<()> {
        let mut dones = Vec::with_capacity(self.shards.len());
        for shard in &mut self.shards {
            dones.push(shard.recv().await?);
        }
        self.in_flight -= 1;
        if let [only] = dones.as_slice() {
            // One shard's chunks are already in order.
            w.lines(&only.lines).await?;
        } else {
            let mut chunks: Vec<(&Order, &[u8])> = dones
                .iter()
                .flat_map(|d| d.chunks.iter().map(|(o, r)| (o, &d.lines[r.clone()])))
                .collect();
            chunks.sort_unstable_by(|a, b| a.0.cmp(b.0));
            self.block.clear();
            for (_, lines) in chunks {
                self.block.extend_from_slice(lines);
            }
            w.lines(&self.block).await?;
        }
        for done in dones {
            into.runs += done.totals.runs;
            into.runs_without_artifacts += done.totals.runs_without_artifacts;
        }
        Ok(())
    }

    /// Writes every page's lines, then those of the runs still open, and stops the workers.
    pub(super) async fn finish<W: AsyncWrite + Unpin>(
        mut self,
        w: &mut LineWriter<W>,
        into: &mut Done,
    ) -> anyhow::Result<()> {
        for shard in &mut self.shards {
            shard.send(Work::Finish).await?;
        }
        self.in_flight += 1;
        self.write_done(w, 0, into).await?;
        for shard in self.shards {
            shard.task.await.context("artifact worker")?;
        }
        Ok(())
    }
}

fn fold_page(
    open_runs: &mut FastMap<String, OpenRun>,
    mut rows: Vec<(u64, RunRow)>,
    options: &ExportOptions,
) -> anyhow::Result<ShardDone> {
    let mut done = ShardDone::default();
    for (
        ordinal,
        RunRow {
            row,
            payload,
            metadata,
            opens,
        },
    ) in rows.drain(..)
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
                let start = done.lines.len();
                write_artifacts(&mut done.lines, &row.aggregate_id, run, options)?;
                done.chunks
                    .push((Order::Row(ordinal), start..done.lines.len()));
                done.totals.runs += 1;
            }
            Err(e) => {
                tracing::warn!(error.message = %e, run_id = %row.aggregate_id, "no receipt or replay for this run in the bundle");
                open_runs.remove(&row.aggregate_id);
                done.totals.runs_without_artifacts += 1;
            }
        }
    }
    done.rows = rows;
    Ok(done)
}

fn finish(
    open_runs: FastMap<String, OpenRun>,
    options: &ExportOptions,
) -> anyhow::Result<ShardDone> {
    let mut done = ShardDone::default();
    let mut still_open: Vec<(String, OpenRun)> = open_runs.into_iter().collect();
    still_open.sort_by(|a, b| a.0.cmp(&b.0));
    for (run_id, run) in still_open {
        if run.artifacts.is_some() {
            let start = done.lines.len();
            write_artifacts(&mut done.lines, &run_id, run, options)?;
            done.chunks
                .push((Order::Open(run_id), start..done.lines.len()));
            done.totals.runs += 1;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use aggregates::ids::{FrameId, Owner, RunId, ThreadId, UserId};
    use aggregates::run::{frame_payload_hash, RunEvent, RunStatus, RUN_EVENT_VERSION};
    use aggregates::Timestamp;
    use cqrs_es::DomainEvent;
    use serde_json::{json, Map};

    use super::*;
    use crate::audit::bundle::Scope;
    use crate::audit::export::Cut;

    fn options() -> ExportOptions {
        ExportOptions {
            scope: Scope::All,
            signer: None,
            runtime_version: "test".into(),
            exported_at: Timestamp::EPOCH,
            progress: false,
            verify_stored: false,
            cut: Cut::IntegrityOnly,
            consistency_from: None,
        }
    }

    /// The events of run `n`: created, started, `frames` text frames, and finished if `finish`.
    fn run_events(n: usize, frames: usize, finish: bool) -> Vec<RunEvent> {
        let at = |i: usize| Timestamp::EPOCH.plus_millis((n * 1_000 + i * 10) as u64);
        let mut events = vec![
            RunEvent::RunCreated {
                run_id: RunId::parse(format!("run-{n}")).expect("id"),
                thread_id: ThreadId::parse(format!("thread-{n}")).expect("id"),
                owner: Owner::User(UserId::parse("u").expect("id")),
                metadata: Map::new(),
                org_id: None,
                created_at: at(0),
            },
            RunEvent::RunStarted {
                source: "runtime".into(),
                started_at: at(1),
            },
        ];
        for i in 0..frames {
            let payload = json!({"delta": format!("chunk {i} of run {n}")})
                .as_object()
                .cloned()
                .expect("object");
            events.push(RunEvent::FrameAppended {
                frame_id: FrameId::parse(format!("f{i}")).expect("id"),
                frame_type: "text_delta".into(),
                payload_hash: frame_payload_hash("text_delta", &payload),
                payload,
                occurred_at: None,
                appended_at: at(2 + i),
            });
        }
        if finish {
            events.push(RunEvent::RunFinished {
                status: RunStatus::Succeeded,
                reason_class: None,
                reason: None,
                error_code: None,
                finished_at: at(2 + frames),
            });
        }
        events
    }

    fn run_row(n: usize, sequence: usize, event: &RunEvent) -> RunRow {
        let recorded_at = Timestamp::EPOCH
            .plus_millis((n * 1_000 + sequence * 10) as u64)
            .to_rfc3339();
        RunRow {
            row: AuditRow {
                transaction_id: 1,
                position: 1,
                aggregate_type: "run".into(),
                aggregate_id: format!("run-{n}"),
                sequence: sequence as i64,
                event_type: event.event_type(),
                event_version: RUN_EVENT_VERSION.into(),
                payload: serde_json::to_string(event).expect("json"),
                metadata: String::new(),
            },
            payload: None,
            metadata: RunMetadata::Parsed(json!({ "recorded_at": recorded_at })),
            opens: sequence == 1,
        }
    }

    /// Nine runs of different lengths, interleaved round-robin and cut into pages of seven rows;
    /// runs 2 and 5 never finish.
    fn pages() -> Vec<Vec<(usize, usize, RunEvent)>> {
        let runs: Vec<Vec<RunEvent>> = (0..9)
            .map(|n| run_events(n, (n * 5) % 7, n != 2 && n != 5))
            .collect();
        let mut rows = Vec::new();
        let longest = runs.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for (n, events) in runs.iter().enumerate() {
                if let Some(event) = events.get(i) {
                    rows.push((n, i + 1, event.clone()));
                }
            }
        }
        rows.chunks(7).map(<[_]>::to_vec).collect()
    }

    async fn artifact_lines(workers: usize) -> (Vec<u8>, Done) {
        let options = options();
        let mut worker = ArtifactWorker::with_workers(&options, workers);
        let mut w = LineWriter::new(Vec::new());
        let mut done = Done::default();
        for page in pages() {
            for (n, sequence, event) in &page {
                worker.push(run_row(*n, *sequence, event));
            }
            worker.send().await.expect("send");
            worker
                .write_done(&mut w, 1, &mut done)
                .await
                .expect("lines");
        }
        worker.finish(&mut w, &mut done).await.expect("finish");
        w.flush().await.expect("flush");
        (w.out, done)
    }

    fn run_ids(lines: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(lines)
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
            .filter(|line| line["type"] == "receipt")
            .map(|line| line["run_id"].as_str().expect("run_id").to_owned())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sharded_workers_write_the_lines_a_single_worker_writes_in_the_same_order() {
        let (one, one_done) = artifact_lines(1).await;
        // Runs finish in the order of their last rows, then the open ones follow in id order.
        let mut finishing: Vec<(usize, String)> = Vec::new();
        for (index, (n, sequence, _)) in pages().into_iter().flatten().enumerate() {
            if n != 2 && n != 5 && sequence == run_events(n, (n * 5) % 7, true).len() {
                finishing.push((index, format!("run-{n}")));
            }
        }
        let mut expected: Vec<String> = finishing.into_iter().map(|(_, id)| id).collect();
        expected.extend(["run-2".to_owned(), "run-5".to_owned()]);
        assert_eq!(run_ids(&one), expected);
        assert_eq!(one_done.runs, 9);
        for workers in [2, 3, 4] {
            let (sharded, done) = artifact_lines(workers).await;
            assert_eq!(
                String::from_utf8_lossy(&sharded),
                String::from_utf8_lossy(&one),
                "{workers} workers"
            );
            assert_eq!(done.runs, 9);
            assert_eq!(done.runs_without_artifacts, 0);
        }
    }
}
