//! Given/when/then tests for every Payment and SpendLedger rule and rejection.

use cqrs_es::test::TestFramework;
use sha2::{Digest, Sha256};

use super::receipt::{build_receipt, ReceiptInput};
use super::*;
use crate::ids::{Owner, RunId, UserId};
use crate::{Stamped, Timestamp};

type PaymentFixture = TestFramework<Payment>;
type LedgerFixture = TestFramework<SpendLedger>;

const PREIMAGE: &str = "0101010101010101010101010101010101010101010101010101010101010101";

fn at(second: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_771_000_000 + second).unwrap()
}

fn hash() -> PaymentHash {
    PaymentHash::from_bytes(&Sha256::digest(hex::decode(PREIMAGE).unwrap()).into())
}

fn wallet() -> WalletId {
    WalletId::parse("wallet-1").unwrap()
}

fn decoded() -> DecodedInvoice {
    DecodedInvoice {
        payment_hash: hash(),
        destination: "02abc".into(),
        amount_msats: Msat(50_000),
        created_at_unix: 1_771_000_000,
        expiry_secs: 3600,
        description: "coffee".into(),
    }
}

fn request(id: &str) -> PaymentRequest {
    PaymentRequest {
        request_id: id.into(),
        fingerprint: format!("fp-{id}"),
        wallet_id: wallet(),
        host: "sats4ai.com".into(),
        invoice: "lnbcrt500n1test".into(),
        invoice_hash: "ih".into(),
        decoded: decoded(),
        network: Network::Regtest,
        max_amount_msats: Msat(100_000),
        fee_limit_msats: Msat(1_000),
        run_id: Some(RunId::parse("run_1").unwrap()),
        owner: Some(Owner::User(UserId::parse("7").unwrap())),
    }
}

fn requested(attempt: u32, id: &str, second: i64) -> PaymentEvent {
    let r = request(id);
    PaymentEvent::PaymentRequested {
        attempt,
        request_id: r.request_id,
        request_fingerprint: r.fingerprint,
        wallet_id: r.wallet_id,
        host: r.host,
        invoice: r.invoice,
        invoice_hash: r.invoice_hash,
        decoded: r.decoded,
        network: r.network,
        max_amount_msats: r.max_amount_msats,
        fee_limit_msats: r.fee_limit_msats,
        run_id: r.run_id,
        owner: r.owner,
        requested_at: at(second),
    }
}

fn reserved(attempt: u32) -> PaymentEvent {
    PaymentEvent::PaymentReserved {
        attempt,
        window_spend_before_msats: 0,
        reserved_at: at(2),
    }
}

fn failed(attempt: u32) -> PaymentEvent {
    PaymentEvent::PaymentFailed {
        attempt,
        reason: "FAILURE_REASON_NO_ROUTE".into(),
        message: "no route".into(),
        failed_at: at(3),
    }
}

fn cmd(second: i64, command: PaymentCommand) -> Stamped<PaymentCommand> {
    Stamped::new(at(second), command)
}

fn pay(id: &str) -> PaymentCommand {
    PaymentCommand::RequestPayment(Box::new(request(id)))
}

fn success_command() -> PaymentCommand {
    PaymentCommand::RecordSuccess {
        attempt: 1,
        preimage_hex: PREIMAGE.to_uppercase(),
        settled_amount_msats: 50_000,
        fee_msats: 12,
        paid_at_ms: 1_771_000_004_000,
        window_spend_after_msats: 50_000,
    }
}

fn succeeded() -> PaymentEvent {
    let receipt = build_receipt(&ReceiptInput {
        request_id: "req-1",
        wallet_id: "wallet-1",
        host: "sats4ai.com",
        payment_id: hash().as_str(),
        invoice_hash: "ih",
        quoted_amount_msats: 50_000,
        settled_amount_msats: 50_000,
        preimage_hex: PREIMAGE,
        paid_at_ms: 1_771_000_004_000,
    });
    PaymentEvent::PaymentSucceeded {
        attempt: 1,
        preimage_hex: PREIMAGE.into(),
        settled_amount_msats: 50_000,
        fee_msats: 12,
        paid_at_ms: 1_771_000_004_000,
        window_spend_after_msats: 50_000,
        receipt,
        succeeded_at: at(4),
    }
}

// --- requesting -------------------------------------------------------------------------------

#[test]
fn the_first_request_opens_attempt_one() {
    PaymentFixture::with(())
        .given_no_previous_events()
        .when(cmd(1, pay("req-1")))
        .then_expect_events(vec![requested(1, "req-1", 1)]);
}

#[test]
fn a_retry_with_the_same_request_id_changes_nothing() {
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1)])
        .when(cmd(5, pay("req-1")))
        .then_expect_events(vec![]);
}

#[test]
fn the_same_request_id_with_other_parameters_is_a_conflict() {
    let mut other = request("req-1");
    other.fingerprint = "different".into();
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1)])
        .when(cmd(5, PaymentCommand::RequestPayment(Box::new(other))))
        .then_expect_error(PaymentError::RequestConflict {
            request_id: "req-1".into(),
        });
}

#[test]
fn a_second_request_for_an_open_payment_attaches_instead_of_paying_again() {
    let r = request("req-2");
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1)])
        .when(cmd(5, pay("req-2")))
        .then_expect_events(vec![PaymentEvent::PaymentRequestAttached {
            attempt: 1,
            request_id: "req-2".into(),
            request_fingerprint: "fp-req-2".into(),
            host: r.host,
            max_amount_msats: r.max_amount_msats,
            run_id: r.run_id,
            owner: r.owner,
            attached_at: at(5),
        }]);
}

#[test]
fn a_request_for_a_settled_payment_attaches_to_the_settlement() {
    let events = PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1), succeeded()])
        .when(cmd(9000, pay("req-3")))
        .inspect_result()
        .unwrap();
    assert!(matches!(
        events.as_slice(),
        [PaymentEvent::PaymentRequestAttached { attempt: 1, .. }]
    ));
}

#[test]
fn a_request_after_a_failed_or_denied_attempt_opens_the_next_attempt() {
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1), failed(1)])
        .when(cmd(10, pay("req-2")))
        .then_expect_events(vec![requested(2, "req-2", 10)]);
    let denied = PaymentEvent::PaymentDenied {
        attempt: 1,
        denial: Denial {
            code: DenialCode::WindowCapExceeded,
            message: "full".into(),
            host: None,
            max_allowed_msats: None,
            quoted_amount_msats: None,
            window_spend_msats: None,
            window_cap_msats: None,
        },
        denied_at: at(2),
    };
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), denied])
        .when(cmd(10, pay("req-2")))
        .then_expect_events(vec![requested(2, "req-2", 10)]);
}

#[test]
fn an_expired_invoice_cannot_open_an_attempt() {
    PaymentFixture::with(())
        .given_no_previous_events()
        .when(cmd(3600, pay("req-1")))
        .then_expect_error(PaymentError::InvoiceExpired);
}

#[test]
fn a_request_for_another_payment_hash_is_a_mismatch() {
    let mut other = request("req-2");
    other.decoded.payment_hash = PaymentHash::parse(&"ab".repeat(32)).unwrap();
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1)])
        .when(cmd(5, PaymentCommand::RequestPayment(Box::new(other))))
        .then_expect_error(PaymentError::InvoiceMismatch);
}

// --- reserving, denying -----------------------------------------------------------------------

#[test]
fn a_reservation_moves_the_attempt_to_reserved_once() {
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1)])
        .when(cmd(
            2,
            PaymentCommand::RecordReservation {
                attempt: 1,
                window_spend_before_msats: 0,
            },
        ))
        .then_expect_events(vec![reserved(1)]);
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1)])
        .when(cmd(
            2,
            PaymentCommand::RecordReservation {
                attempt: 1,
                window_spend_before_msats: 0,
            },
        ))
        .then_expect_events(vec![]);
}

#[test]
fn commands_for_a_stale_attempt_are_rejected() {
    PaymentFixture::with(())
        .given(vec![
            requested(1, "req-1", 1),
            reserved(1),
            failed(1),
            requested(2, "req-2", 5),
        ])
        .when(cmd(
            6,
            PaymentCommand::RecordReservation {
                attempt: 1,
                window_spend_before_msats: 0,
            },
        ))
        .then_expect_error(PaymentError::AttemptMismatch { current: 2, got: 1 });
}

#[test]
fn commands_on_a_missing_payment_are_not_found() {
    PaymentFixture::with(())
        .given_no_previous_events()
        .when(cmd(1, success_command()))
        .then_expect_error(PaymentError::NotFound);
}

// --- outcomes ---------------------------------------------------------------------------------

#[test]
fn success_records_the_settlement_and_the_receipt() {
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1)])
        .when(cmd(4, success_command()))
        .then_expect_events(vec![succeeded()]);
}

#[test]
fn a_second_success_changes_nothing() {
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1), succeeded()])
        .when(cmd(5, success_command()))
        .then_expect_events(vec![]);
}

#[test]
fn a_preimage_that_does_not_match_the_hash_is_rejected() {
    let mut bad = success_command();
    if let PaymentCommand::RecordSuccess { preimage_hex, .. } = &mut bad {
        *preimage_hex = "02".repeat(32);
    }
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1)])
        .when(cmd(4, bad))
        .then_expect_error(PaymentError::PreimageMismatch);
}

#[test]
fn a_success_reported_after_a_failure_is_still_recorded() {
    // LND's word on money that moved wins over an earlier (wrong) failure.
    let events = PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1), failed(1)])
        .when(cmd(4, success_command()))
        .inspect_result()
        .unwrap();
    assert!(matches!(
        events.as_slice(),
        [PaymentEvent::PaymentSucceeded { .. }]
    ));
}

#[test]
fn a_failure_after_success_or_a_repeated_failure_changes_nothing() {
    let fail = PaymentCommand::RecordFailure {
        attempt: 1,
        reason: "FAILURE_REASON_TIMEOUT".into(),
        message: "late".into(),
    };
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1), succeeded()])
        .when(cmd(5, fail.clone()))
        .then_expect_events(vec![]);
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1), failed(1)])
        .when(cmd(5, fail))
        .then_expect_events(vec![]);
}

#[test]
fn an_unknown_outcome_marks_the_attempt_for_reconcile() {
    PaymentFixture::with(())
        .given(vec![requested(1, "req-1", 1), reserved(1)])
        .when(cmd(
            3,
            PaymentCommand::MarkReconcileRequired {
                attempt: 1,
                reason: "stream broke".into(),
            },
        ))
        .then_expect_events(vec![PaymentEvent::PaymentReconcileRequired {
            attempt: 1,
            reason: "stream broke".into(),
            marked_at: at(3),
        }]);
}

#[test]
fn folding_events_gives_status_and_bindings() {
    let mut payment = Payment::default();
    for event in [requested(1, "req-1", 1), reserved(1), succeeded()] {
        cqrs_es::Aggregate::apply(&mut payment, event);
    }
    assert_eq!(payment.status(), Some(AttemptStatus::Succeeded));
    assert_eq!(payment.requests["req-1"].attempt, 1);
    assert!(payment.open_attempt().is_none());
    assert_eq!(payment.version, 3);
    let redacted = succeeded().redacted();
    if let PaymentEvent::PaymentSucceeded { preimage_hex, .. } = redacted {
        assert!(preimage_hex.starts_with("sha256:"));
    }
}

// --- the spend ledger -------------------------------------------------------------------------

fn caps() -> SpendCaps {
    SpendCaps {
        window_ms: 300_000,
        window_cap: Msat(1_000_000),
        run_cap: Some(Msat(300_000)),
        owner_window_cap: Some(Msat(500_000)),
    }
}

fn other_hash(n: u8) -> PaymentHash {
    PaymentHash::from_bytes(&[n; 32])
}

fn reserve(n: u8, amount: u64, run: &str, owner: &str) -> SpendLedgerCommand {
    SpendLedgerCommand::ReserveSpend {
        payment_hash: other_hash(n),
        attempt: 1,
        amount_msats: Msat(amount),
        host: "sats4ai.com".into(),
        run_id: Some(RunId::parse(run).unwrap()),
        owner: Some(Owner::User(UserId::parse(owner).unwrap())),
        caps: caps(),
    }
}

fn reserved_spend(
    n: u8,
    amount: u64,
    run: &str,
    owner: &str,
    before: u64,
    second: i64,
) -> SpendLedgerEvent {
    SpendLedgerEvent::SpendReserved {
        payment_hash: other_hash(n),
        attempt: 1,
        amount_msats: amount,
        run_id: Some(RunId::parse(run).unwrap()),
        owner: Some(Owner::User(UserId::parse(owner).unwrap())),
        window_spend_before_msats: before,
        reserved_at: at(second),
    }
}

fn committed_spend(n: u8, amount: u64, run: &str, owner: &str, second: i64) -> SpendLedgerEvent {
    SpendLedgerEvent::SpendCommitted {
        payment_hash: other_hash(n),
        attempt: 1,
        settled_msats: amount,
        fee_msats: 0,
        receipt_id: format!("lwr_{n}"),
        paid_at_ms: 0,
        run_id: Some(RunId::parse(run).unwrap()),
        owner: Some(Owner::User(UserId::parse(owner).unwrap())),
        window_spend_after_msats: amount,
        committed_at: at(second),
    }
}

fn lcmd(second: i64, command: SpendLedgerCommand) -> Stamped<SpendLedgerCommand> {
    Stamped::new(at(second), command)
}

#[test]
fn a_reservation_inside_every_cap_is_recorded_with_the_spend_before_it() {
    LedgerFixture::with(())
        .given(vec![reserved_spend(1, 200_000, "run_a", "1", 0, 1)])
        .when(lcmd(2, reserve(2, 200_000, "run_b", "2")))
        .then_expect_events(vec![reserved_spend(2, 200_000, "run_b", "2", 200_000, 2)]);
}

#[test]
fn reserving_the_same_attempt_twice_changes_nothing() {
    LedgerFixture::with(())
        .given(vec![reserved_spend(1, 200_000, "run_a", "1", 0, 1)])
        .when(lcmd(2, reserve(1, 200_000, "run_a", "1")))
        .then_expect_events(vec![]);
}

#[test]
fn the_window_cap_counts_settled_and_reserved_spend_and_allows_an_exact_fit() {
    let given = vec![
        committed_spend(1, 200_000, "r1", "1", 1),
        committed_spend(2, 200_000, "r2", "2", 2),
        committed_spend(3, 200_000, "r3", "3", 3),
        reserved_spend(4, 200_000, "r4", "4", 600_000, 4),
    ];
    LedgerFixture::with(())
        .given(given.clone())
        .when(lcmd(5, reserve(5, 200_000, "r5", "5")))
        .then_expect_events(vec![reserved_spend(5, 200_000, "r5", "5", 800_000, 5)]);
    let mut more = given;
    more.push(reserved_spend(5, 200_000, "r5", "5", 800_000, 5));
    let result = LedgerFixture::with(())
        .given(more)
        .when(lcmd(6, reserve(6, 1, "r6", "6")))
        .inspect_result();
    match result {
        Err(SpendLedgerError::Denied(denial)) => {
            assert_eq!(denial.code, DenialCode::WindowCapExceeded);
            assert_eq!(denial.window_spend_msats, Some(1_000_000));
            assert_eq!(denial.window_cap_msats, Some(1_000_000));
            assert_eq!(denial.quoted_amount_msats, Some(1));
        }
        other => panic!("expected a window denial, got {other:?}"),
    }
}

#[test]
fn settled_spend_leaves_the_window_after_window_ms() {
    LedgerFixture::with(())
        .given(vec![committed_spend(1, 1_000_000, "r1", "1", 0)])
        .when(lcmd(301, reserve(2, 100_000, "r2", "2")))
        .then_expect_events(vec![reserved_spend(2, 100_000, "r2", "2", 0, 301)]);
}

#[test]
fn the_run_cap_counts_the_runs_lifetime_spend() {
    let result = LedgerFixture::with(())
        .given(vec![
            committed_spend(1, 200_000, "run_a", "1", 0),
            reserved_spend(2, 50_000, "run_a", "1", 200_000, 1),
        ])
        .when(lcmd(1000, reserve(3, 60_000, "run_a", "2")))
        .inspect_result();
    match result {
        Err(SpendLedgerError::Denied(denial)) => {
            assert_eq!(denial.code, DenialCode::RunCapExceeded);
            assert_eq!(denial.window_spend_msats, Some(250_000));
            assert_eq!(denial.window_cap_msats, Some(300_000));
        }
        other => panic!("expected a run denial, got {other:?}"),
    }
}

#[test]
fn the_owner_cap_counts_the_owners_window_spend() {
    let result = LedgerFixture::with(())
        .given(vec![
            committed_spend(1, 200_000, "r1", "9", 0),
            committed_spend(2, 200_000, "r2", "9", 1),
            committed_spend(3, 200_000, "r3", "8", 2),
        ])
        .when(lcmd(3, reserve(4, 150_000, "r4", "9")))
        .inspect_result();
    match result {
        Err(SpendLedgerError::Denied(denial)) => {
            assert_eq!(denial.code, DenialCode::OwnerCapExceeded);
            assert_eq!(denial.window_spend_msats, Some(400_000));
        }
        other => panic!("expected an owner denial, got {other:?}"),
    }
}

#[test]
fn commit_replaces_the_reservation_and_is_idempotent() {
    let commit = SpendLedgerCommand::CommitSpend {
        payment_hash: other_hash(1),
        attempt: 1,
        settled_msats: 150_000,
        fee_msats: 3,
        receipt_id: "lwr_1".into(),
        paid_at_ms: 7,
        run_id: Some(RunId::parse("r1").unwrap()),
        owner: Some(Owner::User(UserId::parse("1").unwrap())),
        window_ms: 300_000,
    };
    let events = LedgerFixture::with(())
        .given(vec![
            reserved_spend(1, 200_000, "r1", "1", 0, 1),
            reserved_spend(2, 100_000, "r2", "2", 200_000, 1),
        ])
        .when(lcmd(2, commit.clone()))
        .inspect_result()
        .unwrap();
    match events.as_slice() {
        [SpendLedgerEvent::SpendCommitted {
            window_spend_after_msats,
            ..
        // The settled amount and its fee; payment 2's open reservation is not spend.
        }] => assert_eq!(*window_spend_after_msats, 150_003),
        other => panic!("unexpected {other:?}"),
    }
    LedgerFixture::with(())
        .given(vec![
            reserved_spend(1, 200_000, "r1", "1", 0, 1),
            committed_spend(1, 150_000, "r1", "1", 2),
        ])
        .when(lcmd(3, commit))
        .then_expect_events(vec![]);
}

#[test]
fn release_drops_the_reservation_and_releasing_twice_changes_nothing() {
    let release = SpendLedgerCommand::ReleaseSpend {
        payment_hash: other_hash(1),
        attempt: 1,
        reason: "failed".into(),
    };
    LedgerFixture::with(())
        .given(vec![reserved_spend(1, 200_000, "r1", "1", 0, 1)])
        .when(lcmd(2, release.clone()))
        .then_expect_events(vec![SpendLedgerEvent::SpendReleased {
            payment_hash: other_hash(1),
            attempt: 1,
            amount_msats: 200_000,
            reason: "failed".into(),
            released_at: at(2),
        }]);
    LedgerFixture::with(())
        .given(vec![
            reserved_spend(1, 200_000, "r1", "1", 0, 1),
            SpendLedgerEvent::SpendReleased {
                payment_hash: other_hash(1),
                attempt: 1,
                amount_msats: 200_000,
                reason: "failed".into(),
                released_at: at(2),
            },
        ])
        .when(lcmd(3, release))
        .then_expect_events(vec![]);
}

#[test]
fn a_released_reservation_frees_room_and_run_budget() {
    let mut ledger = SpendLedger::default();
    for event in [
        reserved_spend(1, 300_000, "r1", "1", 0, 1),
        SpendLedgerEvent::SpendReleased {
            payment_hash: other_hash(1),
            attempt: 1,
            amount_msats: 300_000,
            reason: "failed".into(),
            released_at: at(2),
        },
    ] {
        cqrs_es::Aggregate::apply(&mut ledger, event);
    }
    assert_eq!(ledger.window_spend(at(3), 300_000, None), 0);
    assert_eq!(ledger.run_spend[&RunId::parse("r1").unwrap()], 0);
    assert!(ledger.reservations.is_empty());
}
