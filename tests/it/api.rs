//! The HTTP command API, end to end over real HTTP against a real journal (both backends): the
//! original contract's routes and codes, the additive routes, auth, bad input and idempotency.

use engine::testing::TestDb;
use serde_json::json;

use crate::app::{claims, spawn_app, spawn_app_with, token, Options};
use crate::support::on_both_backends;

on_both_backends!(
    health_answers_only_with_a_valid_single_use_signature,
    ops_endpoints_report_liveness_readiness_and_metrics,
    a_run_goes_through_its_lifecycle_over_http,
    a_frame_for_an_unknown_run_creates_it_for_the_caller,
    ownership_and_token_claims_are_enforced,
    client_mistakes_get_the_error_envelope_and_write_nothing,
    idempotency_keys_replay_the_original_response,
    a_resent_frame_or_request_answers_with_the_seq_it_got,
    a_path_segment_that_is_not_utf8_gets_the_error_envelope,
    run_streams_follow_the_cursor_rules,
    a_long_run_streams_across_pages_without_gap_or_early_done,
    a_stream_without_cursor_waits_for_new_events,
    a_worker_goes_through_its_lifecycle_over_http,
    worker_streams_replay_and_resume,
    runs_and_workers_are_listed_for_their_owner,
    a_tenant_from_the_token_is_recorded_and_enforced,
    the_openapi_document_describes_every_route,
    text_limits_count_characters_as_the_document_says,
    trace_headers_reach_the_event_metadata,
);

async fn health_answers_only_with_a_valid_single_use_signature(db: &TestDb) {
    let app = spawn_app(db).await;
    let ok = app.get("/internal/v1/health").send().await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json["status"], "ok");
    assert_eq!(ok.json["service"], "openagents-runtime");
    assert_eq!(ok.json["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        ok.header("x-request-id").is_some(),
        "a request id is generated"
    );

    let missing = app.get("/internal/v1/health").token(None).send().await;
    missing.assert_error(401, "unauthorized");
    assert_eq!(missing.reason(), "missing_token");

    for (bad, reason) in [
        ("garbage", "malformed_token"),
        ("v1.abc", "malformed_token"),
        ("v2.a.b", "malformed_token"),
    ] {
        let response = app.get("/internal/v1/health").token(Some(bad)).send().await;
        response.assert_error(401, "unauthorized");
        assert_eq!(response.reason(), reason, "{bad}");
    }

    let other_secret = engine::auth::SigningSecret::new("a-completely-different-secret").unwrap();
    let forged = engine::auth::mint(&other_secret, &claims());
    let response = app
        .get("/internal/v1/health")
        .token(Some(&forged))
        .send()
        .await;
    response.assert_error(401, "unauthorized");
    assert_eq!(response.reason(), "bad_signature");

    let mut expired = claims();
    expired.iat -= 3_600;
    expired.exp = expired.iat + 60;
    let response = app
        .get("/internal/v1/health")
        .token(Some(&token(&expired)))
        .send()
        .await;
    assert_eq!(response.reason(), "expired");

    let mut future = claims();
    future.iat += 600;
    future.exp += 600;
    let response = app
        .get("/internal/v1/health")
        .token(Some(&token(&future)))
        .send()
        .await;
    assert_eq!(response.reason(), "not_yet_valid");

    // A nonce is single use, also across routes and for a request that fails later.
    let once = token(&claims());
    assert_eq!(
        app.get("/internal/v1/health")
            .token(Some(&once))
            .send()
            .await
            .status,
        200
    );
    let replayed = app
        .get("/internal/v1/health")
        .token(Some(&once))
        .send()
        .await;
    replayed.assert_error(401, "unauthorized");
    assert_eq!(replayed.reason(), "replayed_nonce");
    let replayed = app
        .post("/internal/v1/runs", json!({"thread_id": "t"}))
        .token(Some(&once))
        .send()
        .await;
    assert_eq!(replayed.reason(), "replayed_nonce");
}

async fn ops_endpoints_report_liveness_readiness_and_metrics(db: &TestDb) {
    let app = spawn_app(db).await;
    let live = app.get("/healthz").token(None).send().await;
    assert_eq!(live.status, 200);
    let ready = app.get("/readyz").token(None).send().await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["status"], "ready");
    assert_eq!(ready.json["journal"], db.database.backend_name());
    app.running_run("run_metrics").await;
    app.text_delta("run_metrics", "f1", "x").await;
    app.text_delta("run_metrics", "f1", "y").await; // conflict
    let metrics = app.get("/metrics").token(None).send().await;
    assert_eq!(metrics.status, 200);
    for name in [
        "runtime_commands_total",
        "runtime_command_duration_seconds",
        "runtime_api_conflicts_total",
        "http_requests_total",
    ] {
        assert!(metrics.text.contains(name), "{name} missing from /metrics");
    }
}

async fn a_run_goes_through_its_lifecycle_over_http(db: &TestDb) {
    let app = spawn_app(db).await;
    let created = app.create_run("run_life", "thread_1").await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["run_id"], "run_life");
    assert_eq!(created.json["runId"], "run_life");
    assert_eq!(created.json["status"], "created");
    assert_eq!(created.json["idempotentReplay"], false);
    let again = app.create_run("run_life", "thread_1").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["idempotentReplay"], true);
    let other_thread = app.create_run("run_life", "thread_2").await;
    other_thread.assert_error(409, "conflict");
    assert_eq!(other_thread.reason(), "run_exists");

    assert_eq!(app.start_run("run_life", "thread_1").await.status, 202);
    let restart = app.start_run("run_life", "thread_1").await;
    assert_eq!(restart.status, 200);
    assert_eq!(restart.json["status"], "running");

    let first = app
        .append_frame(
            "run_life",
            "thread_1",
            "frm_1",
            "user_message",
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(
        first.json,
        json!({"run_id": "run_life", "runId": "run_life", "frame_id": "frm_1", "frameId": "frm_1",
               "status": "accepted", "seq": 2, "idempotent_replay": false, "idempotentReplay": false})
    );
    let duplicate = app
        .append_frame(
            "run_life",
            "thread_1",
            "frm_1",
            "user_message",
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(duplicate.status, 200);
    assert_eq!(duplicate.json["idempotentReplay"], true);
    assert_eq!(duplicate.json["status"], "accepted");
    let conflicting = app
        .append_frame(
            "run_life",
            "thread_1",
            "frm_1",
            "user_message",
            json!({"text": "bye"}),
        )
        .await;
    conflicting.assert_error(409, "conflict");
    assert_eq!(conflicting.reason(), "frame_conflict");
    assert_eq!(
        app.text_delta("run_life", "frm_2", "Hel").await.json["seq"],
        3
    );

    let snapshot = app.run_snapshot("run_life", "thread_1").await;
    assert_eq!(snapshot.status, 200);
    assert_eq!(snapshot.json["runId"], "run_life");
    assert_eq!(snapshot.json["threadId"], "thread_1");
    assert_eq!(snapshot.json["status"], "running");
    assert_eq!(snapshot.json["latestSeq"], 3);
    assert!(snapshot.json["updatedAt"].is_string());

    let cancel = app
        .cancel_run("run_life", "thread_1", "user requested stop")
        .await;
    assert_eq!(cancel.status, 202);
    assert_eq!(
        cancel.json,
        json!({"run_id": "run_life", "runId": "run_life", "status": "canceling",
               "cancel_requested": true, "cancelRequested": true,
               "idempotent_replay": false, "idempotentReplay": false})
    );
    let cancel_again = app.cancel_run("run_life", "thread_1", "again").await;
    assert_eq!(cancel_again.status, 200);
    assert_eq!(cancel_again.json["idempotentReplay"], true);

    let succeed = app.finish_run("run_life", "thread_1", "succeeded").await;
    succeed.assert_error(409, "conflict");
    assert_eq!(succeed.reason(), "cancel_requested");
    let finished = app.finish_run("run_life", "thread_1", "canceled").await;
    assert_eq!(finished.status, 202);
    assert_eq!(finished.json["status"], "canceled");

    // Late results never reopen a terminal run.
    let late = app.text_delta("run_life", "frm_late", "late").await;
    late.assert_error(409, "conflict");
    assert_eq!(late.reason(), "run_terminal");
    let snapshot = app.run_snapshot("run_life", "thread_1").await;
    assert_eq!(snapshot.json["status"], "canceled");
    assert_eq!(snapshot.json["latestSeq"], 5);

    // Illegal transitions on a fresh run are conflicts with a precise reason.
    app.create_run("run_fresh", "thread_1").await;
    let premature = app.finish_run("run_fresh", "thread_1", "succeeded").await;
    premature.assert_error(409, "conflict");
    assert_eq!(premature.reason(), "run_not_started");
    let not_requested = app.finish_run("run_fresh", "thread_1", "canceled").await;
    assert_eq!(not_requested.reason(), "cancel_not_requested");
}

async fn a_frame_for_an_unknown_run_creates_it_for_the_caller(db: &TestDb) {
    let app = spawn_app(db).await;
    let response = app
        .append_frame(
            "run_implicit",
            "thread_9",
            "f1",
            "user_message",
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text);
    assert_eq!(response.json["seq"], 1);
    let snapshot = app.run_snapshot("run_implicit", "thread_9").await;
    assert_eq!(snapshot.json["status"], "created");
    assert_eq!(snapshot.json["latestSeq"], 1);
    // It now belongs to user 1 and thread_9.
    let stranger = app
        .post(
            "/internal/v1/runs/run_implicit/frames",
            json!({"thread_id": "thread_9", "frame_id": "f2", "type": "text_delta", "payload": {"delta": "x"}}),
        )
        .user("2")
        .send()
        .await;
    stranger.assert_error(403, "forbidden");
    // An invalid frame for an unknown run creates nothing.
    let invalid = app
        .append_frame("run_never", "thread_9", "f1", "user_message", json!({}))
        .await;
    invalid.assert_error(400, "invalid_request");
    app.run_snapshot("run_never", "thread_9")
        .await
        .assert_error(404, "not_found");
    // Cancel, snapshot and stream do not create runs.
    app.cancel_run("run_missing", "thread_1", "x")
        .await
        .assert_error(404, "not_found");
    app.run_snapshot("run_missing", "thread_1")
        .await
        .assert_error(404, "not_found");
}

async fn ownership_and_token_claims_are_enforced(db: &TestDb) {
    let app = spawn_app(db).await;
    app.running_run("run_owned").await;
    let snapshot = "/internal/v1/runs/run_owned/snapshot?thread_id=thread_1";

    // Another user, a guest, or the wrong thread: 403.
    app.get(snapshot)
        .user("2")
        .send()
        .await
        .assert_error(403, "forbidden");
    app.get(snapshot)
        .guest("g1")
        .send()
        .await
        .assert_error(403, "forbidden");
    app.get("/internal/v1/runs/run_owned/snapshot?thread_id=thread_2")
        .send()
        .await
        .assert_error(403, "forbidden");
    app.post(
        "/internal/v1/runs/run_owned/cancel",
        json!({"thread_id": "thread_1"}),
    )
    .user("2")
    .send()
    .await
    .assert_error(403, "forbidden");
    app.get("/internal/v1/runs/run_owned/stream?thread_id=thread_1")
        .user("2")
        .send()
        .await
        .assert_error(403, "forbidden");

    // A body user_id is never trusted (and is an unknown field anyway).
    app.post(
        "/internal/v1/runs/run_owned/cancel",
        json!({"thread_id": "thread_1", "user_id": 1}),
    )
    .user("2")
    .send()
    .await
    .assert_error(400, "invalid_request");

    // Claims that contradict the request: 403.
    let response = app
        .get(snapshot)
        .claims(|c| c.run_id = Some("run_other".into()))
        .send()
        .await;
    response.assert_error(403, "forbidden");
    assert_eq!(response.json["error"]["details"]["claim"], "run_id");
    app.get(snapshot)
        .claims(|c| c.thread_id = Some("thread_other".into()))
        .send()
        .await
        .assert_error(403, "forbidden");
    app.post(
        "/internal/v1/runs/run_owned/cancel",
        json!({"thread_id": "thread_1"}),
    )
    .claims(|c| c.thread_id = Some("thread_other".into()))
    .send()
    .await
    .assert_error(403, "forbidden");
    let response = app
        .get(snapshot)
        .claims(|c| c.user_id = Some("9".into()))
        .send()
        .await;
    response.assert_error(403, "forbidden");
    assert_eq!(response.json["error"]["details"]["claim"], "user_id");
    // Matching claims pass.
    let bound = app
        .get(snapshot)
        .claims(|c| {
            c.run_id = Some("run_owned".into());
            c.thread_id = Some("thread_1".into());
        })
        .send()
        .await;
    assert_eq!(bound.status, 200, "{}", bound.text);

    // No principal at all: 401. The token's claims alone are a principal.
    app.get(snapshot)
        .no_principal()
        .send()
        .await
        .assert_error(401, "unauthorized");
    let from_claims = app
        .get(snapshot)
        .no_principal()
        .claims(|c| c.user_id = Some("1".into()))
        .send()
        .await;
    assert_eq!(from_claims.status, 200);
    app.get(snapshot)
        .no_principal()
        .header("x-oa-user-id", "bad id")
        .send()
        .await
        .assert_error(401, "unauthorized");

    // A token bound to a run creates that run when the body names none; another id is refused.
    let bound_create = app
        .post("/internal/v1/runs", json!({"thread_id": "thread_1"}))
        .claims(|c| c.run_id = Some("run_from_claim".into()))
        .send()
        .await;
    assert_eq!(bound_create.status, 201, "{}", bound_create.text);
    assert_eq!(bound_create.json["run_id"], "run_from_claim");
    app.post(
        "/internal/v1/runs",
        json!({"run_id": "run_x", "thread_id": "thread_1"}),
    )
    .claims(|c| c.run_id = Some("run_from_claim".into()))
    .send()
    .await
    .assert_error(403, "forbidden");

    // Guest-owned runs belong to the guest scope.
    let guest_run = app
        .post(
            "/internal/v1/runs",
            json!({"run_id": "run_guest", "thread_id": "thread_1"}),
        )
        .guest("guest_a")
        .send()
        .await;
    assert_eq!(guest_run.status, 201);
    let path = "/internal/v1/runs/run_guest/snapshot?thread_id=thread_1";
    assert_eq!(app.get(path).guest("guest_a").send().await.status, 200);
    app.get(path)
        .guest("guest_b")
        .send()
        .await
        .assert_error(403, "forbidden");
    app.get(path).send().await.assert_error(403, "forbidden");
}

async fn client_mistakes_get_the_error_envelope_and_write_nothing(db: &TestDb) {
    let app = spawn_app(db).await;
    app.running_run("run_bad").await;
    let frames = "/internal/v1/runs/run_bad/frames";
    let cases = [
        ("{\"thread_id\": ", "malformed_json"),
        ("[1, 2]", "not_an_object"),
        (
            r#"{"thread_id":"thread_1","frame_id":"f","type":"text_delta","payload":{"delta":"x"},"extra":1}"#,
            "invalid_body",
        ),
        (
            r#"{"thread_id":"thread_1","type":"text_delta","payload":{}}"#,
            "invalid_body",
        ),
        (
            r#"{"thread_id":"thread 1","frame_id":"f","type":"text_delta","payload":{"delta":"x"}}"#,
            "invalid_body",
        ),
        (
            r#"{"thread_id":"thread_1","frame_id":"f","type":"text_delta","payload":[1]}"#,
            "invalid_body",
        ),
    ];
    for (body, reason) in cases {
        let response = app
            .req(reqwest::Method::POST, frames)
            .raw(body, Some("application/json"))
            .send()
            .await;
        response.assert_error(400, "invalid_request");
        assert_eq!(response.reason(), reason, "{body}: {}", response.text);
    }
    let unknown = app
        .req(reqwest::Method::POST, frames)
        .raw(
            r#"{"thread_id":"thread_1","frame_id":"f","type":"text_delta","payload":{"delta":"x"},"user_id":"9"}"#,
            Some("application/json"),
        )
        .send()
        .await;
    assert!(unknown.text.contains("unknown field"), "{}", unknown.text);

    // Frame rules from the aggregate: 400 with the domain reason.
    let invalid_frame = app
        .append_frame(
            "run_bad",
            "thread_1",
            "f",
            "user_message",
            json!({"no_text": 1}),
        )
        .await;
    invalid_frame.assert_error(400, "invalid_request");
    assert_eq!(invalid_frame.reason(), "invalid_frame");
    // A frame may not pose as the run's own event (the stream and replay read `run.*` types as
    // lifecycle events).
    let posing = app
        .append_frame(
            "run_bad",
            "thread_1",
            "f2",
            "run.finished",
            json!({"status": "succeeded"}),
        )
        .await;
    posing.assert_error(400, "invalid_request");
    assert_eq!(posing.reason(), "invalid_frame");

    // Oversized bodies: 413 with the envelope.
    let huge = json!({"thread_id": "thread_1", "frame_id": "big", "type": "text_delta",
                      "payload": {"delta": "x".repeat(70 * 1024)}});
    let response = app.post(frames, huge).send().await;
    response.assert_error(413, "invalid_request");
    assert_eq!(response.reason(), "body_too_large");

    // Wrong content type: 415 with the envelope.
    let response = app
        .req(reqwest::Method::POST, frames)
        .raw(
            "thread_id=thread_1",
            Some("application/x-www-form-urlencoded"),
        )
        .send()
        .await;
    response.assert_error(415, "invalid_request");

    // Invalid ids in paths and queries name the field.
    let response = app
        .get("/internal/v1/runs/bad%20id/snapshot?thread_id=thread_1")
        .send()
        .await;
    response.assert_error(400, "invalid_request");
    assert_eq!(response.json["error"]["details"]["field"], "run_id");
    let response = app
        .get("/internal/v1/runs/run_bad/snapshot?thread_id=a%20b")
        .send()
        .await;
    assert_eq!(response.json["error"]["details"]["field"], "thread_id");
    let response = app.get("/internal/v1/runs/run_bad/snapshot").send().await;
    response.assert_error(400, "invalid_request");
    assert_eq!(response.json["error"]["message"], "thread_id is required");
    let long = "x".repeat(200);
    app.get(&format!("/internal/v1/codex/workers/{long}/snapshot"))
        .send()
        .await
        .assert_error(400, "invalid_request");

    // Unknown routes and methods.
    app.get("/internal/v1/nope")
        .send()
        .await
        .assert_error(404, "not_found");
    app.get("/nope")
        .token(None)
        .send()
        .await
        .assert_error(404, "not_found");
    app.req(reqwest::Method::DELETE, "/internal/v1/runs/run_bad/frames")
        .send()
        .await
        .assert_error(405, "invalid_request");

    // Nothing of the above reached the journal: still created + started.
    let snapshot = app.run_snapshot("run_bad", "thread_1").await;
    assert_eq!(snapshot.json["latestSeq"], 1, "{}", snapshot.text);
}

async fn idempotency_keys_replay_the_original_response(db: &TestDb) {
    let app = spawn_app(db).await;
    let body = json!({"thread_id": "thread_1", "metadata": {"k": "v"}});
    let first = app
        .post("/internal/v1/runs", body.clone())
        .idempotency_key("create-1")
        .send()
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let run_id = first.json["run_id"].as_str().unwrap().to_owned();
    assert!(run_id.starts_with("run_"));
    // The retry (even with keys in another order) returns the original response.
    let retry = app
        .req(reqwest::Method::POST, "/internal/v1/runs")
        .raw(
            r#"{"metadata": {"k": "v"}, "thread_id": "thread_1"}"#,
            Some("application/json"),
        )
        .idempotency_key("create-1")
        .send()
        .await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json, first.json);
    // The same key with another body is a conflict; other principals have their own keys.
    let reused = app
        .post("/internal/v1/runs", json!({"thread_id": "thread_2"}))
        .idempotency_key("create-1")
        .send()
        .await;
    reused.assert_error(409, "conflict");
    assert_eq!(reused.reason(), "idempotency_key_reused");
    let other_user = app
        .post("/internal/v1/runs", json!({"thread_id": "thread_2"}))
        .user("2")
        .idempotency_key("create-1")
        .send()
        .await;
    assert_eq!(other_user.status, 201);
    assert_ne!(other_user.json["run_id"], first.json["run_id"]);
    // A key on a command with effects: finish once, retry gets the original 202.
    app.start_run(&run_id, "thread_1").await;
    let finish = json!({"thread_id": "thread_1", "status": "succeeded"});
    let path = format!("/internal/v1/runs/{run_id}/finish");
    let done = app
        .post(&path, finish.clone())
        .idempotency_key("fin")
        .send()
        .await;
    assert_eq!(done.status, 202);
    let again = app.post(&path, finish).idempotency_key("fin").send().await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json, done.json);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // Malformed keys are rejected.
    app.post("/internal/v1/runs", json!({"thread_id": "t"}))
        .idempotency_key(&"k".repeat(300))
        .send()
        .await
        .assert_error(400, "invalid_request");
    // Exactly one run was created by the two create-1 requests of user 1.
    let listed = app.get("/internal/v1/runs?thread_id=thread_1").send().await;
    assert_eq!(listed.json["data"].as_array().unwrap().len(), 1);
    // The key is bound to the matched route with its decoded id: the same command through a
    // percent-encoded path is the same request; the same body for another run is not.
    let finish = json!({"thread_id": "thread_1", "status": "succeeded"});
    let encoded = format!(
        "/internal/v1/runs/{}/finish",
        run_id.replacen('_', "%5F", 1)
    );
    assert_ne!(encoded, path);
    let retry = app
        .post(&encoded, finish.clone())
        .idempotency_key("fin")
        .send()
        .await;
    assert_eq!(retry.status, 202, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json, done.json);
    app.post(
        "/internal/v1/runs",
        json!({"run_id": "run_other", "thread_id": "thread_1"}),
    )
    .send()
    .await;
    app.start_run("run_other", "thread_1").await;
    let other_run = app
        .post("/internal/v1/runs/run_other/finish", finish)
        .idempotency_key("fin")
        .send()
        .await;
    other_run.assert_error(409, "conflict");
    assert_eq!(other_run.reason(), "idempotency_key_reused");
}

/// Issue #15: a re-sent frame or worker request (a client retrying after a timeout) was answered
/// without the `seq` the original got, so the client could not learn where it landed.
async fn a_resent_frame_or_request_answers_with_the_seq_it_got(db: &TestDb) {
    let app = spawn_app(db).await;
    app.running_run("run_resend").await;
    assert_eq!(app.text_delta("run_resend", "f0", "a").await.status, 202);
    let first = app.text_delta("run_resend", "f1", "b").await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.json["seq"], 3);
    assert_eq!(app.text_delta("run_resend", "f2", "c").await.json["seq"], 4);
    let resent = app.text_delta("run_resend", "f1", "b").await;
    assert_eq!(resent.status, 200, "{}", resent.text);
    let mut expected = first.json.clone();
    expected["idempotent_replay"] = json!(true);
    expected["idempotentReplay"] = json!(true);
    assert_eq!(resent.json, expected);

    let worker = "w_resend";
    app.create_worker(json!({"worker_id": worker})).await;
    let request = app
        .worker_request(worker, "req_1", "turn/start", json!({"prompt": "hi"}))
        .await;
    assert_eq!(request.status, 200, "{}", request.text);
    assert_eq!(request.json["data"]["seq"], 2);
    app.worker_request(worker, "req_2", "turn/start", json!({}))
        .await;
    let resent = app
        .worker_request(worker, "req_1", "turn/start", json!({"prompt": "hi"}))
        .await;
    assert_eq!(resent.status, 200, "{}", resent.text);
    let mut expected = request.json.clone();
    expected["data"]["idempotent_replay"] = json!(true);
    expected["data"]["idempotentReplay"] = json!(true);
    assert_eq!(resent.json, expected);
}

/// Issue #15: a path segment that percent-decodes to invalid UTF-8 was answered in plain text
/// by axum's `Path` rejection instead of the JSON error envelope.
async fn a_path_segment_that_is_not_utf8_gets_the_error_envelope(db: &TestDb) {
    let app = spawn_app(db).await;
    for (method, path) in [
        ("GET", "/internal/v1/runs/%FF"),
        ("GET", "/internal/v1/runs/%FF/snapshot?thread_id=t"),
        ("GET", "/internal/v1/runs/%FF/stream?thread_id=t"),
        ("POST", "/internal/v1/runs/%FF/frames"),
        ("POST", "/internal/v1/runs/%C3%28/cancel"),
        ("GET", "/internal/v1/runs/%FF/receipt"),
        ("GET", "/internal/v1/runs/%FF/replay"),
        ("GET", "/internal/v1/runs/%FF/audit-bundle"),
        ("GET", "/internal/v1/audit/checkpoints/%FF"),
        ("GET", "/internal/v1/codex/workers/%FF/snapshot"),
        ("POST", "/internal/v1/codex/workers/%FF/heartbeat"),
        ("GET", "/console/assets/%FF"),
        ("GET", "/%FF"),
    ] {
        let request = if method == "GET" {
            app.get(path)
        } else {
            app.post(path, json!({}))
        };
        let response = request.send().await;
        response.assert_error(400, "invalid_request");
        assert_eq!(response.reason(), "invalid_path", "{method} {path}");
    }
}

async fn run_streams_follow_the_cursor_rules(db: &TestDb) {
    let app = spawn_app_with(
        db,
        Options {
            configure: Box::new(|c| c.http.stream_replay_window = Some(3)),
            ..Options::default()
        },
    )
    .await;
    app.running_run("run_s").await; // seq 1 = run.started
    for i in 1..=3 {
        app.text_delta("run_s", &format!("f{i}"), &format!("d{i}"))
            .await;
    }
    // seq 2..4 = frames
    let (response, events) = app.run_stream("run_s", "cursor=1&tail_ms=50").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/event-stream"),
        "{:?}",
        response.headers
    );
    let ids: Vec<_> = events.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(ids, ["2", "3", "4"]);
    assert_eq!(events[0].event.as_deref(), Some("run.event"));
    let first = events[0].json();
    assert_eq!(first["runId"], "run_s");
    assert_eq!(first["seq"], 2);
    assert_eq!(first["type"], "text_delta");
    assert_eq!(first["payload"], json!({"delta": "d1"}));

    // Last-Event-ID resumes after that seq; equal to ?cursor is fine, different is 400.
    let response = app
        .get("/internal/v1/runs/run_s/stream?thread_id=thread_1&tail_ms=50")
        .header("last-event-id", "3")
        .send()
        .await;
    let ids: Vec<_> = crate::app::parse_sse(&response.text)
        .into_iter()
        .filter_map(|e| e.id)
        .collect();
    assert_eq!(ids, ["4"]);
    let both = app
        .get("/internal/v1/runs/run_s/stream?thread_id=thread_1&tail_ms=50&cursor=3")
        .header("last-event-id", "3")
        .send()
        .await;
    assert_eq!(both.status, 200);
    app.get("/internal/v1/runs/run_s/stream?thread_id=thread_1&cursor=2")
        .header("last-event-id", "3")
        .send()
        .await
        .assert_error(400, "invalid_request");
    for bad in [
        "tail_ms=0",
        "tail_ms=abc",
        "tail_ms=-1",
        "cursor=x",
        "cursor=-3",
    ] {
        app.get(&format!(
            "/internal/v1/runs/run_s/stream?thread_id=thread_1&{bad}"
        ))
        .send()
        .await
        .assert_error(400, "invalid_request");
    }
    // Below the retention floor (latest 4, window 3 → floor 1): 410 stale_cursor.
    let stale = app
        .get("/internal/v1/runs/run_s/stream?thread_id=thread_1&cursor=0")
        .send()
        .await;
    stale.assert_error(410, "stale_cursor");
    assert_eq!(stale.json["error"]["details"]["retention_floor"], 1);

    // A terminal run ends with data: [DONE] right after its last event, without waiting.
    app.finish_run("run_s", "thread_1", "failed").await;
    let started = std::time::Instant::now();
    let (_, events) = app.run_stream("run_s", "cursor=3&tail_ms=60000").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let datas: Vec<_> = events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(datas.len(), 3, "{datas:?}");
    assert_eq!(events[1].json()["type"], "run.finished");
    assert_eq!(events[1].json()["payload"]["status"], "failed");
    assert_eq!(datas[2], "[DONE]");
}

async fn a_stream_without_cursor_waits_for_new_events(db: &TestDb) {
    let app = spawn_app(db).await;
    app.running_run("run_live").await;
    app.text_delta("run_live", "f1", "before").await;
    let response = app
        .get("/internal/v1/runs/run_live/stream?thread_id=thread_1&tail_ms=20000")
        .send_streaming()
        .await;
    assert_eq!(response.status(), 200);
    let reader = tokio::spawn(async move { response.text().await.unwrap() });
    // The stream starts at the latest durable seq (2): only what comes next is sent.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    app.text_delta("run_live", "f2", "after").await;
    app.finish_run("run_live", "thread_1", "succeeded").await;
    let text = tokio::time::timeout(std::time::Duration::from_secs(15), reader)
        .await
        .expect("the stream ends at [DONE], long before tail_ms")
        .unwrap();
    let events = crate::app::parse_sse(&text);
    let ids: Vec<_> = events.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(ids, ["3", "4"], "{text}");
    assert_eq!(events[0].json()["payload"]["delta"], "after");
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

async fn a_worker_goes_through_its_lifecycle_over_http(db: &TestDb) {
    let app = spawn_app(db).await;
    let created = app
        .create_worker(json!({"worker_id": "desktopw:desktop:1", "adapter": "desktop",
                              "workspace_ref": "openagents:/workspace", "metadata": {"surface": "desktop"}}))
        .await;
    assert_eq!(created.status, 202, "{}", created.text);
    let data = &created.json["data"];
    assert_eq!(data["workerId"], "desktopw:desktop:1");
    assert_eq!(data["status"], "starting");
    assert_eq!(data["latestSeq"], 1);
    assert_eq!(data["idempotentReplay"], false);
    let reattach = app
        .create_worker(json!({"worker_id": "desktopw:desktop:1"}))
        .await;
    assert_eq!(reattach.status, 200);
    assert_eq!(reattach.json["data"]["idempotentReplay"], true);
    let stranger = app
        .post(
            "/internal/v1/codex/workers",
            json!({"worker_id": "desktopw:desktop:1"}),
        )
        .user("2")
        .send()
        .await;
    stranger.assert_error(403, "forbidden");

    let beat = app
        .worker_heartbeat("desktopw:desktop:1", json!({"lease_ttl_ms": 60000}))
        .await;
    assert_eq!(beat.status, 202);
    assert_eq!(beat.json["data"]["status"], "running");
    let early = app.worker_heartbeat("desktopw:desktop:1", json!({})).await;
    assert_eq!(early.status, 200, "a fresh lease is not journaled again");

    let request = app
        .worker_request(
            "desktopw:desktop:1",
            "req_1",
            "turn/start",
            json!({"prompt": "hi"}),
        )
        .await;
    assert_eq!(request.status, 200, "{}", request.text);
    assert_eq!(request.json["data"]["ok"], true);
    assert_eq!(request.json["data"]["request_id"], "req_1");
    assert_eq!(
        request.json["data"]["response"],
        json!({"status": "accepted", "method": "turn/start"})
    );
    assert_eq!(request.json["data"]["seq"], 3);
    let again = app
        .worker_request(
            "desktopw:desktop:1",
            "req_1",
            "turn/start",
            json!({"prompt": "hi"}),
        )
        .await;
    assert_eq!(again.json["data"]["idempotentReplay"], true);
    app.worker_request(
        "desktopw:desktop:1",
        "req_1",
        "turn/start",
        json!({"prompt": "other"}),
    )
    .await
    .assert_error(409, "conflict");
    app.post(
        "/internal/v1/codex/workers/desktopw:desktop:1/requests",
        json!({"request": {"request_id": "r", "params": {}}}),
    )
    .send()
    .await
    .assert_error(400, "invalid_request");

    let reported = app
        .worker_event(
            "desktopw:desktop:1",
            "worker.turn.completed",
            json!({"turn_id": "t1"}),
        )
        .await;
    assert_eq!(reported.status, 202, "{}", reported.text);
    let bad_type = app
        .worker_event("desktopw:desktop:1", "turn.completed", json!({}))
        .await;
    bad_type.assert_error(400, "invalid_request");
    assert_eq!(bad_type.reason(), "invalid_event");

    let snapshot = app.worker_snapshot("desktopw:desktop:1").await;
    assert_eq!(snapshot.status, 200);
    let data = &snapshot.json["data"];
    assert_eq!(data["worker_id"], "desktopw:desktop:1");
    assert_eq!(data["status"], "running");
    assert_eq!(data["latest_seq"], 4);
    assert_eq!(data["adapter"], "desktop");
    assert_eq!(data["workspace_ref"], "openagents:/workspace");
    assert_eq!(data["heartbeat_state"], "healthy");
    assert_eq!(data["metadata"], json!({"surface": "desktop"}));

    let stop = app.stop_worker("desktopw:desktop:1").await;
    assert_eq!(stop.status, 202);
    assert_eq!(stop.json["data"]["status"], "stopped");
    let stop_again = app.stop_worker("desktopw:desktop:1").await;
    assert_eq!(stop_again.status, 200);
    assert_eq!(stop_again.json["data"]["idempotentReplay"], true);
    let late = app
        .worker_request("desktopw:desktop:1", "req_2", "turn/start", json!({}))
        .await;
    late.assert_error(409, "conflict");
    assert_eq!(late.reason(), "worker_not_active");
    let back = app
        .create_worker(json!({"worker_id": "desktopw:desktop:1"}))
        .await;
    assert_eq!(back.status, 202, "reattaching a stopped worker restarts it");
    assert_eq!(back.json["data"]["status"], "starting");

    app.worker_snapshot("nobody")
        .await
        .assert_error(404, "not_found");
    app.get("/internal/v1/codex/workers/desktopw:desktop:1/snapshot")
        .user("2")
        .send()
        .await
        .assert_error(403, "forbidden");
    let generated = app.create_worker(json!({})).await;
    assert_eq!(generated.status, 202);
    assert!(generated.json["data"]["worker_id"]
        .as_str()
        .unwrap()
        .starts_with("codexw_"));
    app.create_worker(json!({"lease_ttl_ms": 5}))
        .await
        .assert_error(400, "invalid_request");
}

async fn worker_streams_replay_and_resume(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create_worker(json!({"worker_id": "w1"})).await;
    app.worker_heartbeat("w1", json!({})).await;
    app.worker_event("w1", "worker.item.started", json!({"item": 1}))
        .await;
    let (response, events) = app.worker_stream("w1", "cursor=0&tail_ms=50").await;
    assert_eq!(response.status, 200);
    let ids: Vec<_> = events.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert!(events
        .iter()
        .all(|e| e.event.as_deref() == Some("codex.worker.event")));
    let types: Vec<_> = events
        .iter()
        .map(|e| e.json()["eventType"].clone())
        .collect();
    assert_eq!(
        types,
        [
            json!("worker.registered"),
            json!("worker.started"),
            json!("worker.item.started")
        ]
    );
    let reported = events[2].json();
    assert_eq!(reported["workerId"], "w1");
    assert_eq!(reported["payload"], json!({"item": 1}));
    assert!(reported["occurredAt"].is_string());
    let response = app
        .get("/internal/v1/codex/workers/w1/stream?tail_ms=50")
        .header("last-event-id", "2")
        .send()
        .await;
    let ids: Vec<_> = crate::app::parse_sse(&response.text)
        .into_iter()
        .filter_map(|e| e.id)
        .collect();
    assert_eq!(ids, ["3"]);
    app.get("/internal/v1/codex/workers/w1/stream?cursor=1")
        .header("last-event-id", "2")
        .send()
        .await
        .assert_error(400, "invalid_request");
}

async fn runs_and_workers_are_listed_for_their_owner(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create_run("run_a", "thread_l").await;
    app.create_run("run_b", "thread_l").await;
    app.post(
        "/internal/v1/runs",
        json!({"run_id": "run_c", "thread_id": "thread_l"}),
    )
    .user("2")
    .send()
    .await;
    let listed = app.get("/internal/v1/runs?thread_id=thread_l").send().await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let ids: Vec<_> = listed.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["run_b", "run_a"], "newest first, only the caller's");
    app.get("/internal/v1/runs?thread_id=thread_l&limit=0")
        .send()
        .await
        .assert_error(400, "invalid_request");
    app.get("/internal/v1/runs")
        .send()
        .await
        .assert_error(400, "invalid_request");

    app.create_worker(json!({"worker_id": "wa", "workspace_ref": "ws1"}))
        .await;
    app.create_worker(json!({"worker_id": "wb"})).await;
    app.stop_worker("wb").await;
    app.post("/internal/v1/codex/workers", json!({"worker_id": "wc"}))
        .user("2")
        .send()
        .await;
    let all = app.get("/internal/v1/codex/workers").send().await;
    let ids: Vec<_> = all.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["wb", "wa"]);
    let stopped = app
        .get("/internal/v1/codex/workers?status=stopped")
        .send()
        .await;
    assert_eq!(stopped.json["data"].as_array().unwrap().len(), 1);
    let by_workspace = app
        .get("/internal/v1/codex/workers?workspace_ref=ws1")
        .send()
        .await;
    assert_eq!(by_workspace.json["data"][0]["worker_id"], "wa");
    app.get("/internal/v1/codex/workers?status=zombie")
        .send()
        .await
        .assert_error(400, "invalid_request");
}

async fn a_tenant_from_the_token_is_recorded_and_enforced(db: &TestDb) {
    let app = spawn_app(db).await;
    let created = app
        .post(
            "/internal/v1/runs",
            json!({"run_id": "run_org", "thread_id": "thread_1"}),
        )
        .claims(|c| c.oa_org_id = Some("org_a".into()))
        .send()
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.json["org_id"], "org_a");
    let path = "/internal/v1/runs/run_org/snapshot?thread_id=thread_1";
    let other_org = app
        .get(path)
        .claims(|c| c.oa_org_id = Some("org_b".into()))
        .send()
        .await;
    other_org.assert_error(403, "forbidden");
    assert_eq!(other_org.reason(), "org_mismatch");
    let same_org = app
        .get(path)
        .claims(|c| c.oa_org_id = Some("org_a".into()))
        .send()
        .await;
    assert_eq!(same_org.status, 200);
    // Tenancy fails closed: a token without the org's claim does not reach the org's run.
    let no_org = app.get(path).send().await;
    no_org.assert_error(403, "forbidden");
    assert_eq!(
        no_org.reason(),
        "org_mismatch",
        "no org claim on an org's run"
    );
    let worker = app
        .post("/internal/v1/codex/workers", json!({"worker_id": "w_org"}))
        .claims(|c| c.oa_org_id = Some("org_a".into()))
        .send()
        .await;
    assert_eq!(worker.json["data"]["org_id"], "org_a");
    // Recorded in the journal event itself, for projectors and Khala.
    let events = crate::support::read_all_settled(&db.database.journal()).await;
    let created_event = events
        .iter()
        .find(|e| e.event.aggregate_id == "run_org")
        .unwrap();
    assert_eq!(created_event.event.payload["RunCreated"]["org_id"], "org_a");
}

async fn the_openapi_document_describes_every_route(db: &TestDb) {
    // Everything `serve` mounts; every HTTP API route of the router's own table must be in the
    // document, so a new route without an annotation fails here.
    let app = spawn_app_with(
        db,
        Options {
            everything: true,
            ..Options::default()
        },
    )
    .await;
    let doc = app.get("/internal/v1/openapi.json").send().await;
    assert_eq!(doc.status, 200);
    let paths = doc.json["paths"].as_object().unwrap();
    let api_routes: Vec<&String> = app
        .routes
        .iter()
        .filter(|r| {
            ["/internal/v1/", "/api/", "/sync/v1/"]
                .iter()
                .any(|prefix| r.starts_with(prefix))
        })
        .filter(|r| r.as_str() != "/internal/v1/openapi.json")
        .collect();
    assert!(api_routes.len() >= 25, "{api_routes:?}");
    for path in api_routes {
        assert!(
            paths.contains_key(path.as_str()),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc.json["components"]["securitySchemes"]["runtime_signature"].is_object());
    assert!(doc.json["components"]["securitySchemes"]["sync_token"].is_object());
}

async fn trace_headers_reach_the_event_metadata(db: &TestDb) {
    let app = spawn_app(db).await;
    let response = app
        .post(
            "/internal/v1/runs",
            json!({"run_id": "run_traced", "thread_id": "thread_1"}),
        )
        .header("x-request-id", "req-abc-123")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vendor=1")
        .send()
        .await;
    assert_eq!(response.status, 201);
    assert_eq!(response.header("x-request-id"), Some("req-abc-123"));
    let events = crate::support::read_all_settled(&db.database.journal()).await;
    let metadata = &events[0].event.metadata;
    assert_eq!(metadata["request_id"], "req-abc-123");
    assert_eq!(metadata["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(metadata["actor"], "user:1");
}

/// Sabotage: with the journal table gone, a command is an opaque 500 (no database detail leaks);
/// with the nonce table gone, requests are a retryable 503. Neither is a client mistake.
#[tokio::test]
async fn journal_failures_are_opaque_internal_errors() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app(&db).await;
    app.running_run("run_sabotage").await;
    let engine::Database::Postgres(pool) = &db.database else {
        unreachable!()
    };
    sqlx::query("ALTER TABLE events RENAME TO events_gone")
        .execute(pool)
        .await
        .unwrap();
    let response = app.text_delta("run_sabotage_new", "f1", "x").await;
    response.assert_error(500, "internal_error");
    assert_eq!(response.json["error"]["message"], "internal error");
    assert!(!response.text.contains("events"), "{}", response.text);
    sqlx::query("ALTER TABLE events_gone RENAME TO events")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE runtime.auth_nonces RENAME TO auth_nonces_gone")
        .execute(pool)
        .await
        .unwrap();
    let response = app.get("/internal/v1/health").send().await;
    response.assert_error(503, "internal_error");
    assert_eq!(response.json["error"]["details"]["retryable"], true);
    drop(app);
    db.cleanup().await;
}

/// `/readyz` is 503 while the journal lacks a migration this binary knows, and 200 once applied.
#[tokio::test]
async fn readiness_requires_every_migration() {
    let dir = tempfile::tempdir().unwrap();
    let config = engine::DatabaseConfig::Sqlite {
        path: dir.path().join(engine::db::SQLITE_FILE),
    };
    let database = engine::Database::connect(&config).await.unwrap();
    let app = openagents_runtime::App::new(
        openagents_runtime::RuntimeConfig::new(config, dir.path().to_owned(), crate::app::secret()),
        database.clone(),
        engine::clock::Stamps::system(),
    );
    let server = openagents_runtime::Server::bind(app.clone()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let running = tokio::spawn(server.run_until_stopped());
    let ready = || async {
        let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = ready().await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    database.migrate().await.unwrap();
    let (status, body) = ready().await;
    assert_eq!(status, 200, "{body}");
    app.shutdown_token().cancel();
    running.await.unwrap().unwrap();
}

/// A run whose history spans several of the stream's read pages (`PAGE_EVENTS`): every event
/// once, in order, across the page boundaries, and `[DONE]` only after the last page.
async fn a_long_run_streams_across_pages_without_gap_or_early_done(db: &TestDb) {
    let app = spawn_app(db).await;
    app.running_run("run_long").await; // seq 1
    let frames = 2 * openagents_runtime::api::stream::PAGE_EVENTS + 10;
    for i in 0..frames {
        let response = app.text_delta("run_long", &format!("f{i}"), "x").await;
        assert!(response.status < 300, "{}", response.text);
    }
    let finished = app.finish_run("run_long", "thread_1", "succeeded").await;
    assert!(finished.status < 300, "{}", finished.text);
    let last = frames as u64 + 2; // started, the frames, finished
    for cursor in [0, 255, 256, 257] {
        let (response, events) = app
            .run_stream("run_long", &format!("cursor={cursor}&tail_ms=2000"))
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
        let ids: Vec<u64> = events
            .iter()
            .filter_map(|e| e.id.as_ref().map(|id| id.parse().unwrap()))
            .collect();
        let expected: Vec<u64> = (cursor + 1..=last).collect();
        assert_eq!(ids, expected, "from cursor {cursor}");
        assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
        assert_eq!(
            events.iter().filter(|e| e.data == "[DONE]").count(),
            1,
            "one [DONE], at the end"
        );
    }
}

/// A free-text field's limit is what the OpenAPI document's `maxLength` says, counted as JSON
/// Schema counts it (characters, not bytes): a value of exactly that many two-byte characters is
/// accepted, one more is refused with the field named, on a run and on a worker command.
async fn text_limits_count_characters_as_the_document_says(db: &TestDb) {
    let app = spawn_app(db).await;
    let doc = app.get("/internal/v1/openapi.json").send().await.json;
    let limit = |schema: &str, field: &str| {
        doc["components"]["schemas"][schema]["properties"][field]["maxLength"]
            .as_u64()
            .unwrap_or_else(|| panic!("{schema}.{field} has a maxLength")) as usize
    };
    let text = |chars: usize| "é".repeat(chars);

    let max = limit("CancelRequest", "reason");
    app.running_run("run_limits").await;
    let refused = app
        .cancel_run("run_limits", "thread_1", &text(max + 1))
        .await;
    refused.assert_error(400, "invalid_request");
    assert_eq!(refused.json["error"]["details"]["field"], "reason");
    let accepted = app.cancel_run("run_limits", "thread_1", &text(max)).await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.json);

    let max = limit("CreateWorkerRequest", "adapter");
    let refused = app
        .create_worker(json!({"worker_id": "worker_limits", "adapter": text(max + 1)}))
        .await;
    refused.assert_error(400, "invalid_request");
    assert_eq!(refused.json["error"]["details"]["field"], "adapter");
    let accepted = app
        .create_worker(json!({"worker_id": "worker_limits", "adapter": text(max)}))
        .await;
    assert!(
        accepted.status < 300,
        "{} {:?}",
        accepted.status,
        accepted.json
    );
}
