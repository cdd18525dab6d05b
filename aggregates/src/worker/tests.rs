//! Given/when/then tests for every Worker rule and rejection.

use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::{json, Map, Value};

use super::*;
use crate::ids::{GuestScope, UserId};

type Fixture = TestFramework<Worker>;

fn at(second: u32) -> Timestamp {
    Timestamp::from_unix_seconds(1_771_000_000 + i64::from(second)).unwrap()
}

fn obj(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn owner() -> Owner {
    Owner::User(UserId::parse("7").unwrap())
}

fn register() -> WorkerCommand {
    WorkerCommand::RegisterWorker {
        worker_id: WorkerId::parse("codexw_1").unwrap(),
        owner: owner(),
        org_id: None,
        adapter: "desktop".into(),
        workspace_ref: Some("openagents:/workspace".into()),
        codex_home_ref: None,
        metadata: obj(json!({"surface": "autopilot-desktop"})),
        lease_ttl_ms: 60_000,
    }
}

fn registered() -> WorkerEvent {
    WorkerEvent::WorkerRegistered {
        worker_id: WorkerId::parse("codexw_1").unwrap(),
        owner: owner(),
        org_id: None,
        adapter: "desktop".into(),
        workspace_ref: Some("openagents:/workspace".into()),
        codex_home_ref: None,
        metadata: obj(json!({"surface": "autopilot-desktop"})),
        lease_expires_at: at(60),
        registered_at: at(0),
    }
}

fn started() -> WorkerEvent {
    WorkerEvent::WorkerStarted {
        reason: "heartbeat".into(),
        lease_expires_at: at(70),
        started_at: at(10),
    }
}

fn stopped() -> WorkerEvent {
    WorkerEvent::WorkerStopped {
        reason: "stop_requested".into(),
        stopped_at: at(20),
    }
}

fn cmd(second: u32, command: WorkerCommand) -> Stamped<WorkerCommand> {
    Stamped::new(at(second), command)
}

fn report(event_type: &str, payload: Value) -> WorkerCommand {
    WorkerCommand::ReportEvent {
        event_type: event_type.into(),
        payload: obj(payload),
    }
}

fn request(id: &str, method: &str) -> WorkerCommand {
    WorkerCommand::RecordRequest {
        request_id: RequestId::parse(id).unwrap(),
        method: method.into(),
        params: json!({"prompt": "hi"}),
    }
}

// --- register / reattach --------------------------------------------------------------------

#[test]
fn registering_a_new_worker_starts_it_with_a_lease() {
    Fixture::with(())
        .given_no_previous_events()
        .when(cmd(0, register()))
        .then_expect_events(vec![registered()]);
}

#[test]
fn registering_an_active_worker_again_is_a_no_op() {
    Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(30, register()))
        .then_expect_events(vec![]);
}

#[test]
fn registering_someone_elses_worker_is_rejected() {
    let mut other = register();
    if let WorkerCommand::RegisterWorker { owner, .. } = &mut other {
        *owner = Owner::Guest(GuestScope::parse("guest-1").unwrap());
    }
    Fixture::with(())
        .given(vec![registered()])
        .when(cmd(30, other))
        .then_expect_error(WorkerError::NotOwner);
}

#[test]
fn registering_a_stopped_worker_reattaches_it() {
    Fixture::with(())
        .given(vec![registered(), started(), stopped()])
        .when(cmd(30, register()))
        .then_expect_events(vec![WorkerEvent::WorkerReattached {
            previous_status: WorkerStatus::Stopped,
            lease_expires_at: at(90),
            reattached_at: at(30),
        }]);
}

#[test]
fn a_lease_outside_the_allowed_range_is_rejected() {
    let mut bad = register();
    if let WorkerCommand::RegisterWorker { lease_ttl_ms, .. } = &mut bad {
        *lease_ttl_ms = 10;
    }
    let result = Fixture::with(())
        .given_no_previous_events()
        .when(cmd(0, bad))
        .inspect_result();
    assert!(matches!(result, Err(WorkerError::InvalidLease(_))));
}

#[test]
fn commands_on_a_missing_worker_are_not_found() {
    for command in [
        WorkerCommand::Heartbeat {
            lease_ttl_ms: Some(60_000),
        },
        request("r1", "turn/start"),
        report("worker.event", json!({})),
        WorkerCommand::RequestStop { reason: "x".into() },
        WorkerCommand::ExpireLease,
    ] {
        Fixture::with(())
            .given_no_previous_events()
            .when(cmd(1, command))
            .then_expect_error(WorkerError::NotFound);
    }
}

// --- heartbeats and leases ------------------------------------------------------------------

#[test]
fn the_first_heartbeat_makes_a_starting_worker_running() {
    Fixture::with(())
        .given(vec![registered()])
        .when(cmd(
            10,
            WorkerCommand::Heartbeat {
                lease_ttl_ms: Some(60_000),
            },
        ))
        .then_expect_events(vec![started()]);
}

#[test]
fn a_heartbeat_early_in_the_lease_is_not_journaled() {
    // Lease runs to 70; at 20 more than half of a 60 s lease remains.
    Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(
            20,
            WorkerCommand::Heartbeat {
                lease_ttl_ms: Some(60_000),
            },
        ))
        .then_expect_events(vec![]);
}

#[test]
fn a_heartbeat_late_in_the_lease_renews_it() {
    Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(
            45,
            WorkerCommand::Heartbeat {
                lease_ttl_ms: Some(60_000),
            },
        ))
        .then_expect_events(vec![WorkerEvent::LeaseRenewed {
            lease_expires_at: at(105),
            renewed_at: at(45),
        }]);
}

/// A worker registered with a 2 s lease.
fn brief_lease_events() -> Vec<WorkerEvent> {
    let WorkerEvent::WorkerRegistered {
        worker_id,
        owner,
        org_id,
        adapter,
        workspace_ref,
        codex_home_ref,
        metadata,
        ..
    } = registered()
    else {
        unreachable!()
    };
    vec![WorkerEvent::WorkerRegistered {
        worker_id,
        owner,
        org_id,
        adapter,
        workspace_ref,
        codex_home_ref,
        metadata,
        lease_expires_at: at(2),
        registered_at: at(0),
    }]
}

#[test]
fn a_heartbeat_without_a_lease_renews_to_the_registered_lease() {
    Fixture::with(())
        .given(brief_lease_events())
        .when(cmd(1, WorkerCommand::Heartbeat { lease_ttl_ms: None }))
        .then_expect_events(vec![WorkerEvent::WorkerStarted {
            reason: "heartbeat".into(),
            lease_expires_at: at(3),
            started_at: at(1),
        }]);
    // A reattach sets the lease anew.
    let mut events = brief_lease_events();
    events.push(WorkerEvent::WorkerLost {
        lease_expired_at: at(2),
        detected_at: at(4),
    });
    events.push(WorkerEvent::WorkerReattached {
        previous_status: WorkerStatus::Lost,
        lease_expires_at: at(15),
        reattached_at: at(10),
    });
    Fixture::with(())
        .given(events)
        .when(cmd(11, report("worker.heartbeat", json!({}))))
        .then_expect_events(vec![WorkerEvent::WorkerStarted {
            reason: "heartbeat".into(),
            lease_expires_at: at(16),
            started_at: at(11),
        }]);
}

#[test]
fn a_heartbeat_from_a_stopped_or_lost_worker_is_rejected() {
    Fixture::with(())
        .given(vec![registered(), started(), stopped()])
        .when(cmd(
            45,
            WorkerCommand::Heartbeat {
                lease_ttl_ms: Some(60_000),
            },
        ))
        .then_expect_error(WorkerError::NotActive {
            status: WorkerStatus::Stopped,
        });
}

#[test]
fn an_expired_lease_marks_the_worker_lost() {
    Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(71, WorkerCommand::ExpireLease))
        .then_expect_events(vec![WorkerEvent::WorkerLost {
            lease_expired_at: at(70),
            detected_at: at(71),
        }]);
}

#[test]
fn a_lease_that_has_not_run_out_cannot_be_expired() {
    Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(69, WorkerCommand::ExpireLease))
        .then_expect_error(WorkerError::LeaseNotExpired);
    Fixture::with(())
        .given(vec![registered(), started(), stopped()])
        .when(cmd(200, WorkerCommand::ExpireLease))
        .then_expect_error(WorkerError::NotActive {
            status: WorkerStatus::Stopped,
        });
}

// --- requests -------------------------------------------------------------------------------

#[test]
fn requests_are_recorded_for_starting_and_running_workers() {
    for given in [vec![registered()], vec![registered(), started()]] {
        let events = Fixture::with(())
            .given(given)
            .when(cmd(11, request("r1", "turn/start")))
            .inspect_result()
            .unwrap();
        assert!(
            matches!(&events[..], [WorkerEvent::RequestReceived { method, .. }] if method == "turn/start")
        );
    }
}

#[test]
fn a_repeated_request_is_a_no_op_and_a_changed_one_a_conflict() {
    let first = Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(11, request("r1", "turn/start")))
        .inspect_result()
        .unwrap();
    Fixture::with(())
        .given(vec![registered(), started()])
        .and(first.clone())
        .when(cmd(12, request("r1", "turn/start")))
        .then_expect_events(vec![]);
    Fixture::with(())
        .given(vec![registered(), started()])
        .and(first)
        .when(cmd(12, request("r1", "turn/interrupt")))
        .then_expect_error(WorkerError::RequestConflict {
            request_id: RequestId::parse("r1").unwrap(),
        });
}

#[test]
fn requests_to_stopping_or_stopped_workers_are_rejected() {
    let stopping = WorkerEvent::WorkerStopping {
        reason: "x".into(),
        stopping_at: at(15),
    };
    Fixture::with(())
        .given(vec![registered(), started(), stopping])
        .when(cmd(16, request("r1", "turn/start")))
        .then_expect_error(WorkerError::NotRunning {
            status: WorkerStatus::Stopping,
        });
    Fixture::with(())
        .given(vec![registered(), started(), stopped()])
        .when(cmd(21, request("r1", "turn/start")))
        .then_expect_error(WorkerError::NotActive {
            status: WorkerStatus::Stopped,
        });
}

#[test]
fn an_empty_method_is_rejected() {
    let result = Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(11, request("r1", " ")))
        .inspect_result();
    assert!(matches!(result, Err(WorkerError::InvalidRequest(_))));
}

// --- reported events and stop ---------------------------------------------------------------

#[test]
fn reported_lifecycle_events_move_the_status() {
    let cases: Vec<(Vec<WorkerEvent>, &str, WorkerStatus)> = vec![
        (vec![registered()], "worker.started", WorkerStatus::Running),
        (
            vec![registered(), started()],
            "worker.stopping",
            WorkerStatus::Stopping,
        ),
        (
            vec![registered(), started()],
            "worker.stopped",
            WorkerStatus::Stopped,
        ),
        (
            vec![registered(), started()],
            "worker.failed",
            WorkerStatus::Failed,
        ),
    ];
    for (given, event_type, expected) in cases {
        let events = Fixture::with(())
            .given(given.clone())
            .when(cmd(12, report(event_type, json!({"reason": "r"}))))
            .inspect_result()
            .unwrap();
        let mut worker = Worker::default();
        for e in given.into_iter().chain(events) {
            worker.apply(e);
        }
        assert_eq!(worker.summary().status, Some(expected), "{event_type}");
    }
}

#[test]
fn other_reported_events_are_recorded_without_changing_status() {
    let events = Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(
            12,
            report("worker.event", json!({"method": "turn/started"})),
        ))
        .inspect_result()
        .unwrap();
    assert_eq!(events[0].stream_event_type(), "worker.event");
    assert_eq!(events[0].event_type(), "worker.event");
    assert_eq!(events[0].new_status(), None);
}

#[test]
fn reported_events_must_be_worker_events_and_not_runtime_owned() {
    for event_type in ["run.started", "event", "worker.lost", "worker.registered"] {
        let result = Fixture::with(())
            .given(vec![registered(), started()])
            .when(cmd(12, report(event_type, json!({}))))
            .inspect_result();
        assert!(
            matches!(result, Err(WorkerError::InvalidEvent(_))),
            "{event_type}"
        );
    }
}

#[test]
fn a_stopped_worker_accepts_only_a_repeated_stopped_report() {
    Fixture::with(())
        .given(vec![registered(), started(), stopped()])
        .when(cmd(30, report("worker.stopped", json!({}))))
        .then_expect_events(vec![]);
    Fixture::with(())
        .given(vec![registered(), started(), stopped()])
        .when(cmd(30, report("worker.event", json!({}))))
        .then_expect_error(WorkerError::NotActive {
            status: WorkerStatus::Stopped,
        });
}

#[test]
fn stop_stops_an_active_worker_and_is_idempotent_afterwards() {
    Fixture::with(())
        .given(vec![registered(), started()])
        .when(cmd(
            20,
            WorkerCommand::RequestStop {
                reason: "stop_requested".into(),
            },
        ))
        .then_expect_events(vec![stopped()]);
    Fixture::with(())
        .given(vec![registered(), started(), stopped()])
        .when(cmd(
            25,
            WorkerCommand::RequestStop {
                reason: "again".into(),
            },
        ))
        .then_expect_events(vec![]);
}

#[test]
fn worker_seq_counts_every_event_from_registration() {
    let mut worker = Worker::default();
    for e in [registered(), started(), stopped()] {
        worker.apply(e);
    }
    let summary = worker.summary();
    assert_eq!(summary.latest_seq, 3);
    assert_eq!(summary.stopped_at, Some(at(20)));
    assert_eq!(summary.last_heartbeat_at, Some(at(10)));
    assert_eq!(registered().event_type(), "worker.registered");
    assert_eq!(
        WorkerEvent::LeaseRenewed {
            lease_expires_at: at(1),
            renewed_at: at(1)
        }
        .event_type(),
        "worker.heartbeat"
    );
}
