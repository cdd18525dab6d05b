//! The nonce store behind internal signature auth, on both backends: single use across processes
//! (two independent pools on one database), pruning of expired nonces, and the commands whose
//! nonce rides in their own append (docs/adr/0118): spent with the command, spent without one when
//! nothing is appended, and one effect per token however many requests (in one process or two)
//! carry it at once.

use engine::auth::{AuthError, InternalClaims, NonceStore};
use engine::testing::TestDb;
use serde_json::json;

use crate::app::{claims, database_config, spawn_app, spawn_app_on, token, Options, TestApp};
use crate::support::{on_both_backends, read_all_settled};

on_both_backends!(
    a_nonce_is_single_use_across_processes,
    expired_nonces_are_pruned_and_live_ones_kept,
    a_command_spends_its_token_in_its_own_append,
    a_command_that_appends_nothing_still_spends_its_token,
    one_token_sent_many_times_at_once_has_one_effect,
    one_token_sent_to_two_processes_at_once_has_one_effect,
);

async fn a_nonce_is_single_use_across_processes(db: &TestDb) {
    let first = NonceStore::new(db.database.clone());
    // A second process: its own pool (and, for SQLite, its own writer lock) on the same database.
    let other_pool = engine::Database::connect(&database_config(db))
        .await
        .unwrap();
    let second = NonceStore::new(other_pool.clone());
    first.consume("nonce-1", 2_000, 1_000).await.unwrap();
    assert!(matches!(
        second.consume("nonce-1", 2_000, 1_000).await,
        Err(AuthError::Replayed)
    ));
    assert!(matches!(
        first.consume("nonce-1", 2_000, 1_000).await,
        Err(AuthError::Replayed)
    ));
    second.consume("nonce-2", 2_000, 1_000).await.unwrap();
    other_pool.close().await;
}

async fn expired_nonces_are_pruned_and_live_ones_kept(db: &TestDb) {
    let store = NonceStore::new(db.database.clone());
    store.consume("old-1", 1_000, 900).await.unwrap();
    store.consume("old-2", 1_500, 900).await.unwrap();
    store.consume("live", 5_000, 900).await.unwrap();
    assert_eq!(store.prune(2_000).await.unwrap(), 2);
    assert_eq!(store.prune(2_000).await.unwrap(), 0);
    // The live nonce is still remembered; a pruned one could be stored again (its token would
    // fail the time check long before that matters).
    assert!(matches!(
        store.consume("live", 5_000, 2_000).await,
        Err(AuthError::Replayed)
    ));
    store.consume("old-1", 9_000, 2_000).await.unwrap();
}

async fn nonce_rows(db: &TestDb, nonce: &str) -> i64 {
    match &db.database {
        engine::Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM runtime.auth_nonces WHERE nonce = $1")
                .bind(nonce)
                .fetch_one(pool)
                .await
        }
        engine::Database::Sqlite { pool, .. } => {
            sqlx::query_scalar("SELECT count(*) FROM runtime_auth_nonces WHERE nonce = $1")
                .bind(nonce)
                .fetch_one(pool)
                .await
        }
    }
    .unwrap()
}

/// Events of aggregate `id` in the journal.
async fn events_of(db: &TestDb, id: &str) -> usize {
    read_all_settled(&db.database.journal())
        .await
        .iter()
        .filter(|e| e.event.aggregate_id == id)
        .count()
}

fn frame_body(frame: &str) -> serde_json::Value {
    json!({"thread_id": "thread_1", "frame_id": frame, "type": "text_delta",
           "payload": {"delta": frame}})
}

async fn a_command_spends_its_token_in_its_own_append(db: &TestDb) {
    let app = spawn_app(db).await;
    let claims = claims();
    let once = token(&claims);
    let body = json!({"run_id": "run_nonce_1", "thread_id": "thread_1"});
    let created = app
        .post("/internal/v1/runs", body.clone())
        .token(Some(&once))
        .send()
        .await;
    assert!(created.status < 300, "{}", created.text);
    assert_eq!(nonce_rows(db, &claims.nonce).await, 1);
    // The same request again, and the token on another route: refused, nothing appended.
    let again = app
        .post("/internal/v1/runs", body)
        .token(Some(&once))
        .send()
        .await;
    again.assert_error(401, "unauthorized");
    assert_eq!(again.reason(), "replayed_nonce");
    let frame = app
        .post("/internal/v1/runs/run_nonce_1/frames", frame_body("f1"))
        .token(Some(&once))
        .send()
        .await;
    assert_eq!(frame.reason(), "replayed_nonce");
    let read = app
        .get("/internal/v1/runs/run_nonce_1/snapshot?thread_id=thread_1")
        .token(Some(&once))
        .send()
        .await;
    assert_eq!(read.reason(), "replayed_nonce");
    assert_eq!(events_of(db, "run_nonce_1").await, 1);
    app.shutdown().await.unwrap();
}

async fn a_command_that_appends_nothing_still_spends_its_token(db: &TestDb) {
    let app = spawn_app(db).await;
    // Rejected: finishing a run that does not exist.
    let claims_a = claims();
    let rejected = token(&claims_a);
    let missing = app
        .post(
            "/internal/v1/runs/run_nonce_none/finish",
            json!({"thread_id": "thread_1", "status": "succeeded"}),
        )
        .token(Some(&rejected))
        .send()
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert_eq!(nonce_rows(db, &claims_a.nonce).await, 1);
    let replayed = app
        .post(
            "/internal/v1/runs/run_nonce_none/finish",
            json!({"thread_id": "thread_1", "status": "succeeded"}),
        )
        .token(Some(&rejected))
        .send()
        .await;
    assert_eq!(replayed.reason(), "replayed_nonce");

    // Refused before its handler (a token bound to another run): spent as well.
    let claims_r = claims();
    let bound = token(&InternalClaims {
        run_id: Some("run_other".into()),
        ..claims_r.clone()
    });
    let refused = app
        .post(
            "/internal/v1/runs/run_nonce_none/cancel",
            json!({"thread_id": "thread_1"}),
        )
        .token(Some(&bound))
        .send()
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(nonce_rows(db, &claims_r.nonce).await, 1);

    // Unchanged (a re-sent frame) and an idempotent replay append nothing either.
    assert!(app.text_delta("run_nonce_2", "f1", "f1").await.status < 300);
    let claims_b = claims();
    let resent = token(&claims_b);
    let unchanged = app
        .post("/internal/v1/runs/run_nonce_2/frames", frame_body("f1"))
        .token(Some(&resent))
        .send()
        .await;
    assert_eq!(unchanged.status, 200, "{}", unchanged.text);
    assert_eq!(nonce_rows(db, &claims_b.nonce).await, 1);
    let body = json!({"run_id": "run_nonce_3", "thread_id": "thread_1"});
    let first = app
        .post("/internal/v1/runs", body.clone())
        .idempotency_key("nonce-key")
        .send()
        .await;
    assert!(first.status < 300, "{}", first.text);
    let claims_c = claims();
    let retry = token(&claims_c);
    let replay = app
        .post("/internal/v1/runs", body.clone())
        .idempotency_key("nonce-key")
        .token(Some(&retry))
        .send()
        .await;
    assert!(replay.status < 300, "{}", replay.text);
    assert_eq!(nonce_rows(db, &claims_c.nonce).await, 1);
    let again = app
        .post("/internal/v1/runs", body)
        .idempotency_key("nonce-key")
        .token(Some(&retry))
        .send()
        .await;
    assert_eq!(again.reason(), "replayed_nonce");
    app.shutdown().await.unwrap();
}

/// Sends the same token with the same frame `copies` times at once, spread over `apps`.
async fn race(apps: &[&TestApp], run: &str, frame: &str, copies: usize) -> Vec<(u16, String)> {
    let once = token(&claims());
    let path = format!("/internal/v1/runs/{run}/frames");
    let requests = (0..copies).map(|i| {
        apps[i % apps.len()]
            .post(&path, frame_body(frame))
            .token(Some(&once))
            .send()
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| (r.status, r.reason().to_owned()))
        .collect()
}

fn assert_one_effect(results: &[(u16, String)]) {
    let accepted = results.iter().filter(|(s, _)| *s < 300).count();
    assert_eq!(accepted, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(s, r)| *s < 300 || (*s == 401 && r == "replayed_nonce")),
        "{results:?}"
    );
}

async fn one_token_sent_many_times_at_once_has_one_effect(db: &TestDb) {
    let app = spawn_app(db).await;
    assert!(app.text_delta("run_nonce_race", "f0", "x").await.status < 300);
    // Different frames per round so that each accepted copy is one more event.
    for round in 0..10 {
        let results = race(&[&app], "run_nonce_race", &format!("f{}", round + 1), 8).await;
        assert_one_effect(&results);
    }
    // created + f0 + ten accepted frames.
    assert_eq!(events_of(db, "run_nonce_race").await, 12);
    app.shutdown().await.unwrap();
}

async fn one_token_sent_to_two_processes_at_once_has_one_effect(db: &TestDb) {
    let first = spawn_app(db).await;
    let other = engine::Database::connect(&database_config(db))
        .await
        .unwrap();
    let second = spawn_app_on(db, other.clone(), Options::default()).await;
    assert!(first.text_delta("run_nonce_2p", "f0", "x").await.status < 300);
    for round in 0..20 {
        let results = race(
            &[&first, &second],
            "run_nonce_2p",
            &format!("f{}", round + 1),
            4,
        )
        .await;
        assert_one_effect(&results);
    }
    assert_eq!(events_of(db, "run_nonce_2p").await, 22);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    other.close().await;
}
