//! Bundles proven against signed checkpoints, and the insider who can write the database: a
//! rewritten event (chain hashes recomputed), deleted last events, two events reordered, a
//! bundle re-signed with another key and a forged checkpoint are each caught by `audit verify`
//! (with `--checkpoint A`) and by the witness, on PostgreSQL and SQLite. Also: the routes, and
//! that no output of a paid run carries its preimage.

use std::time::Duration;

use aggregates::canonical::PrefixedSha256;
use aggregates::chain::{self, EventContent};
use engine::audit_log::{AuditKey, AuditStore, Checkpoint};
use engine::clock::Stamps;
use engine::testing::TestDb;
use openagents_runtime::audit::witness::{run as run_witness, WitnessArgs};
use openagents_runtime::audit::{
    export, verify_bundle, Cut, ExportOptions, FindingKind, Scope, VerifyOptions, VerifyReport,
};
use openagents_runtime::config::RuntimeConfig;
use openagents_runtime::{App, Server};
use serde_json::{json, Value};

use crate::app::{claims, database_config, secret, token, TEST_SECRET};
use crate::audit_log::{seed_raw, seed_runs, test_key};
use crate::support::on_both_backends;

fn options(scope: Scope, cut: Cut, consistency_from: Option<u64>) -> ExportOptions {
    ExportOptions {
        scope,
        signer: None,
        runtime_version: "test".into(),
        exported_at: "2026-03-01T00:00:00Z".parse().unwrap(),
        progress: false,
        verify_stored: true,
        cut,
        consistency_from,
    }
}

async fn bundle(db: &TestDb, scope: Scope, consistency_from: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    export(
        &db.database,
        &options(scope, Cut::Fresh(test_key()), consistency_from),
        &mut out,
    )
    .await
    .unwrap();
    out
}

fn trusted() -> VerifyOptions {
    VerifyOptions::trusting(test_key().public_key_hex())
}

fn verify(bytes: &[u8], options: &VerifyOptions) -> VerifyReport {
    verify_bundle(bytes, options).unwrap()
}

fn since_a(a: &Checkpoint) -> VerifyOptions {
    VerifyOptions {
        old_checkpoint: Some(a.clone()),
        ..trusted()
    }
}

fn kinds(report: &VerifyReport) -> Vec<FindingKind> {
    report.findings.iter().map(|f| f.kind).collect()
}

/// Checkpoint A: the tree caught up and signed now.
async fn checkpoint(db: &TestDb) -> Checkpoint {
    let store = AuditStore::new(&db.database);
    store.catch_up().await.unwrap();
    store.checkpoint_now(&test_key()).await.unwrap().unwrap()
}

async fn exec(db: &TestDb, sql: &str) {
    match &db.database {
        engine::Database::Postgres(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
        engine::Database::Sqlite { pool, .. } => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
    }
}

fn t(db: &TestDb, name: &str) -> String {
    match &db.database {
        engine::Database::Postgres(_) => format!("runtime.{name}"),
        engine::Database::Sqlite { .. } => format!("runtime_{name}"),
    }
}

/// The insider's tree reset: the tree and its checkpoints dropped, so the runtime rebuilds the
/// tree over the rewritten journal (same journal id and redaction key) and signs it.
async fn reset_tree(db: &TestDb) {
    for table in ["audit_tree_tiles", "audit_checkpoints"] {
        exec(db, &format!("DELETE FROM {}", t(db, table))).await;
    }
    exec(
        db,
        &format!(
            "UPDATE {} SET tree_size = 0, cursor_transaction = 0, cursor_position = 0",
            t(db, "audit_tree")
        ),
    )
    .await;
}

type Row = (i64, String, String, String, String);

/// Rewrites one run event's payload text (`from` → `to`) and recomputes the content and chain hashes
/// of it and every later event of its aggregate, as someone with write access would.
async fn rewrite_event(db: &TestDb, aggregate_id: &str, from: &str, to: &str) {
    let select = "SELECT sequence, aggregate_type, event_type, event_version, payload FROM events WHERE aggregate_type = 'run' AND aggregate_id = $1 ORDER BY sequence";
    let meta = "SELECT metadata FROM events WHERE aggregate_type = 'run' AND aggregate_id = $1 AND sequence = $2";
    let (rows, metas): (Vec<Row>, Vec<String>) = match &db.database {
        engine::Database::Postgres(pool) => {
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT sequence, aggregate_type, event_type, event_version, payload::text FROM events WHERE aggregate_type = 'run' AND aggregate_id = $1 ORDER BY sequence",
            )
            .bind(aggregate_id)
            .fetch_all(pool)
            .await
            .unwrap();
            let mut metas = Vec::new();
            for r in &rows {
                metas.push(
                    sqlx::query_scalar::<_, String>(
                        "SELECT metadata::text FROM events WHERE aggregate_type = 'run' AND aggregate_id = $1 AND sequence = $2",
                    )
                    .bind(aggregate_id)
                    .bind(r.0)
                    .fetch_one(pool)
                    .await
                    .unwrap(),
                );
            }
            (rows, metas)
        }
        engine::Database::Sqlite { pool, .. } => {
            let rows: Vec<Row> = sqlx::query_as(select)
                .bind(aggregate_id)
                .fetch_all(pool)
                .await
                .unwrap();
            let mut metas = Vec::new();
            for r in &rows {
                metas.push(
                    sqlx::query_scalar::<_, String>(meta)
                        .bind(aggregate_id)
                        .bind(r.0)
                        .fetch_one(pool)
                        .await
                        .unwrap(),
                );
            }
            (rows, metas)
        }
    };
    let sequence = rows
        .iter()
        .find(|r| r.4.contains(from))
        .map(|r| r.0)
        .expect("an event holds the text");
    let mut prev: Option<String> = None;
    for ((seq, aggregate_type, event_type, event_version, payload), metadata) in
        rows.into_iter().zip(metas)
    {
        let payload = if seq == sequence {
            assert!(payload.contains(from), "the event holds {from:?}");
            payload.replace(from, to)
        } else {
            payload
        };
        let payload_value: Value = serde_json::from_str(&payload).unwrap();
        let mut metadata: Value = serde_json::from_str(&metadata).unwrap();
        let (content, link) = chain::link(
            prev.as_deref(),
            &EventContent {
                aggregate_type: &aggregate_type,
                aggregate_id,
                sequence: seq as u64,
                event_type: &event_type,
                event_version: &event_version,
                payload: &payload_value,
                metadata: &metadata,
            },
        );
        metadata[chain::CONTENT_HASH_KEY] = json!(content);
        metadata[chain::CHAIN_HASH_KEY] = json!(link);
        prev = Some(link);
        if seq < sequence {
            continue;
        }
        let metadata = metadata.to_string();
        match &db.database {
            engine::Database::Postgres(pool) => {
                sqlx::query("UPDATE events SET payload = $1::json, metadata = $2::json WHERE aggregate_type = 'run' AND aggregate_id = $3 AND sequence = $4")
                    .bind(&payload).bind(&metadata).bind(aggregate_id).bind(seq)
                    .execute(pool).await.unwrap();
            }
            engine::Database::Sqlite { pool, .. } => {
                sqlx::query("UPDATE events SET payload = $1, metadata = $2 WHERE aggregate_type = 'run' AND aggregate_id = $3 AND sequence = $4")
                    .bind(&payload).bind(&metadata).bind(aggregate_id).bind(seq)
                    .execute(pool).await.unwrap();
            }
        }
    }
}

/// Replaces the bundle's checkpoint (header and manifest) and recomputes `bundle_sha256`: what
/// someone who edits a bundle can always do.
fn with_checkpoint(bytes: &[u8], checkpoint: &Checkpoint) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cp = serde_json::to_value(checkpoint).unwrap();
    lines[0]["checkpoint"] = cp.clone();
    let last = lines.len() - 1;
    lines[last]["checkpoint"] = cp;
    let mut out = Vec::new();
    let mut hasher = PrefixedSha256::new();
    for line in &lines[..last] {
        let mut bytes = serde_json::to_vec(line).unwrap();
        bytes.push(b'\n');
        hasher.update(&bytes);
        out.extend_from_slice(&bytes);
    }
    let mut manifest = lines[last].clone();
    manifest["bundle_sha256"] = json!(hasher.finish());
    out.extend_from_slice(&serde_json::to_vec(&manifest).unwrap());
    out.push(b'\n');
    out
}

on_both_backends!(
    bundles_of_every_scope_verify_against_a_trusted_checkpoint_and_nothing_else,
    an_insider_rewrite_fails_verify_against_an_earlier_checkpoint,
    deleted_and_reordered_events_fail_verify_against_an_earlier_checkpoint,
    resigned_and_forged_checkpoints_are_not_trusted,
    the_routes_serve_proofs_and_the_witness_alarms_on_a_rewrite,
);

async fn bundles_of_every_scope_verify_against_a_trusted_checkpoint_and_nothing_else(db: &TestDb) {
    seed_runs(db).await;
    let a = checkpoint(db).await;
    seed_raw(db, "later", 40, 8).await;
    for scope in [
        Scope::All,
        Scope::Run(aggregates::ids::RunId::parse("run_happy").unwrap()),
        Scope::Worker(aggregates::ids::WorkerId::parse("w-1").unwrap()),
        Scope::TimeRange {
            since: "2026-01-01T00:00:00Z".parse().unwrap(),
            until: "2027-01-01T00:00:00Z".parse().unwrap(),
        },
    ] {
        let bytes = bundle(db, scope.clone(), Some(a.tree_size)).await;
        let report = verify(&bytes, &since_a(&a));
        assert_eq!(report.findings, vec![], "{scope:?}");
        assert_eq!(report.events_proven, report.events, "{scope:?}");
        assert!(report.extends.is_some(), "{scope:?}");
        assert!(
            report.events > 0 || matches!(scope, Scope::Worker(_)),
            "{scope:?}"
        );
        // Trust nothing by default: no trusted key, or another one, and the bundle fails.
        let untrusted = verify(&bytes, &VerifyOptions::default());
        assert!(
            kinds(&untrusted).contains(&FindingKind::Untrusted),
            "{scope:?}"
        );
        let other = AuditKey::from_hex(&"33".repeat(32)).unwrap();
        let wrong = verify(&bytes, &VerifyOptions::trusting(other.public_key_hex()));
        assert!(kinds(&wrong).contains(&FindingKind::Untrusted), "{scope:?}");
        // The old self-consistency check still passes, labelled.
        let integrity = verify(&bytes, &VerifyOptions::integrity_only());
        assert!(integrity.is_valid() && integrity.integrity_only);
    }
    // A run bundle without a consistency proof cannot show it extends A (and says how to).
    let bytes = bundle(
        db,
        Scope::Run(aggregates::ids::RunId::parse("run_happy").unwrap()),
        None,
    )
    .await;
    let report = verify(&bytes, &since_a(&a));
    assert_eq!(kinds(&report), vec![FindingKind::NotAppendOnly]);
    assert!(report.findings[0].message.contains("--consistency-from"));
    // A bundle with no checkpoint at all is not trusted.
    let mut out = Vec::new();
    export(
        &db.database,
        &options(Scope::All, Cut::IntegrityOnly, None),
        &mut out,
    )
    .await
    .unwrap();
    assert!(kinds(&verify(&out, &trusted())).contains(&FindingKind::Untrusted));
}

async fn an_insider_rewrite_fails_verify_against_an_earlier_checkpoint(db: &TestDb) {
    seed_runs(db).await;
    let a = checkpoint(db).await;
    let mut clean = openagents_runtime::replay::journal_check::DriftReport::default();
    openagents_runtime::replay::journal_check::check_audit_tree(&db.database, &mut clean)
        .await
        .unwrap();
    assert_eq!(clean.problems, Vec::<String>::new());
    rewrite_event(db, "run_happy", "list the files", "wipe the disks").await;
    // `replay --journal` names the rewritten event against the stored tree.
    let mut drift = openagents_runtime::replay::journal_check::DriftReport::default();
    openagents_runtime::replay::journal_check::check_audit_tree(&db.database, &mut drift)
        .await
        .unwrap();
    assert!(
        drift.problems.iter().any(|p| p.contains("run/run_happy#")),
        "{:?}",
        drift.problems
    );
    // The chain alone no longer tells: the rewritten history is self-consistent.
    let mut out = Vec::new();
    export(
        &db.database,
        &options(Scope::All, Cut::IntegrityOnly, None),
        &mut out,
    )
    .await
    .unwrap();
    let integrity = verify(&out, &VerifyOptions::integrity_only());
    assert!(
        !kinds(&integrity).contains(&FindingKind::ContentMismatch)
            && !kinds(&integrity).contains(&FindingKind::ChainBroken),
        "{:?}",
        integrity.findings
    );
    // The tree still holds the original leaf: the event is not in the checkpoint's tree.
    let run = bundle(
        db,
        Scope::Run(aggregates::ids::RunId::parse("run_happy").unwrap()),
        None,
    )
    .await;
    assert!(kinds(&verify(&run, &trusted())).contains(&FindingKind::NotInTree));
    // The insider also rebuilds the tree (the runtime then signs it): the bundle verifies on its
    // own, but not against A.
    reset_tree(db).await;
    seed_raw(db, "after", 10, 5).await;
    let b = checkpoint(db).await;
    assert!(b.tree_size > a.tree_size);
    // The rewrite left the receipt recorded in the journal when the run finished as it was: the
    // bundle names that (the verifier compares a recorded receipt with the events' whichever line
    // comes first), and, against A, that the journal does not extend it.
    let recorded_receipt_only = |report: &VerifyReport| {
        report
            .findings
            .iter()
            .filter(|f| f.kind != FindingKind::NotAppendOnly)
            .map(|f| {
                (
                    f.kind,
                    f.message
                        .contains("run run_happy: the receipt recorded in the journal"),
                )
            })
            .collect::<Vec<_>>()
            == vec![(FindingKind::ReceiptMismatch, true)]
    };
    let all = bundle(db, Scope::All, None).await;
    let report = verify(&all, &trusted());
    assert!(recorded_receipt_only(&report), "{:?}", report.findings);
    assert!(!report.has(FindingKind::NotAppendOnly));
    let report = verify(&all, &since_a(&a));
    assert!(recorded_receipt_only(&report), "{:?}", report.findings);
    assert!(
        report.has(FindingKind::NotAppendOnly),
        "{:?}",
        report.findings
    );
    let run = bundle(
        db,
        Scope::Run(aggregates::ids::RunId::parse("run_happy").unwrap()),
        Some(a.tree_size),
    )
    .await;
    let report = verify(&run, &since_a(&a));
    assert!(recorded_receipt_only(&report), "{:?}", report.findings);
    let append_only: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::NotAppendOnly)
        .collect();
    assert_eq!(append_only.len(), 1, "{:?}", report.findings);
    assert!(append_only[0].message.contains("does not extend"));
}

async fn deleted_and_reordered_events_fail_verify_against_an_earlier_checkpoint(db: &TestDb) {
    seed_runs(db).await;
    seed_raw(db, "tail", 6, 3).await;
    let a = checkpoint(db).await;
    // Delete the last three events (the newest aggregate's last three).
    exec(db, "DELETE FROM events WHERE aggregate_id = 'tail-1'").await;
    reset_tree(db).await;
    let b = checkpoint(db).await;
    assert_eq!(b.tree_size, a.tree_size - 3);
    let all = bundle(db, Scope::All, None).await;
    let report = verify(&all, &since_a(&a));
    assert_eq!(kinds(&report), vec![FindingKind::NotAppendOnly]);
    assert!(
        report.findings[0].message.contains("deleted"),
        "{}",
        report.findings[0]
    );
    // Reorder two events of different aggregates (their places in the commit order swapped).
    seed_raw(db, "more", 4, 2).await;
    let c = checkpoint(db).await;
    match &db.database {
        engine::Database::Postgres(_) => {
            exec(db, "UPDATE events SET transaction_id = CASE aggregate_id WHEN 'more-0' THEN (SELECT transaction_id FROM events WHERE aggregate_id = 'more-1' AND sequence = 1) ELSE (SELECT transaction_id FROM events WHERE aggregate_id = 'more-0' AND sequence = 1) END WHERE aggregate_id IN ('more-0', 'more-1')").await;
        }
        engine::Database::Sqlite { .. } => {
            // more-0 holds positions p, p+1 and more-1 p+2, p+3: swap them.
            exec(
                db,
                "UPDATE events SET position = position + 1000000 WHERE aggregate_id = 'more-0'",
            )
            .await;
            exec(
                db,
                "UPDATE events SET position = position - 2 WHERE aggregate_id = 'more-1'",
            )
            .await;
            exec(
                db,
                "UPDATE events SET position = position - 1000000 + 2 WHERE aggregate_id = 'more-0'",
            )
            .await;
        }
    }
    reset_tree(db).await;
    let d = checkpoint(db).await;
    assert_eq!(d.tree_size, c.tree_size);
    assert_ne!(d.root_hash, c.root_hash, "the reordering changed the tree");
    let all = bundle(db, Scope::All, None).await;
    assert_eq!(
        kinds(&verify(&all, &since_a(&c))),
        vec![FindingKind::NotAppendOnly]
    );
}

async fn resigned_and_forged_checkpoints_are_not_trusted(db: &TestDb) {
    seed_runs(db).await;
    let run = bundle(
        db,
        Scope::Run(aggregates::ids::RunId::parse("run_happy").unwrap()),
        None,
    )
    .await;
    let header: Value =
        serde_json::from_str(std::str::from_utf8(&run).unwrap().lines().next().unwrap()).unwrap();
    let cp = Checkpoint::from_json(&header["checkpoint"]).unwrap();
    assert_eq!(verify(&run, &trusted()).findings, vec![]);
    // Re-signed by another key (bundle hash recomputed): valid signature, untrusted signer.
    let other = AuditKey::from_hex(&"44".repeat(32)).unwrap();
    let resigned = with_checkpoint(&run, &cp.clone().signed(&other));
    let report = verify(&resigned, &trusted());
    assert_eq!(kinds(&report), vec![FindingKind::Untrusted]);
    assert!(report.findings[0].message.contains("not a trusted key"));
    // A forged checkpoint: another root under the real signature.
    let mut forged = cp.clone();
    forged.root_hash = "00".repeat(32);
    let report = verify(&with_checkpoint(&run, &forged), &trusted());
    assert!(kinds(&report).contains(&FindingKind::Untrusted));
    assert!(report.findings[0].message.contains("signature"));
    // A bundle cut against a forged (larger, self-signed) checkpoint with its own proofs still
    // fails: the signer is not trusted.
    let mut larger = cp;
    larger.tree_size += 5;
    let report = verify(&with_checkpoint(&run, &larger.signed(&other)), &trusted());
    assert!(kinds(&report).contains(&FindingKind::Untrusted));
}

/// A server with the audit routes and the tree maintainer (checkpoints every 5 events or 200 ms).
pub async fn spawn_audited(db: &TestDb) -> (String, tokio_util::sync::CancellationToken) {
    let config = RuntimeConfig::new(
        database_config(db),
        db.data_dir.clone().unwrap_or_else(std::env::temp_dir),
        secret(),
    );
    let app = App::new(config, db.database.clone(), Stamps::system());
    let server = Server::bind(app.clone()).await.unwrap();
    let server = openagents_runtime::audit::http::with_artifacts_audited(
        server,
        &app,
        None,
        Some(test_key()),
    );
    let server = openagents_runtime::audit::log::with_audit_log(
        server,
        &app,
        test_key(),
        engine::audit_log::store::MaintainerConfig {
            checkpoint_every_events: 5,
            checkpoint_every: Duration::from_millis(200),
            poll: Duration::from_millis(50),
            settle: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let base = format!("http://{}", server.local_addr());
    let shutdown = app.shutdown_token().clone();
    tokio::spawn(server.run_until_stopped());
    (base, shutdown)
}

pub async fn get(base: &str, path: &str, claims: engine::auth::InternalClaims) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("x-oa-runtime-signature", token(&claims))
        .header("x-oa-user-id", claims.user_id.clone().unwrap_or_default())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_for_checkpoint(db: &TestDb, size: u64) -> Checkpoint {
    let store = AuditStore::new(&db.database);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(cp) = store.latest_checkpoint().await.unwrap() {
            if cp.tree_size >= size {
                return cp;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of {size}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn the_routes_serve_proofs_and_the_witness_alarms_on_a_rewrite(db: &TestDb) {
    seed_runs(db).await;
    let events = crate::support::read_all_settled(&db.database.journal())
        .await
        .len() as u64;
    let (base, shutdown) = spawn_audited(db).await;
    let a = wait_for_checkpoint(db, events).await;
    let operator = || engine::auth::InternalClaims {
        oa_role: Some(engine::auth::OPERATOR_ROLE.into()),
        ..claims()
    };
    // Checkpoints and the key.
    let (status, latest) = get(&base, "/internal/v1/audit/checkpoints/latest", claims()).await;
    assert_eq!(status, 200);
    Checkpoint::from_json(&latest)
        .unwrap()
        .verify(&[test_key().public_key_hex()])
        .unwrap();
    let (status, body) = get(
        &base,
        &format!("/internal/v1/audit/checkpoints/{}", a.tree_size),
        claims(),
    )
    .await;
    assert_eq!(
        (status, body["tree_size"].as_u64()),
        (200, Some(a.tree_size))
    );
    let (status, body) = get(&base, "/internal/v1/audit/checkpoints/abc", claims()).await;
    assert_eq!(
        (status, body["error"]["details"]["reason"].as_str()),
        (400, Some("invalid_tree_size"))
    );
    let (status, body) = get(&base, "/internal/v1/audit/checkpoints/999999", claims()).await;
    assert_eq!(
        (status, body["error"]["details"]["reason"].as_str()),
        (404, Some("checkpoint_not_found"))
    );
    // Inclusion: only the owner (user 1 owns run_happy? the fixture's owner) or an operator.
    let path = format!("/internal/v1/audit/proof/inclusion?aggregate_type=run&aggregate_id=run_happy&sequence=2&tree_size={}", a.tree_size);
    let (status, body) = get(&base, &path, operator()).await;
    assert_eq!(status, 200, "{body}");
    let proof: Vec<[u8; 32]> = body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| engine::audit_log::merkle::parse_hash(h.as_str().unwrap()).unwrap())
        .collect();
    let leaf = engine::audit_log::merkle::parse_hash(body["leaf_hash"].as_str().unwrap()).unwrap();
    engine::audit_log::merkle::verify_inclusion(
        &leaf,
        body["leaf_index"].as_u64().unwrap(),
        a.tree_size,
        &proof,
        &a.root().unwrap(),
    )
    .unwrap();
    let stranger = engine::auth::InternalClaims {
        user_id: Some("999".into()),
        ..claims()
    };
    let (status, body) = get(&base, &path, stranger).await;
    assert_eq!(
        (status, body["error"]["details"]["reason"].as_str()),
        (403, Some("not_owner"))
    );
    let (status, _) = get(
        &base,
        "/internal/v1/audit/proof/inclusion?aggregate_type=run",
        operator(),
    )
    .await;
    assert_eq!(status, 400);
    // Consistency between two checkpoints.
    seed_raw(db, "w", 12, 3).await;
    let b = wait_for_checkpoint(db, a.tree_size + 12).await;
    let (status, body) = get(
        &base,
        &format!(
            "/internal/v1/audit/proof/consistency?from={}&to={}",
            a.tree_size, b.tree_size
        ),
        claims(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let proof: Vec<[u8; 32]> = body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| engine::audit_log::merkle::parse_hash(h.as_str().unwrap()).unwrap())
        .collect();
    engine::audit_log::merkle::verify_consistency(
        a.tree_size,
        b.tree_size,
        &a.root().unwrap(),
        &b.root().unwrap(),
        &proof,
    )
    .unwrap();
    let (status, body) = get(
        &base,
        &format!(
            "/internal/v1/audit/proof/consistency?from={}&to={}",
            b.tree_size, a.tree_size
        ),
        claims(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["details"]["reason"].as_str()),
        (400, Some("invalid_tree_size"))
    );
    // The witness: first sight, then an extension, then the insider's rewrite.
    let dir = tempfile::tempdir().unwrap();
    let witness = || WitnessArgs {
        url: base.clone(),
        state: dir.path().join("witness.json"),
        trusted_keys: vec![test_key().public_key_hex()],
        signature_secret: TEST_SECRET.into(),
        interval_ms: 100,
        once: true,
    };
    run_witness(witness()).await.unwrap();
    seed_raw(db, "x", 6, 3).await;
    wait_for_checkpoint(db, b.tree_size + 6).await;
    run_witness(witness()).await.unwrap();
    let seen: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("witness.json")).unwrap()).unwrap();
    assert_eq!(
        seen["checkpoint"]["tree_size"].as_u64(),
        Some(b.tree_size + 6)
    );
    rewrite_event(db, "run_happy", "list the files", "wipe the disks").await;
    reset_tree(db).await;
    seed_raw(db, "y", 6, 3).await;
    wait_for_checkpoint(db, b.tree_size + 12).await;
    let alarm = run_witness(witness()).await.unwrap_err().to_string();
    assert!(
        alarm.contains("ALARM") && alarm.contains("does not extend"),
        "{alarm}"
    );
    assert!(
        alarm.contains(&format!("tree_size {}", b.tree_size + 6)),
        "{alarm}"
    );
    shutdown.cancel();
}
