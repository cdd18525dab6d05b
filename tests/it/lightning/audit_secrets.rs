//! Secrets never leave in an export: after a payment made through the wallet executor (fake LND
//! over gRPC/TLS), no output of the audit tooling carries its preimage or the executor's
//! credential — whole-journal and time-range bundles (in-process and through the
//! `openagents-runtime audit export` binary), verify reports and their error details, checkpoints
//! and the inclusion proof of the payment event over HTTP — while the redacted bundles still
//! verify against the trusted checkpoint.

use std::process::Command;

use engine::audit_log::{AuditStore, Checkpoint};
use engine::testing::TestDb;
use lightning::testing::FakeLnd;
use openagents_runtime::audit::{export, verify_bundle, Cut, ExportOptions, Scope, VerifyOptions};
use reqwest::StatusCode;
use serde_json::json;

use super::executor::{spawn_app, test_config, TOKEN};
use crate::audit_log::{test_key, TEST_AUDIT_KEY};
use crate::support::{on_both_backends, read_all_settled};

on_both_backends!(no_output_of_a_paid_run_carries_its_preimage);

fn options(scope: Scope, cut: Cut) -> ExportOptions {
    ExportOptions {
        scope,
        signer: None,
        runtime_version: "test".into(),
        exported_at: "2026-03-01T00:00:00Z".parse().unwrap(),
        progress: false,
        verify_stored: true,
        cut,
        consistency_from: None,
    }
}

/// Runs `openagents-runtime audit …`; its standard output, then its standard error.
fn cli(db: &TestDb, data_dir: &std::path::Path, args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_openagents-runtime"));
    command
        .arg("audit")
        .args(args)
        .env_remove("DATABASE_URL")
        .env("OA_AUDIT_KEY", TEST_AUDIT_KEY);
    // `verify` reads only its bundle; the others open the journal.
    if args[0] != "verify" {
        command.args(["--data-dir", data_dir.to_str().unwrap()]);
        if let Some(url) = &db.url {
            command.args(["--database-url", url]);
        }
    }
    let output = command.output().expect("run openagents-runtime audit");
    assert!(
        output.status.success(),
        "audit {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.stdout, output.stderr)
}

fn both((out, err): (Vec<u8>, Vec<u8>)) -> Vec<u8> {
    let mut all = out;
    all.extend_from_slice(&err);
    all
}

async fn no_output_of_a_paid_run_carries_its_preimage(db: &TestDb) {
    let fake = FakeLnd::start().await;
    let executor = spawn_app(&db.database, &fake.config(), test_config()).await;
    let invoice = fake.issue_invoice(42_000, "audited");
    let (status, body) = executor
        .pay_with(
            Some("audit-1"),
            json!({ "userId": "7", "runId": "run_paid",
                    "payment": { "invoice": invoice.payment_request, "maxAmountMsats": 50_000,
                                 "host": "sats4ai.com" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let preimage = invoice.preimage_hex.to_lowercase();
    // The journal holds the preimage (so the checks below can fail).
    let events = read_all_settled(&db.database.journal()).await;
    let succeeded = events
        .iter()
        .find(|e| e.event.payload.to_string().contains(&preimage))
        .expect("the journal records the preimage");
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();

    // Bundles: the whole journal and a time range, at a fresh checkpoint and integrity-only.
    let range = Scope::TimeRange {
        since: "2000-01-01T00:00:00Z".parse().unwrap(),
        until: "2100-01-01T00:00:00Z".parse().unwrap(),
    };
    for (name, scope, cut) in [
        ("all", Scope::All, Cut::Fresh(test_key())),
        ("range", range.clone(), Cut::Fresh(test_key())),
        ("all-integrity", Scope::All, Cut::IntegrityOnly),
        ("range-latest", range, Cut::Latest),
    ] {
        let mut out = Vec::new();
        let summary = export(&db.database, &options(scope, cut), &mut out)
            .await
            .unwrap();
        assert!(
            summary.redacted_events >= 1,
            "{name}: the payment was redacted"
        );
        outputs.push((format!("bundle {name}"), out));
    }
    // The redacted bundles verify against the trusted checkpoint, every event proven.
    let bundles: Vec<(String, Vec<u8>)> = outputs[..2].to_vec();
    for (name, bytes) in &bundles {
        let report = verify_bundle(
            bytes.as_slice(),
            &VerifyOptions::trusting(test_key().public_key_hex()),
        )
        .unwrap();
        assert_eq!(report.findings, vec![], "{name}");
        assert_eq!(report.events_proven, report.events, "{name}");
        assert!(report.events_redacted >= 1, "{name}");
        outputs.push((
            format!("verify report of {name}"),
            serde_json::to_vec(&report).unwrap(),
        ));
    }
    // Error details: a tampered redacted bundle's findings quote the event, never the secret.
    let tampered = String::from_utf8(outputs[0].1.clone())
        .unwrap()
        .replace("\"attempt\":1", "\"attempt\":2")
        .into_bytes();
    let report = verify_bundle(
        tampered.as_slice(),
        &VerifyOptions::trusting(test_key().public_key_hex()),
    )
    .unwrap();
    assert!(!report.is_valid());
    outputs.push((
        "findings of a tampered bundle".into(),
        serde_json::to_vec(&report).unwrap(),
    ));

    // The binary: audit export --all / a time range to stdout, audit verify, audit checkpoint.
    let data_dir = db
        .data_dir
        .clone()
        .unwrap_or_else(|| tempfile::tempdir().unwrap().keep());
    let (exported, summary) = cli(db, &data_dir, &["export", "--all", "-o", "-"]);
    let bundle_file = data_dir.join("paid-bundle.jsonl");
    std::fs::write(&bundle_file, &exported).unwrap();
    outputs.push(("audit export --all".into(), both((exported, summary))));
    outputs.push((
        "audit export --since --until".into(),
        both(cli(
            db,
            &data_dir,
            &[
                "export",
                "--since",
                "2000-01-01T00:00:00Z",
                "--until",
                "2100-01-01T00:00:00Z",
                "-o",
                "-",
            ],
        )),
    ));
    outputs.push((
        "audit verify".into(),
        both(cli(
            db,
            &data_dir,
            &[
                "verify",
                bundle_file.to_str().unwrap(),
                "--trusted-key",
                &test_key().public_key_hex(),
            ],
        )),
    ));
    let (checkpoint, _) = cli(db, &data_dir, &["checkpoint", "--take"]);
    let cp: Checkpoint = serde_json::from_slice(&checkpoint).unwrap();
    cp.verify(&[test_key().public_key_hex()]).unwrap();
    outputs.push(("audit checkpoint".into(), checkpoint));

    // HTTP: the payment event's inclusion proof and the latest checkpoint, as the operator.
    let (base, shutdown) = crate::audit_trust::spawn_audited(db).await;
    let store = AuditStore::new(&db.database);
    let size = store.state().await.unwrap().tree_size;
    assert!(size >= events.len() as u64);
    let operator = || engine::auth::InternalClaims {
        oa_role: Some(engine::auth::OPERATOR_ROLE.into()),
        ..crate::app::claims()
    };
    let path = format!(
        "/internal/v1/audit/proof/inclusion?aggregate_type={}&aggregate_id={}&sequence={}",
        succeeded.event.aggregate_type, succeeded.event.aggregate_id, succeeded.event.sequence
    );
    let (status, body) = crate::audit_trust::get(&base, &path, operator()).await;
    assert_eq!(status, 200, "{body}");
    outputs.push(("GET proof/inclusion".into(), body.to_string().into_bytes()));
    let (status, body) =
        crate::audit_trust::get(&base, "/internal/v1/audit/checkpoints/latest", operator()).await;
    assert_eq!(status, 200, "{body}");
    outputs.push((
        "GET checkpoints/latest".into(),
        body.to_string().into_bytes(),
    ));
    shutdown.cancel();

    for (name, bytes) in &outputs {
        let text = String::from_utf8_lossy(bytes).to_lowercase();
        assert!(!text.is_empty(), "{name} is empty");
        assert!(!text.contains(&preimage), "{name} carries the preimage");
        assert!(
            !text.contains(&TOKEN.to_lowercase()),
            "{name} carries the executor's credential"
        );
    }
    // And the check is real: the secret is where the grep would find it if it leaked.
    assert!(outputs
        .iter()
        .any(|(_, b)| String::from_utf8_lossy(b).contains("redacted:sha256:")));
}
