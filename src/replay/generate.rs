//! A generated fixture corpus: `runs` runs of realistic shapes, written as replay fixtures whose
//! `expected` this build produces (`replay --generate-runs N DIR`, `bench replay --generate-runs`).
//!
//! Generation is deterministic: the same seed and sizes give the same fixtures, byte for byte.
//! Runs are created, started, given a user message, text deltas, tool calls with their results
//! (some failing), usage, and end succeeded, failed or canceled (cancel requested first); a few
//! finishes are retried with their Idempotency-Key (a `replayed` outcome). Each fixture has
//! several workers, registered first and heartbeating as time passes, and its runs are spread
//! over them and interleaved (several in flight at once), as on a live journal.
//!
//! # Shape
//! The corpus is split into fixtures of [`RUNS_PER_FIXTURE`] runs (the last one may be smaller):
//! one fixture of 10,000 runs would be a 340 MB `expected` whose first divergence is one line
//! among millions, and 10,000 fixtures of one run would measure creating journals, not replaying
//! runs. A hundred runs per fixture keeps each file about 3.5 MB, interleaves enough runs and
//! workers to exercise the read models, and lets fixtures replay side by side.

use aggregates::Timestamp;
use serde_json::{json, Map, Value};

use super::fixture::{Action, Fixture, Step, FIXTURE_SCHEMA};

/// Runs per generated fixture.
pub const RUNS_PER_FIXTURE: usize = 100;
/// Runs in flight at once inside one fixture.
const IN_FLIGHT: usize = 6;

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorpusSpec {
    pub runs: usize,
    pub runs_per_fixture: usize,
    pub seed: u64,
}

impl CorpusSpec {
    pub fn new(runs: usize, seed: u64) -> Self {
        Self {
            runs,
            runs_per_fixture: RUNS_PER_FIXTURE,
            seed,
        }
    }
}

/// SplitMix64: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "reading",
    "the",
    "repository",
    "tests",
    "pass",
    "now",
    "fixing",
    "imports",
    "build",
    "checking",
    "the",
    "config",
    "done",
    "one",
    "more",
    "change",
    "looks",
    "good",
];
const TOOLS: &[&str] = &["shell", "read_file", "apply_patch", "http_get", "search"];

fn sentence(rng: &mut Rng, words: u64) -> String {
    (0..1 + rng.below(words))
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The corpus `spec` describes, without `expected` (`replay --bless` fills it in).
pub fn generate(spec: &CorpusSpec) -> Vec<Fixture> {
    let per = spec.runs_per_fixture.max(1);
    let mut fixtures = Vec::new();
    let mut first = 0;
    let mut index = 0;
    while first < spec.runs {
        let runs = per.min(spec.runs - first);
        fixtures.push(generate_fixture(spec.seed, index, first, runs));
        first += runs;
        index += 1;
    }
    fixtures
}

/// One run's steps, in order, without their clock values.
fn run_script(rng: &mut Rng, run: &str, worker: &str, owner: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut frame = 0;
    let push = |steps: &mut Vec<Step>, action: Action, key: Option<String>| {
        steps.push(Step {
            at: None,
            run: Some(run.to_owned()),
            worker: None,
            engine: None,
            actor: None,
            idempotency_key: key,
            request_id: None,
            action,
        });
    };
    let mut frame_step = |steps: &mut Vec<Step>, frame_type: &str, payload: Value| {
        frame += 1;
        push(
            steps,
            Action::AppendFrame {
                frame_id: format!("frm-{frame}"),
                frame_type: frame_type.to_owned(),
                payload: object(payload),
                occurred_at: None,
                expected_seq: None,
            },
            None,
        );
    };
    let mut metadata = Map::new();
    metadata.insert("worker_id".into(), Value::String(worker.to_owned()));
    metadata.insert(
        "policy_bundle_id".into(),
        Value::String("policy.generated.v1".into()),
    );
    push(
        &mut steps,
        Action::CreateRun {
            thread_id: format!("thread-{run}"),
            owner: owner.to_owned(),
            metadata,
        },
        None,
    );
    push(
        &mut steps,
        Action::StartRun {
            source: "runtime".into(),
        },
        None,
    );
    frame_step(
        &mut steps,
        "user_message",
        json!({"text": sentence(rng, 12)}),
    );
    let tool_calls = rng.below(3);
    for call in 0..tool_calls {
        frame_step(&mut steps, "text_delta", json!({"delta": sentence(rng, 6)}));
        let id = format!("call-{}", call + 1);
        let name = rng.pick(TOOLS);
        frame_step(
            &mut steps,
            "tool_call",
            json!({"tool_call_id": id, "name": name, "arguments": {"arg": sentence(rng, 3)}}),
        );
        let result = if rng.chance(15) {
            json!({"tool_call_id": id, "is_error": true,
                   "error": {"name": "timeout", "message": "no answer"},
                   "latency_ms": 100 + rng.below(2_000)})
        } else {
            json!({"tool_call_id": id, "output": sentence(rng, 10),
                   "latency_ms": 1 + rng.below(500)})
        };
        frame_step(&mut steps, "tool_result", result);
    }
    for _ in 0..1 + rng.below(3) {
        frame_step(&mut steps, "text_delta", json!({"delta": sentence(rng, 8)}));
    }
    frame_step(
        &mut steps,
        "usage",
        json!({"input_tokens": 100 + rng.below(4_000), "output_tokens": 10 + rng.below(800)}),
    );
    let finish_key = Some(format!("finish:{run}"));
    let roll = rng.below(100);
    let finish = if roll < 80 {
        Action::FinishRun {
            outcome: "succeeded".into(),
            reason_class: None,
            reason: None,
            error_code: None,
        }
    } else if roll < 90 {
        Action::FinishRun {
            outcome: "failed".into(),
            reason_class: Some("execution_failed".into()),
            reason: Some("the tool kept failing".into()),
            error_code: Some("tool_failed".into()),
        }
    } else {
        push(
            &mut steps,
            Action::RequestCancel {
                reason: "operator_request".into(),
                requested_by: "user".into(),
            },
            None,
        );
        Action::FinishRun {
            outcome: "canceled".into(),
            reason_class: None,
            reason: None,
            error_code: None,
        }
    };
    push(&mut steps, finish.clone(), finish_key.clone());
    if rng.chance(5) {
        // A client retrying its finish: replayed from the idempotency record.
        push(&mut steps, finish, finish_key);
    }
    steps
}

fn worker_step(worker: &str, action: Action) -> Step {
    Step {
        at: None,
        run: None,
        worker: Some(worker.to_owned()),
        engine: None,
        actor: None,
        idempotency_key: None,
        request_id: None,
        action,
    }
}

fn generate_fixture(seed: u64, index: usize, first_run: usize, runs: usize) -> Fixture {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    // Each fixture starts on its own day; steps are 50 ms to 1.5 s apart.
    let mut now = Timestamp::from_unix_seconds(1_769_904_000 + 86_400 * index as i64)
        .unwrap_or(Timestamp::EPOCH);
    let owner = format!("user:gen-{}", index % 7);
    let workers: Vec<String> = (0..2 + rng.below(3))
        .map(|w| format!("w-{index}-{w}"))
        .collect();
    let mut steps = Vec::new();
    let mut stamp = |mut step: Step, rng: &mut Rng, steps: &mut Vec<Step>| {
        now = now.plus_millis(50 + rng.below(1_450));
        step.at = Some(now);
        steps.push(step);
    };
    for worker in &workers {
        stamp(
            worker_step(
                worker,
                Action::RegisterWorker {
                    owner: owner.clone(),
                    adapter: "codex".into(),
                    workspace_ref: None,
                    codex_home_ref: None,
                    metadata: Map::new(),
                    lease_ttl_ms: 3_600_000,
                },
            ),
            &mut rng,
            &mut steps,
        );
    }
    let mut pending: Vec<Vec<Step>> = Vec::new();
    let mut next_run = 0;
    let mut since_heartbeat = 0;
    loop {
        while pending.len() < IN_FLIGHT && next_run < runs {
            let run = format!("run-{seed}-{:06}", first_run + next_run);
            let worker = &workers[next_run % workers.len()];
            let mut script = run_script(&mut rng, &run, worker, &owner);
            script.reverse();
            pending.push(script);
            next_run += 1;
        }
        if pending.is_empty() {
            break;
        }
        let slot = rng.below(pending.len() as u64) as usize;
        let step = pending[slot].pop().expect("scripts are not empty");
        if pending[slot].is_empty() {
            pending.swap_remove(slot);
        }
        stamp(step, &mut rng, &mut steps);
        since_heartbeat += 1;
        if since_heartbeat >= 40 {
            since_heartbeat = 0;
            let worker = workers[rng.below(workers.len() as u64) as usize].clone();
            stamp(
                worker_step(&worker, Action::Heartbeat { lease_ttl_ms: None }),
                &mut rng,
                &mut steps,
            );
        }
    }
    for worker in &workers {
        stamp(
            worker_step(
                worker,
                Action::RequestStop {
                    reason: "corpus done".into(),
                },
            ),
            &mut rng,
            &mut steps,
        );
    }
    Fixture {
        schema: FIXTURE_SCHEMA.to_owned(),
        name: format!("generated_{seed}_{index:05}"),
        description: format!(
            "Generated (seed {seed}): runs {first_run}..{} over {} workers, interleaved.",
            first_run + runs,
            workers.len()
        ),
        record_receipts: true,
        signing_key: None,
        steps,
        expected: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sized() {
        let spec = CorpusSpec {
            runs: 250,
            runs_per_fixture: 100,
            seed: 7,
        };
        let a = serde_json::to_string(&generate(&spec)).unwrap();
        let b = serde_json::to_string(&generate(&spec)).unwrap();
        assert_eq!(a, b);
        let fixtures = generate(&spec);
        assert_eq!(fixtures.len(), 3);
        let creates = fixtures
            .iter()
            .flat_map(|f| &f.steps)
            .filter(|s| matches!(s.action, Action::CreateRun { .. }))
            .count();
        assert_eq!(creates, 250);
        let other = serde_json::to_string(&generate(&CorpusSpec { seed: 8, ..spec })).unwrap();
        assert_ne!(a, other);
    }
}
