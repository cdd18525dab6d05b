//! Trust boundaries through the real HTTP and WebSocket surface (docs/security.md):
//!
//! - the authorization matrix: every route of the main listener (discovered from the router's
//!   own table, so a new route without a row fails) and every Khala read path, for the principals
//!   owner / other user / guest with the same id text / other org / no org / operator;
//! - the scenarios that held before the trust-boundary work and must not again (each failed
//!   before it): minting for another subject, revoking another's session, a principal header
//!   contradicting the token, org-less tokens reaching org resources, invented methods growing
//!   `/metrics`, megabytes of metadata re-sent with every frame.

use reqwest::Method;
use serde_json::{json, Value};
use sync_gateway::auth::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use sync_gateway::test_utils::{now_secs, sign_claims};

use crate::app::{spawn_app_with, Options, Req, TestApp};
use crate::khala_e2e::{hydrate, joined, updates_until, RUNS};
use crate::support::on_both_backends;
use engine::testing::TestDb;

on_both_backends!(
    every_route_is_in_the_authorization_matrix,
    claims_bind_and_tenancy_fails_closed_in_the_reported_scenarios,
    the_aggregate_cache_stays_within_its_byte_budget_under_steady_writes,
    idempotency_records_expire_on_their_schedule,
    credentials_the_control_plane_minted_are_owned_from_first_sight,
    operator_actions_for_others_are_journal_events,
);

const OWNER: &str = "1";
const ORG: &str = "org_a";
const RUN: &str = "mx_run";
const THREAD: &str = "mx_thread";
const WORKER: &str = "mx_worker";

/// The principals of every row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Owner,
    OtherUser,
    /// A guest scope whose text equals the owner's user id.
    SameIdGuest,
    /// The owner's user id with another org's claim.
    OtherOrg,
    /// The owner's user id with no org claim.
    NoOrg,
    Operator,
}

const EVERYONE: [Who; 6] = [
    Who::Owner,
    Who::OtherUser,
    Who::SameIdGuest,
    Who::OtherOrg,
    Who::NoOrg,
    Who::Operator,
];

impl Who {
    fn on<'a>(self, request: Req<'a>) -> Req<'a> {
        let org = |o: Option<&'static str>| {
            move |c: &mut engine::auth::InternalClaims| c.oa_org_id = o.map(str::to_owned)
        };
        match self {
            Who::Owner => request.user(OWNER).claims(org(Some(ORG))),
            Who::OtherUser => request.user("2").claims(org(Some(ORG))),
            Who::SameIdGuest => request.guest(OWNER).claims(org(Some(ORG))),
            Who::OtherOrg => request.user(OWNER).claims(org(Some("org_b"))),
            Who::NoOrg => request.user(OWNER).claims(org(None)),
            Who::Operator => request.user("op").claims(|c| {
                c.oa_org_id = None;
                c.oa_role = Some(engine::auth::OPERATOR_ROLE.to_owned());
            }),
        }
    }

    /// Reaches the owner's run and worker.
    fn reaches_owners(self) -> bool {
        matches!(self, Who::Owner | Who::Operator)
    }

    fn subject(self) -> &'static str {
        match self {
            Who::Owner | Who::OtherOrg | Who::NoOrg => "user:1",
            Who::OtherUser => "user:2",
            Who::SameIdGuest => "guest:1",
            Who::Operator => "user:op",
        }
    }

    fn org(self) -> Option<&'static str> {
        match self {
            Who::Owner | Who::OtherUser | Who::SameIdGuest => Some(ORG),
            Who::OtherOrg => Some("org_b"),
            Who::NoOrg | Who::Operator => None,
        }
    }

    /// A sync token for this principal (what the control plane would mint).
    fn sync_token(self) -> String {
        let now = now_secs();
        let mut claims = json!({
            "iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": self.subject(),
            "iat": now, "nbf": now, "exp": now + 300, "jti": format!("mx-{self:?}-{now}"),
            "oa_sync_scopes": [RUNS],
        });
        if let Some(org) = self.org() {
            claims["oa_org_id"] = json!(org);
        }
        if self == Who::Operator {
            claims["oa_role"] = json!("operator");
        }
        sign_claims(&claims)
    }
}

/// What a row checks.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// No token needed; no principal data.
    Open,
    /// Any authenticated principal; no principal's resource involved.
    Service,
    /// Acts on the owner's run: owner and operator pass authorization, the rest get 403.
    Run,
    /// Acts on the owner's worker: as `Run`.
    Worker,
    /// Lists runs: everyone gets 200, only owner and operator see the owner's run.
    ListRuns,
    /// Lists workers: everyone gets 200, only the owner sees the owner's worker (the operator
    /// lists the workers of the principal it names).
    ListWorkers,
    /// Creates a run of one's own: everyone may.
    CreateRun,
    /// Registers a worker of one's own: everyone may; re-registering the owner's is 403.
    CreateWorker,
    /// Mints a sync token for the owner's subject and org.
    Mint,
    /// Revokes the owner's session.
    Revoke,
    /// HTTP hydration of the owner's run summary.
    Hydrate,
    /// WebSocket replay of the owner's run summary.
    Socket,
    /// Any principal passes authorization (an answer other than 401/403 and below 500); no
    /// principal's resource involved (audit checkpoints and consistency proofs).
    AnyPrincipal,
    /// Needs an operator sync token (the console's ops snapshot and token renewal).
    OperatorSync,
    /// The console's one-time login: no principal; a wrong code is 401 for everyone.
    Login,
}

/// The matrix: one row per (method, route template) of the main listener.
const ROWS: &[(&str, &str, Kind)] = &[
    ("GET", "/healthz", Kind::Open),
    ("GET", "/readyz", Kind::Open),
    ("GET", "/metrics", Kind::Open),
    ("GET", "/internal/v1/health", Kind::Service),
    ("GET", "/internal/v1/openapi.json", Kind::Service),
    ("POST", "/internal/v1/runs", Kind::CreateRun),
    ("GET", "/internal/v1/runs", Kind::ListRuns),
    ("GET", "/internal/v1/runs/{run_id}/snapshot", Kind::Run),
    ("POST", "/internal/v1/runs/{run_id}/frames", Kind::Run),
    ("POST", "/internal/v1/runs/{run_id}/start", Kind::Run),
    ("GET", "/internal/v1/runs/{run_id}/stream", Kind::Run),
    ("GET", "/internal/v1/runs/{run_id}/receipt", Kind::Run),
    ("GET", "/internal/v1/runs/{run_id}/replay", Kind::Run),
    ("GET", "/internal/v1/runs/{run_id}/audit-bundle", Kind::Run),
    ("POST", "/internal/v1/runs/{run_id}/cancel", Kind::Run),
    ("POST", "/internal/v1/runs/{run_id}/finish", Kind::Run),
    ("POST", "/internal/v1/codex/workers", Kind::CreateWorker),
    ("GET", "/internal/v1/codex/workers", Kind::ListWorkers),
    (
        "GET",
        "/internal/v1/codex/workers/{worker_id}/snapshot",
        Kind::Worker,
    ),
    (
        "POST",
        "/internal/v1/codex/workers/{worker_id}/requests",
        Kind::Worker,
    ),
    (
        "GET",
        "/internal/v1/codex/workers/{worker_id}/stream",
        Kind::Worker,
    ),
    (
        "POST",
        "/internal/v1/codex/workers/{worker_id}/heartbeat",
        Kind::Worker,
    ),
    (
        "POST",
        "/internal/v1/codex/workers/{worker_id}/events",
        Kind::Worker,
    ),
    (
        "POST",
        "/internal/v1/codex/workers/{worker_id}/stop",
        Kind::Worker,
    ),
    ("POST", "/api/sync/token", Kind::Mint),
    ("POST", "/internal/v1/sync/sessions/revoke", Kind::Revoke),
    ("GET", "/sync/v1/topics/{topic}/docs", Kind::Hydrate),
    ("GET", "/sync/socket/websocket", Kind::Socket),
    ("GET", "/internal/v1/audit/key", Kind::Service),
    (
        "GET",
        "/internal/v1/audit/checkpoints/latest",
        Kind::AnyPrincipal,
    ),
    (
        "GET",
        "/internal/v1/audit/checkpoints/{tree_size}",
        Kind::AnyPrincipal,
    ),
    (
        "GET",
        "/internal/v1/audit/proof/consistency",
        Kind::AnyPrincipal,
    ),
    ("GET", "/internal/v1/audit/proof/inclusion", Kind::Run),
    ("GET", "/console", Kind::Open),
    ("GET", "/console/", Kind::Open),
    ("GET", "/console/assets/{name}", Kind::Open),
    ("POST", "/console/api/login", Kind::Login),
    ("POST", "/console/api/renew", Kind::OperatorSync),
    ("GET", "/ops/v1/status", Kind::OperatorSync),
];

/// The body a row's request sends, for `who`.
fn body_of(path: &str, who: Who) -> Value {
    let tag = format!("{who:?}").to_lowercase();
    match path {
        "/internal/v1/runs" => json!({"run_id": format!("mx_own_{tag}"), "thread_id": THREAD}),
        "/internal/v1/runs/{run_id}/frames" => json!({
            "thread_id": THREAD, "frame_id": format!("frm_{tag}"), "type": "text_delta",
            "payload": {"delta": "x"}
        }),
        "/internal/v1/runs/{run_id}/cancel" => json!({"thread_id": THREAD, "reason": "matrix"}),
        "/internal/v1/runs/{run_id}/finish" => json!({"thread_id": THREAD, "status": "canceled"}),
        "/internal/v1/runs/{run_id}/start" => json!({"thread_id": THREAD}),
        "/internal/v1/codex/workers/{worker_id}/requests" => json!({
            "request": {"request_id": format!("req_{tag}"), "method": "ping"}
        }),
        "/internal/v1/codex/workers/{worker_id}/heartbeat" => json!({}),
        "/internal/v1/codex/workers/{worker_id}/events" => json!({
            "event": {"event_type": "worker.log", "payload": {"line": tag}}
        }),
        "/internal/v1/codex/workers/{worker_id}/stop" => json!({"reason": "matrix"}),
        "/api/sync/token" => json!({
            "subject": "user:1", "org_id": ORG, "scopes": [RUNS], "session_id": "mx-session"
        }),
        "/internal/v1/sync/sessions/revoke" => {
            json!({"session_id": "mx-session", "reason": "matrix"})
        }
        "/console/api/login" => json!({"code": "not-a-login-code"}),
        _ => json!({}),
    }
}

fn concrete(path: &str) -> String {
    path.replace("{run_id}", RUN)
        .replace("{worker_id}", WORKER)
        .replace("{topic}", RUNS)
        .replace("{tree_size}", "1")
        .replace("{name}", "console.js")
}

fn with_query(path: &str) -> String {
    let concrete = concrete(path);
    match path {
        "/internal/v1/runs" | "/internal/v1/runs/{run_id}/snapshot" => {
            format!("{concrete}?thread_id={THREAD}")
        }
        "/internal/v1/runs/{run_id}/stream" => {
            format!("{concrete}?thread_id={THREAD}&cursor=0&tail_ms=1")
        }
        "/internal/v1/codex/workers/{worker_id}/stream" => format!("{concrete}?cursor=0&tail_ms=1"),
        "/internal/v1/audit/proof/consistency" => format!("{concrete}?from=1&to=1"),
        "/internal/v1/audit/proof/inclusion" => {
            format!("{concrete}?aggregate_type=run&aggregate_id={RUN}&sequence=1")
        }
        _ => concrete,
    }
}

async fn spawn(db: &TestDb) -> TestApp {
    spawn_app_with(
        db,
        Options {
            everything: true,
            ..Options::default()
        },
    )
    .await
}

/// The owner's run (started, one frame) and worker, and a sync session it minted.
async fn seed(app: &TestApp) {
    for (path, body) in [
        (
            "/internal/v1/runs",
            json!({"run_id": RUN, "thread_id": THREAD}),
        ),
        (
            "/internal/v1/runs/mx_run/start",
            json!({"thread_id": THREAD}),
        ),
        (
            "/internal/v1/runs/mx_run/frames",
            json!({"thread_id": THREAD, "frame_id": "frm_seed", "type": "text_delta", "payload": {"delta": "hi"}}),
        ),
        ("/internal/v1/codex/workers", json!({"worker_id": WORKER})),
        (
            "/api/sync/token",
            json!({"subject": "user:1", "scopes": [RUNS], "session_id": "mx-session"}),
        ),
    ] {
        let response = Who::Owner.on(app.post(path, body)).send().await;
        assert!(
            (200..300).contains(&response.status),
            "seeding {path}: {} {}",
            response.status,
            response.text
        );
    }
}

async fn every_route_is_in_the_authorization_matrix(db: &TestDb) {
    let app = spawn(db).await;
    seed(&app).await;

    // 1. The router's own table: every routed (method, path) has a row.
    assert!(
        app.routes.len() >= ROWS.len() / 2,
        "the route table could not be read: {:?}",
        app.routes
    );
    let mut missing = Vec::new();
    for path in &app.routes {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let response = app
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{}", app.base, concrete(path)),
                )
                .send()
                .await
                .unwrap();
            let routed = response.status().as_u16() != 405;
            let has_row = ROWS.iter().any(|(m, p, _)| *m == method && p == path);
            if routed && !has_row {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a matrix row: {missing:?}"
    );
    for (method, path, _) in ROWS {
        assert!(
            app.routes.iter().any(|r| r == path),
            "row {method} {path} names no route"
        );
    }

    // 2. Every row, every principal.
    for (method, path, kind) in ROWS {
        for who in EVERYONE {
            check(&app, method, path, *kind, who).await;
        }
    }
}

async fn check(app: &TestApp, method: &str, path: &str, kind: Kind, who: Who) {
    let what = format!("{method} {path} as {who:?}");
    let request = || {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = app.req(method.clone(), &with_query(path));
        let request = if method == Method::POST {
            request.json(body_of(path, who))
        } else {
            request
        };
        who.on(request)
    };
    match kind {
        Kind::Open => {
            let response = app
                .http
                .get(format!("{}{}", app.base, concrete(path)))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200, "{what}");
        }
        Kind::Service | Kind::CreateRun => {
            let response = request().send().await;
            assert!(
                (200..300).contains(&response.status),
                "{what}: {} {}",
                response.status,
                response.text
            );
        }
        Kind::Run | Kind::Worker => {
            let response = request().send().await;
            if who.reaches_owners() {
                assert!(
                    ![401, 403, 404].contains(&response.status) && response.status < 500
                        || response.reason() == "receipt_not_found",
                    "{what}: {} {}",
                    response.status,
                    response.text
                );
            } else {
                assert_eq!(response.status, 403, "{what}: {}", response.text);
            }
        }
        Kind::ListRuns => {
            let response = request().send().await;
            assert_eq!(response.status, 200, "{what}: {}", response.text);
            let sees = response.json["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["run_id"] == RUN);
            assert_eq!(sees, who.reaches_owners(), "{what}: {}", response.text);
        }
        Kind::ListWorkers => {
            let response = request().send().await;
            assert_eq!(response.status, 200, "{what}: {}", response.text);
            let sees = response.json["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["worker_id"] == WORKER);
            assert_eq!(sees, who == Who::Owner, "{what}: {}", response.text);
        }
        Kind::CreateWorker => {
            // One's own new worker: everyone may.
            let tag = format!("{who:?}").to_lowercase();
            let own = who
                .on(app.post(path, json!({"worker_id": format!("mx_w_{tag}")})))
                .send()
                .await;
            assert!(
                (200..300).contains(&own.status),
                "{what}: {} {}",
                own.status,
                own.text
            );
            // Re-registering the owner's worker: only the owner and the operator.
            let theirs = who
                .on(app.post(path, json!({"worker_id": WORKER})))
                .send()
                .await;
            if who == Who::Owner {
                assert!(
                    theirs.status < 400,
                    "{what}: {} {}",
                    theirs.status,
                    theirs.text
                );
            } else if who == Who::Operator {
                // The operator passes authorization but acts as the principal it names, which
                // the worker aggregate refuses as an owner change.
                assert!(
                    theirs.status < 500,
                    "{what}: {} {}",
                    theirs.status,
                    theirs.text
                );
            } else {
                assert_eq!(theirs.status, 403, "{what}: {}", theirs.text);
            }
        }
        Kind::Mint => {
            let response = request().send().await;
            // Only the owner mints for itself; the operator for anyone.
            if who.reaches_owners() {
                assert_eq!(response.status, 200, "{what}: {}", response.text);
            } else {
                assert_eq!(response.status, 403, "{what}: {}", response.text);
            }
            // Everyone mints for itself, in its own org.
            let mut own = json!({"subject": who.subject(), "scopes": [RUNS]});
            if let Some(org) = who.org() {
                own["org_id"] = json!(org);
            }
            let response = who.on(app.post(path, own)).send().await;
            assert_eq!(
                response.status, 200,
                "{what} (own subject): {}",
                response.text
            );
        }
        Kind::Revoke => {
            let response = request().send().await;
            if who.reaches_owners() {
                assert_eq!(response.status, 200, "{what}: {}", response.text);
            } else {
                assert_eq!(response.status, 403, "{what}: {}", response.text);
                assert_eq!(response.reason(), "not_owner", "{what}");
            }
        }
        Kind::AnyPrincipal => {
            let response = request().send().await;
            assert!(
                ![401, 403].contains(&response.status) && response.status < 500,
                "{what}: {} {}",
                response.status,
                response.text
            );
        }
        Kind::OperatorSync => {
            let url = format!("{}{}", app.base, concrete(path));
            let builder = match method {
                "POST" => app.http.post(url).json(&json!({})),
                _ => app.http.get(url),
            };
            let response = builder.bearer_auth(who.sync_token()).send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            if who == Who::Operator {
                assert_eq!(status, 200, "{what}: {text}");
            } else {
                assert_eq!(status, 403, "{what}: {text}");
            }
        }
        Kind::Login => {
            let response = request().send().await;
            assert_eq!(response.status, 401, "{what}: {}", response.text);
        }
        Kind::Hydrate => {
            let hydration = hydrate(&app.base, &who.sync_token(), RUNS).await;
            let sees = hydration
                .docs
                .iter()
                .any(|d| d.doc_key == crate::khala_e2e::run_key(RUN));
            assert_eq!(sees, who.reaches_owners(), "{what}: {:?}", hydration.docs);
        }
        Kind::Socket => {
            // Replay from 0, then a marker run of this principal's own: everything delivered
            // before the marker is what replay let through.
            let mut client = joined(&app.base, &who.sync_token()).await;
            client
                .subscribe_from(&[(RUNS, Some(0))])
                .await
                .unwrap()
                .unwrap();
            let tag = format!("{who:?}").to_lowercase();
            let marker = format!("mx_marker_{tag}");
            let mut body = json!({"run_id": marker, "thread_id": "mx_marker_thread"});
            if who == Who::Operator {
                body["run_id"] = json!(format!("{marker}_op"));
            }
            let created = who
                .on(app.post("/internal/v1/runs", body.clone()))
                .send()
                .await;
            assert_eq!(created.status, 201, "{what}: {}", created.text);
            let marker_key = crate::khala_e2e::run_key(body["run_id"].as_str().unwrap());
            let updates = updates_until(&mut client, &what, |u| {
                u.iter().any(|u| u.doc_key == marker_key)
            })
            .await;
            let sees = updates
                .iter()
                .any(|u| u.doc_key == crate::khala_e2e::run_key(RUN));
            assert_eq!(sees, who.reaches_owners(), "{what}");
            if !matches!(who, Who::Operator) {
                for update in &updates {
                    let payload = update.payload.as_ref().expect("payload");
                    assert_eq!(
                        payload["owner_user_id"].as_str(),
                        who.subject().strip_prefix("user:"),
                        "{what}: {payload}"
                    );
                    assert_eq!(payload["org_id"].as_str(), who.org(), "{what}");
                }
            }
        }
    }
}

async fn claims_bind_and_tenancy_fails_closed_in_the_reported_scenarios(db: &TestDb) {
    let app = spawn(db).await;
    // User 2's run, with private metadata.
    let created = app
        .post(
            "/internal/v1/runs",
            json!({"run_id": "r_two", "thread_id": "t_two", "metadata": {"secret": "user 2's"}}),
        )
        .user("2")
        .send()
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    // Guest g1's run.
    let created = app
        .post(
            "/internal/v1/runs",
            json!({"run_id": "r_g1", "thread_id": "t_g1"}),
        )
        .guest("g1")
        .send()
        .await;
    assert_eq!(created.status, 201, "{}", created.text);

    // A token for user 1 cannot mint a sync token for user 2.
    let minted = app
        .post(
            "/api/sync/token",
            json!({"subject": "user:2", "scopes": [RUNS]}),
        )
        .send()
        .await;
    minted.assert_error(403, "forbidden");
    assert_eq!(minted.reason(), "subject_mismatch");
    // Nor outside its oa_sync_scopes, nor for another org.
    let scoped = app
        .post(
            "/api/sync/token",
            json!({"subject": "user:1", "scopes": [RUNS]}),
        )
        .claims(|c| c.oa_sync_scopes = Some(vec!["runtime.codex_worker_summaries".into()]))
        .send()
        .await;
    scoped.assert_error(403, "forbidden");
    assert_eq!(scoped.reason(), "scope_not_granted");
    let other_org = app
        .post(
            "/api/sync/token",
            json!({"subject": "user:1", "scopes": [RUNS], "org_id": "org_x"}),
        )
        .send()
        .await;
    assert_eq!(other_org.reason(), "org_mismatch");
    // A session id minted for user 2 cannot be minted (or revoked) by user 1.
    let twos = app
        .post(
            "/api/sync/token",
            json!({"subject": "user:2", "scopes": [RUNS], "session_id": "sess-two"}),
        )
        .user("2")
        .send()
        .await;
    assert_eq!(twos.status, 200, "{}", twos.text);
    let stolen = app
        .post(
            "/api/sync/token",
            json!({"subject": "user:1", "scopes": [RUNS], "session_id": "sess-two"}),
        )
        .send()
        .await;
    assert_eq!(stolen.reason(), "credential_not_owned", "{}", stolen.text);
    let revoked = app
        .post(
            "/internal/v1/sync/sessions/revoke",
            json!({"session_id": "sess-two", "reason": "not mine"}),
        )
        .send()
        .await;
    revoked.assert_error(403, "forbidden");
    // The session still works for user 2.
    let token_two = twos.json["token"].as_str().unwrap();
    let docs = hydrate(&app.base, token_two, RUNS).await;
    assert!(docs.docs.iter().all(|d| d.payload["owner_user_id"] == "2"));

    // Principal headers only repeat the token's principal.
    let path = "/internal/v1/runs/r_g1/snapshot?thread_id=t_g1";
    let as_guest = app.get(path).header("x-oa-guest-scope", "g1").send().await;
    as_guest.assert_error(403, "forbidden");
    assert_eq!(as_guest.reason(), "claim_mismatch");
    let guest_as_user = app
        .get("/internal/v1/runs/r_two/snapshot?thread_id=t_two")
        .guest("g1")
        .header("x-oa-user-id", "2")
        .send()
        .await;
    guest_as_user.assert_error(403, "forbidden");
    // Without a principal claim: exactly one header.
    let both = app
        .get(path)
        .no_principal()
        .header("x-oa-user-id", "2")
        .header("x-oa-guest-scope", "g1")
        .send()
        .await;
    both.assert_error(400, "invalid_request");
    assert_eq!(both.reason(), "ambiguous_principal");
    let one = app
        .get(path)
        .no_principal()
        .header("x-oa-guest-scope", "g1")
        .send()
        .await;
    assert_eq!(one.status, 200, "the documented fallback: {}", one.text);

    // A run-bound token cannot register workers or mint.
    let bound = app
        .post(
            "/internal/v1/codex/workers",
            json!({"worker_id": "w_bound"}),
        )
        .claims(|c| c.run_id = Some("r_one".into()))
        .send()
        .await;
    bound.assert_error(403, "forbidden");
    assert_eq!(bound.reason(), "claim_mismatch");

    // Invented methods do not grow /metrics.
    let metrics = |app: &TestApp| {
        let url = format!("{}/metrics", app.base);
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let before = metrics(&app).await;
    for i in 0..300 {
        let method = Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        app.http
            .request(method, format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
    }
    let after = metrics(&app).await;
    assert!(!after.contains("INVENTED"), "a method became a label");
    // The recorder is process-wide (other tests add series meanwhile): count only the series the
    // invented methods can land in. Before the fix each method was a series of its own.
    let other_series = |text: &str| {
        text.lines()
            .filter(|l| l.contains("method=\"other\"") && l.contains("/healthz"))
            .count()
    };
    assert!(other_series(&before) <= other_series(&after));
    assert!(
        other_series(&after) <= 20,
        "{} series for invented methods",
        other_series(&after)
    );

    // Megabytes of metadata are refused up front.
    let huge = app
        .post(
            "/internal/v1/runs",
            json!({"run_id": "r_huge", "thread_id": "t", "metadata": {"blob": "x".repeat(900 * 1024)}}),
        )
        .send()
        .await;
    assert_eq!(
        huge.status, 413,
        "the body limit of the test app: {}",
        huge.text
    );
    // The unread rest of the body makes the connection unusable: the answer says so, so the
    // client opens a fresh one for the next request instead of failing on the closed one.
    assert_eq!(huge.header("connection"), Some("close"));
    let over = app
        .post(
            "/internal/v1/runs",
            json!({"run_id": "r_over", "thread_id": "t", "metadata": {"blob": "x".repeat(20 * 1024)}}),
        )
        .send()
        .await;
    over.assert_error(400, "invalid_request");
    assert_eq!(over.reason(), "metadata_too_large");
}

async fn the_aggregate_cache_stays_within_its_byte_budget_under_steady_writes(db: &TestDb) {
    const BUDGET: usize = 64 * 1024;
    let app = spawn_app_with(
        db,
        Options {
            configure: Box::new(|config| config.engine.cache_bytes = BUDGET),
            ..Options::default()
        },
    )
    .await;
    // Four writers, each creating runs and appending frames: ~40 runs of 20 frames weigh several
    // times the budget, so the cache must evict by bytes (a count bound of 10,000 never would).
    let mut peak = 0;
    for round in 0..10 {
        let writers = (0..4).map(|w| {
            let app = &app;
            async move {
                let run = format!("cache_{round}_{w}");
                let created = app.create_run(&run, "thread_1").await;
                assert_eq!(created.status, 201, "{}", created.text);
                for f in 0..20 {
                    let frame = app.text_delta(&run, &format!("f{f}"), "x").await;
                    assert!(frame.status < 300, "{}", frame.text);
                }
            }
        });
        futures::future::join_all(writers).await;
        let bytes = app.app.engine().cache_bytes();
        peak = peak.max(bytes);
        assert!(
            bytes <= BUDGET,
            "round {round}: the cache holds {bytes} bytes"
        );
    }
    assert!(
        peak > BUDGET / 2,
        "the test never filled the cache ({peak} bytes)"
    );
    // Evicted runs reload from the journal: the first one still answers with all its frames.
    let snapshot = app.run_snapshot("cache_0_0", "thread_1").await;
    assert_eq!(snapshot.status, 200, "{}", snapshot.text);
    assert_eq!(snapshot.json["latest_seq"], 20, "{}", snapshot.text);
}

async fn idempotency_records_expire_on_their_schedule(db: &TestDb) {
    let app = crate::app::spawn_app(db).await;
    let create = |run: &str| {
        app.post(
            "/internal/v1/runs",
            json!({"run_id": run, "thread_id": "thread_1"}),
        )
        .idempotency_key("idem-expiry")
    };
    assert_eq!(create("r_idem_1").send().await.status, 201);
    // Within the TTL the key is bound to its first request.
    let reused = create("r_idem_2").send().await;
    reused.assert_error(409, "conflict");
    assert_eq!(reused.reason(), "idempotency_key_reused");
    // A prune with a cutoff before the record keeps it; one after it deletes it.
    let now = app.app.engine().now();
    let past = aggregates::Timestamp::from_unix_seconds(now.unix_seconds() - 3600).unwrap();
    assert_eq!(
        engine::retention::prune_idempotency_keys(app.app.database(), past)
            .await
            .unwrap(),
        0
    );
    assert_eq!(create("r_idem_2").send().await.status, 409);
    let later = aggregates::Timestamp::from_unix_seconds(now.unix_seconds() + 1).unwrap();
    assert_eq!(
        engine::retention::prune_idempotency_keys(app.app.database(), later)
            .await
            .unwrap(),
        1
    );
    // Expired: the key may name a new request.
    assert_eq!(create("r_idem_2").send().await.status, 201);
}

/// A session the control plane minted itself (the runtime never saw the mint) belongs to the
/// token's principal from the first time the runtime sees the token: before that only the
/// operator may revoke it; after it, its owner may and nobody else.
async fn credentials_the_control_plane_minted_are_owned_from_first_sight(db: &TestDb) {
    let app = spawn(db).await;
    let now = now_secs();
    let token = sign_claims(&json!({
        "iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": "user:1",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "cp-jti-1",
        "oa_sync_scopes": [RUNS], "oa_session_id": "cp-session", "oa_device_id": "cp-device",
    }));
    let revoke = |body: Value, user: &'static str| {
        app.post("/internal/v1/sync/sessions/revoke", body)
            .user(user)
            .send()
    };
    // Never seen: nobody but the operator can say it is theirs.
    let early = revoke(json!({"session_id": "cp-session", "reason": "r"}), "1").await;
    early.assert_error(403, "forbidden");
    // First sight: a hydration with the token.
    hydrate(&app.base, &token, RUNS).await;
    // Now it is user 1's, and not user 2's.
    for body in [
        json!({"session_id": "cp-session", "reason": "r"}),
        json!({"device_id": "cp-device", "reason": "r"}),
        json!({"jti": "cp-jti-1", "reason": "r"}),
    ] {
        let other = revoke(body, "2").await;
        other.assert_error(403, "forbidden");
    }
    let mine = revoke(
        json!({"session_id": "cp-session", "reason": "signed out"}),
        "1",
    )
    .await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    let refused = reqwest::Client::new()
        .get(format!("{}/sync/v1/topics/{RUNS}/docs", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        401,
        "the revoked session's token is refused"
    );

    // The same on a socket upgrade: a second control-plane session, first seen by the socket.
    let socket_token = sign_claims(&json!({
        "iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": "user:1",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "cp-jti-2",
        "oa_sync_scopes": [RUNS], "oa_session_id": "cp-session-2",
    }));
    let _client = joined(&app.base, &socket_token).await;
    let other = revoke(json!({"session_id": "cp-session-2", "reason": "r"}), "2").await;
    other.assert_error(403, "forbidden");
    let mine = revoke(json!({"session_id": "cp-session-2", "reason": "r"}), "1").await;
    assert_eq!(mine.status, 200, "{}", mine.text);
}

/// An operator minting for another principal and revoking another principal's session leaves
/// one `operator.action_recorded` event each in the journal (under its chains and audit tree),
/// naming actor, subject and what was done, never the token.
async fn operator_actions_for_others_are_journal_events(db: &TestDb) {
    let app = spawn(db).await;
    let minted = Who::Operator
        .on(app.post(
            "/api/sync/token",
            json!({"subject": "user:2", "scopes": [RUNS], "org_id": ORG, "session_id": "op-made"}),
        ))
        .send()
        .await;
    assert_eq!(minted.status, 200, "{}", minted.text);
    let token = minted.json["token"].as_str().unwrap().to_owned();
    let revoked = Who::Operator
        .on(app.post(
            "/internal/v1/sync/sessions/revoke",
            json!({"session_id": "op-made", "reason": "incident 7"}),
        ))
        .send()
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    // A principal acting for itself is not an operator action.
    let own = Who::Owner
        .on(app.post(
            "/api/sync/token",
            json!({"subject": "user:1", "scopes": [RUNS], "org_id": ORG}),
        ))
        .send()
        .await;
    assert_eq!(own.status, 200, "{}", own.text);

    let events: Vec<_> = crate::support::read_all_settled(&db.database.journal())
        .await
        .into_iter()
        .filter(|e| e.event.aggregate_type == "operator_action")
        .collect();
    let actions: Vec<(String, Value)> = events
        .iter()
        .map(|e| (e.event.event_type.clone(), e.event.payload.clone()))
        .collect();
    assert_eq!(actions.len(), 2, "{actions:?}");
    for (event_type, payload) in &actions {
        assert_eq!(event_type, "operator.action_recorded");
        let text = payload.to_string();
        assert!(!text.contains(&token), "a token in the journal: {text}");
        let recorded = &payload["ActionRecorded"];
        assert_eq!(recorded["actor"], "user:op", "{payload}");
        assert!(
            recorded["subject"].as_str().unwrap().starts_with("user:2"),
            "{payload}"
        );
    }
    assert_eq!(actions[0].1["ActionRecorded"]["action"], "mint");
    assert_eq!(actions[1].1["ActionRecorded"]["action"], "revoke");
    assert!(actions[1].1["ActionRecorded"]["detail"]
        .as_str()
        .unwrap()
        .contains("incident 7"));
    // Appended through the engine like every command: the actor and the event chain.
    for event in &events {
        let metadata = &event.event.metadata;
        assert_eq!(metadata["actor"], "user:op", "{metadata}");
        assert!(
            metadata[aggregates::chain::CHAIN_HASH_KEY].is_string(),
            "{metadata}"
        );
    }
}
