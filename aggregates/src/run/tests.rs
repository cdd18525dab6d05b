//! Given/when/then tests for every Run rule and rejection.

use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use serde_json::{json, Map, Value};

use super::*;
use crate::ids::UserId;

type Fixture = TestFramework<Run>;

fn at(second: u32) -> Timestamp {
    format!("2026-02-01T00:00:{second:02}Z").parse().unwrap()
}

fn obj(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn owner() -> Owner {
    Owner::User(UserId::parse("42").unwrap())
}

fn created() -> RunEvent {
    RunEvent::RunCreated {
        run_id: RunId::parse("run_1").unwrap(),
        thread_id: ThreadId::parse("thread_1").unwrap(),
        owner: owner(),
        org_id: None,
        metadata: Map::new(),
        created_at: at(0),
    }
}

fn started() -> RunEvent {
    RunEvent::RunStarted {
        source: "runtime".into(),
        started_at: at(1),
    }
}

fn cancel_requested() -> RunEvent {
    RunEvent::CancelRequested {
        reason: "user".into(),
        requested_by: "control_plane".into(),
        requested_at: at(3),
    }
}

fn finished(status: RunStatus) -> RunEvent {
    RunEvent::RunFinished {
        status,
        reason_class: None,
        reason: None,
        error_code: None,
        finished_at: at(4),
    }
}

fn frame_appended(frame_id: &str, text: &str, second: u32) -> RunEvent {
    let payload = obj(json!({ "text": text }));
    RunEvent::FrameAppended {
        frame_id: FrameId::parse(frame_id).unwrap(),
        frame_type: "user_message".into(),
        payload_hash: frame_payload_hash("user_message", &payload),
        payload,
        occurred_at: None,
        appended_at: at(second),
    }
}

fn cmd(second: u32, command: RunCommand) -> Stamped<RunCommand> {
    Stamped::new(at(second), command)
}

fn create() -> RunCommand {
    RunCommand::CreateRun {
        run_id: RunId::parse("run_1").unwrap(),
        thread_id: ThreadId::parse("thread_1").unwrap(),
        owner: owner(),
        org_id: None,
        metadata: Map::new(),
    }
}

fn start() -> RunCommand {
    RunCommand::StartRun {
        source: "runtime".into(),
    }
}

fn frame(frame_id: &str, text: &str) -> RunCommand {
    RunCommand::AppendFrame {
        frame_id: FrameId::parse(frame_id).unwrap(),
        frame_type: "user_message".into(),
        payload: obj(json!({ "text": text })),
        occurred_at: None,
        expected_seq: None,
    }
}

fn typed_frame(frame_type: &str, payload: Value) -> RunCommand {
    RunCommand::AppendFrame {
        frame_id: FrameId::parse("f").unwrap(),
        frame_type: frame_type.into(),
        payload: obj(payload),
        occurred_at: None,
        expected_seq: None,
    }
}

fn cancel() -> RunCommand {
    RunCommand::RequestCancel {
        reason: "user".into(),
        requested_by: "control_plane".into(),
    }
}

fn finish(outcome: Outcome) -> RunCommand {
    RunCommand::FinishRun {
        outcome,
        reason_class: None,
        reason: None,
        error_code: None,
    }
}

// --- creation -------------------------------------------------------------------------------

#[test]
fn creating_a_new_run_records_thread_and_owner() {
    Fixture::with(())
        .given_no_previous_events()
        .when(cmd(0, create()))
        .then_expect_events(vec![created()]);
}

#[test]
fn creating_the_same_run_again_is_a_no_op() {
    Fixture::with(())
        .given(vec![created()])
        .when(cmd(5, create()))
        .then_expect_events(vec![]);
}

#[test]
fn creating_an_existing_run_for_another_thread_or_owner_is_rejected() {
    let other_thread = RunCommand::CreateRun {
        run_id: RunId::parse("run_1").unwrap(),
        thread_id: ThreadId::parse("thread_2").unwrap(),
        owner: owner(),
        org_id: None,
        metadata: Map::new(),
    };
    Fixture::with(())
        .given(vec![created()])
        .when(cmd(5, other_thread))
        .then_expect_error(RunError::AlreadyExists);
    let other_owner = RunCommand::CreateRun {
        run_id: RunId::parse("run_1").unwrap(),
        thread_id: ThreadId::parse("thread_1").unwrap(),
        owner: Owner::Guest(crate::ids::GuestScope::parse("g").unwrap()),
        org_id: None,
        metadata: Map::new(),
    };
    Fixture::with(())
        .given(vec![created()])
        .when(cmd(5, other_owner))
        .then_expect_error(RunError::AlreadyExists);
}

#[test]
fn every_other_command_on_a_missing_run_is_not_found() {
    for command in [start(), frame("f", "hi"), cancel(), finish(Outcome::Failed)] {
        Fixture::with(())
            .given_no_previous_events()
            .when(cmd(1, command))
            .then_expect_error(RunError::NotFound);
    }
}

// --- start ----------------------------------------------------------------------------------

#[test]
fn starting_a_created_run_makes_it_running() {
    Fixture::with(())
        .given(vec![created()])
        .when(cmd(1, start()))
        .then_expect_events(vec![started()]);
}

#[test]
fn starting_a_running_run_is_a_no_op() {
    Fixture::with(())
        .given(vec![created(), started()])
        .when(cmd(2, start()))
        .then_expect_events(vec![]);
}

#[test]
fn starting_a_canceling_run_is_rejected() {
    Fixture::with(())
        .given(vec![created(), cancel_requested()])
        .when(cmd(4, start()))
        .then_expect_error(RunError::CancelRequested);
}

#[test]
fn starting_a_finished_run_is_rejected() {
    Fixture::with(())
        .given(vec![created(), started(), finished(RunStatus::Succeeded)])
        .when(cmd(5, start()))
        .then_expect_error(RunError::Terminal {
            status: RunStatus::Succeeded,
        });
}

// --- frames ---------------------------------------------------------------------------------

#[test]
fn frames_are_accepted_before_start_while_running_and_while_canceling() {
    for given in [
        vec![created()],
        vec![created(), started()],
        vec![created(), started(), cancel_requested()],
    ] {
        Fixture::with(())
            .given(given)
            .when(cmd(2, frame("f1", "hi")))
            .then_expect_events(vec![frame_appended("f1", "hi", 2)]);
    }
}

#[test]
fn resending_a_stored_frame_with_equal_content_is_a_no_op() {
    Fixture::with(())
        .given(vec![created(), started(), frame_appended("f1", "hi", 2)])
        .when(cmd(3, frame("f1", "hi")))
        .then_expect_events(vec![]);
}

#[test]
fn resending_a_stored_frame_with_other_content_is_a_conflict() {
    Fixture::with(())
        .given(vec![created(), started(), frame_appended("f1", "hi", 2)])
        .when(cmd(3, frame("f1", "bye")))
        .then_expect_error(RunError::FrameConflict {
            frame_id: FrameId::parse("f1").unwrap(),
        });
}

#[test]
fn a_late_retry_of_a_stored_frame_is_still_a_no_op_after_the_run_ended() {
    Fixture::with(())
        .given(vec![
            created(),
            started(),
            frame_appended("f1", "hi", 2),
            finished(RunStatus::Succeeded),
        ])
        .when(cmd(5, frame("f1", "hi")))
        .then_expect_events(vec![]);
}

#[test]
fn a_new_frame_never_reopens_a_terminal_run() {
    for status in [RunStatus::Succeeded, RunStatus::Failed] {
        Fixture::with(())
            .given(vec![created(), started(), finished(status)])
            .when(cmd(5, frame("late", "result")))
            .then_expect_error(RunError::Terminal { status });
    }
}

#[test]
fn an_expected_seq_must_be_the_next_seq() {
    let with_seq = |seq| RunCommand::AppendFrame {
        frame_id: FrameId::parse("f2").unwrap(),
        frame_type: "user_message".into(),
        payload: obj(json!({"text": "x"})),
        occurred_at: None,
        expected_seq: Some(seq),
    };
    // Seq 1 is run.started, seq 2 the first frame; the next is 3.
    let given = vec![created(), started(), frame_appended("f1", "hi", 2)];
    Fixture::with(())
        .given(given.clone())
        .when(cmd(3, with_seq(5)))
        .then_expect_error(RunError::SeqMismatch {
            expected: 5,
            next: 3,
        });
    let result = Fixture::with(())
        .given(given)
        .when(cmd(3, with_seq(3)))
        .inspect_result();
    assert_eq!(result.unwrap().len(), 1);
}

#[test]
fn malformed_frames_are_rejected_with_the_reason() {
    let cases = [
        ("", json!({})),
        ("has space", json!({})),
        ("user_message", json!({"text": 5})),
        ("text_delta", json!({})),
        ("tool_call", json!({"tool_call_id": "c1"})),
        ("tool_result", json!({"output": "x"})),
        ("usage", json!({"input_tokens": -1})),
        ("usage", json!({"input_tokens": [1]})),
        // The run's own event types: in the stream they would read as the run finishing, and
        // replay would re-execute them as lifecycle commands.
        ("run.finished", json!({"status": "succeeded"})),
        ("run.started", json!({})),
        ("run.anything_later", json!({})),
    ];
    for (frame_type, payload) in cases {
        let result = Fixture::with(())
            .given(vec![created(), started()])
            .when(cmd(2, typed_frame(frame_type, payload.clone())))
            .inspect_result();
        match result {
            Err(RunError::InvalidFrame(_)) => {}
            other => panic!("{frame_type} {payload}: expected InvalidFrame, got {other:?}"),
        }
    }
}

#[test]
fn well_formed_typed_frames_are_accepted() {
    let cases = [
        ("text_delta", json!({"delta": "Hel"})),
        (
            "tool_call",
            json!({"tool_call_id": "c1", "name": "search", "arguments": {}}),
        ),
        ("tool_result", json!({"tool_call_id": "c1", "output": "ok"})),
        (
            "usage",
            json!({"input_tokens": 31, "output_tokens": 24, "cost_sats": 0.5}),
        ),
        ("custom.kind/v2", json!({"anything": [1, 2]})),
    ];
    for (frame_type, payload) in cases {
        let events = Fixture::with(())
            .given(vec![created(), started()])
            .when(cmd(2, typed_frame(frame_type, payload)))
            .inspect_result()
            .unwrap();
        assert_eq!(events.len(), 1, "{frame_type}");
    }
}

// --- cancel ---------------------------------------------------------------------------------

#[test]
fn cancel_moves_a_created_or_running_run_to_canceling() {
    for given in [vec![created()], vec![created(), started()]] {
        Fixture::with(())
            .given(given)
            .when(cmd(3, cancel()))
            .then_expect_events(vec![cancel_requested()]);
    }
}

#[test]
fn repeated_cancel_and_cancel_after_the_end_are_no_ops() {
    Fixture::with(())
        .given(vec![created(), started(), cancel_requested()])
        .when(cmd(4, cancel()))
        .then_expect_events(vec![]);
    Fixture::with(())
        .given(vec![created(), started(), finished(RunStatus::Succeeded)])
        .when(cmd(5, cancel()))
        .then_expect_events(vec![]);
}

// --- finish ---------------------------------------------------------------------------------

#[test]
fn a_running_run_can_succeed_or_fail() {
    Fixture::with(())
        .given(vec![created(), started()])
        .when(cmd(4, finish(Outcome::Succeeded)))
        .then_expect_events(vec![finished(RunStatus::Succeeded)]);
    let events = Fixture::with(())
        .given(vec![created(), started()])
        .when(cmd(
            4,
            RunCommand::FinishRun {
                outcome: Outcome::Failed,
                reason_class: None,
                reason: Some("tool timed out".into()),
                error_code: Some("tool_timeout".into()),
            },
        ))
        .inspect_result()
        .unwrap();
    assert_eq!(
        events,
        vec![RunEvent::RunFinished {
            status: RunStatus::Failed,
            reason_class: None,
            reason: Some("tool timed out".into()),
            error_code: Some("tool_timeout".into()),
            finished_at: at(4),
        }]
    );
}

#[test]
fn a_run_that_never_started_cannot_succeed_but_can_fail() {
    Fixture::with(())
        .given(vec![created()])
        .when(cmd(4, finish(Outcome::Succeeded)))
        .then_expect_error(RunError::NotStarted);
    let events = Fixture::with(())
        .given(vec![created()])
        .when(cmd(4, finish(Outcome::Failed)))
        .inspect_result()
        .unwrap();
    assert_eq!(events.len(), 1);
}

#[test]
fn canceled_requires_a_cancel_request() {
    Fixture::with(())
        .given(vec![created(), started()])
        .when(cmd(4, finish(Outcome::Canceled)))
        .then_expect_error(RunError::CancelNotRequested);
    let events = Fixture::with(())
        .given(vec![created(), started(), cancel_requested()])
        .when(cmd(4, finish(Outcome::Canceled)))
        .inspect_result()
        .unwrap();
    assert!(matches!(
        &events[..],
        [e @ RunEvent::RunFinished { status: RunStatus::Canceled, .. }] if e.reason_class().as_deref() == Some("cancel_requested")
    ));
}

#[test]
fn a_canceling_run_may_fail_but_not_succeed() {
    Fixture::with(())
        .given(vec![created(), started(), cancel_requested()])
        .when(cmd(4, finish(Outcome::Succeeded)))
        .then_expect_error(RunError::CancelRequested);
    let events = Fixture::with(())
        .given(vec![created(), started(), cancel_requested()])
        .when(cmd(4, finish(Outcome::Failed)))
        .inspect_result()
        .unwrap();
    assert_eq!(events.len(), 1);
}

#[test]
fn finishing_again_with_the_same_outcome_is_a_no_op_and_with_another_is_rejected() {
    let given = vec![created(), started(), finished(RunStatus::Succeeded)];
    Fixture::with(())
        .given(given.clone())
        .when(cmd(6, finish(Outcome::Succeeded)))
        .then_expect_events(vec![]);
    Fixture::with(())
        .given(given)
        .when(cmd(6, finish(Outcome::Failed)))
        .then_expect_error(RunError::Terminal {
            status: RunStatus::Succeeded,
        });
}

// --- state, seq and storage format ----------------------------------------------------------

#[test]
fn run_seq_counts_every_event_after_creation_without_gaps() {
    let mut run = Run::default();
    for event in [
        created(),
        started(),
        frame_appended("a", "1", 2),
        frame_appended("b", "2", 3),
        cancel_requested(),
        finished(RunStatus::Canceled),
    ] {
        run.apply(event);
    }
    let summary = run.summary();
    assert_eq!(summary.latest_seq, 5);
    assert_eq!(summary.status, Some(RunStatus::Canceled));
    assert_eq!(summary.updated_at, at(4));
    assert_eq!(run_seq_of(1), None);
    assert_eq!(run_seq_of(2), Some(1));
    assert_eq!(journal_sequence_of(5), 6);
}

#[test]
fn events_have_stable_type_names_versions_and_stored_shape() {
    assert_eq!(created().event_type(), "run.created");
    assert_eq!(started().event_type(), "run.started");
    assert_eq!(
        frame_appended("a", "b", 1).event_type(),
        "run.frame_appended"
    );
    assert_eq!(cancel_requested().event_type(), "run.cancel_requested");
    assert_eq!(finished(RunStatus::Failed).event_type(), "run.finished");
    assert_eq!(started().event_version(), "1.0");
    assert_eq!(
        serde_json::to_value(started()).unwrap(),
        json!({"RunStarted": {"source": "runtime", "started_at": "2026-02-01T00:00:01Z"}})
    );
    let round_trip: RunEvent =
        serde_json::from_value(serde_json::to_value(created()).unwrap()).unwrap();
    assert_eq!(round_trip, created());
}

// --- runtime stream view --------------------------------------------------------------------

#[test]
fn the_runtime_view_matches_the_original_contract_payloads() {
    for event in [
        created(),
        started(),
        cancel_requested(),
        frame_appended("frm_1", "hi", 2),
    ] {
        assert_eq!(event.runtime_view(), event.clone().into_runtime_view());
    }
    assert_eq!(created().runtime_view(), None);
    let view = started().runtime_view().unwrap();
    assert_eq!(view.event_type, "run.started");
    assert_eq!(Value::Object(view.payload), json!({"source": "runtime"}));
    let view = cancel_requested().runtime_view().unwrap();
    assert_eq!(view.event_type, "run.cancel_requested");
    assert_eq!(Value::Object(view.payload), json!({"reason": "user"}));
    let failed = RunEvent::RunFinished {
        status: RunStatus::Failed,
        reason_class: None,
        reason: None,
        error_code: Some("tool_timeout".into()),
        finished_at: at(4),
    };
    let view = failed.runtime_view().unwrap();
    assert_eq!(view.event_type, "run.finished");
    // Key order is part of the REPLAY.jsonl bytes: status first, then what the caller gave.
    assert_eq!(
        serde_json::to_string(&view.payload).unwrap(),
        r#"{"status":"failed","error_code":"tool_timeout"}"#
    );
    assert_eq!(failed.reason_class().as_deref(), Some("execution_failed"));
    let view = frame_appended("frm_1", "hi", 2).runtime_view().unwrap();
    assert_eq!(view.event_type, "user_message");
    assert_eq!(view.natural_key.as_deref(), Some("frm_1"));
    assert_eq!(Value::Object(view.payload), json!({"text": "hi"}));
}

#[test]
fn a_tenant_is_recorded_at_creation_and_old_events_without_one_still_load() {
    use crate::ids::OrgId;
    let mut run = Run::default();
    let with_org = RunEvent::RunCreated {
        run_id: RunId::parse("run_1").unwrap(),
        thread_id: ThreadId::parse("thread_1").unwrap(),
        owner: owner(),
        org_id: Some(OrgId::parse("org_9").unwrap()),
        metadata: Map::new(),
        created_at: at(0),
    };
    run.apply(with_org.clone());
    assert_eq!(
        run.summary().org_id.as_ref().map(OrgId::as_str),
        Some("org_9")
    );
    let json = serde_json::to_value(&with_org).unwrap();
    assert_eq!(json["RunCreated"]["org_id"], "org_9");

    // Stored before tenants existed: no org_id key at all, and None is not written back.
    let old = serde_json::json!({"RunCreated": {
        "run_id": "run_1", "thread_id": "thread_1", "owner": {"kind": "user", "id": "42"},
        "metadata": {}, "created_at": "2026-02-01T00:00:00Z"}});
    let event: RunEvent = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(event, created());
    assert_eq!(serde_json::to_value(&event).unwrap(), old);
}

/// One event of each kind in the run's stream. The match makes a new [`RunEvent`] variant fail
/// to compile here until it is added to the list (and so to the round-trip test below).
fn one_of_each_stream_event() -> Vec<RunEvent> {
    let events = vec![
        RunEvent::RunStarted {
            source: "runtime".into(),
            started_at: at(1),
        },
        RunEvent::FrameAppended {
            frame_id: FrameId::parse("f1").unwrap(),
            frame_type: "text_delta".into(),
            payload: Map::new(),
            payload_hash: String::new(),
            occurred_at: None,
            appended_at: at(2),
        },
        RunEvent::CancelRequested {
            reason: "stop".into(),
            requested_by: "user".into(),
            requested_at: at(3),
        },
        RunEvent::RunFinished {
            status: RunStatus::Canceled,
            reason_class: None,
            reason: None,
            error_code: None,
            finished_at: at(4),
        },
    ];
    for event in &events {
        match event {
            RunEvent::RunCreated { .. } => unreachable!("not in the stream"),
            RunEvent::RunStarted { .. }
            | RunEvent::FrameAppended { .. }
            | RunEvent::CancelRequested { .. }
            | RunEvent::RunFinished { .. } => {}
        }
    }
    events
}

#[test]
fn every_stream_event_is_re_executed_by_the_command_that_emitted_it() {
    for event in one_of_each_stream_event() {
        let view = event.runtime_view().expect("in the stream");
        assert_eq!(
            Lifecycle::of_stream_type(&view.event_type),
            event.lifecycle(),
            "{}",
            view.event_type
        );
        let command = command_for_stream_event(1, &view.event_type, &view.payload, Some("f1"))
            .expect("a command");
        match (event.lifecycle(), &command) {
            (Some(Lifecycle::Started), RunCommand::StartRun { .. })
            | (Some(Lifecycle::CancelRequested), RunCommand::RequestCancel { .. })
            | (Some(Lifecycle::Finished), RunCommand::FinishRun { .. })
            | (None, RunCommand::AppendFrame { .. }) => {}
            other => panic!("{} re-executed as {other:?}", view.event_type),
        }
    }
}

#[test]
fn run_created_is_not_in_the_stream_and_lifecycle_names_are_unique() {
    assert!(created().runtime_view().is_none());
    assert_eq!(created().lifecycle(), None);
    use strum::IntoEnumIterator as _;
    let names: Vec<&str> = Lifecycle::iter().map(Lifecycle::stream_type).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for name in names {
        assert!(name.starts_with(RESERVED_FRAME_PREFIX), "{name}");
    }
}
