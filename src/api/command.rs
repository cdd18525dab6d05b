//! The end every command handler shares, in one place: after the handler has authorized the
//! caller and built the aggregate's action, `command` binds the `Idempotency-Key` to the
//! command's method, route and canonical body (scoped to the principal), executes the action on
//! the aggregate, and answers `created` — or `200` when nothing changed, with
//! `Idempotent-Replayed: true` on a key replay.
//!
//! The route a key is bound to is the matched route template with the request's decoded path
//! parameters ([`CommandRoute`]): the path is written once, in the handler's `#[utoipa::path]`,
//! which also mounts the handler (`utoipa_axum::routes!`).

use std::convert::Infallible;

use aggregates::RuntimeAggregate;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{CommandError, IdempotencyRequest, Outcome, OutcomeKind};
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::extract::IdempotencyKey;
use crate::app::App;

/// The method and path a command was sent to, the path rendered from the matched route template
/// (`/internal/v1/runs/{run_id}/frames`) with the request's percent-decoded parameters: the same
/// text for every retry of a command, however its path was encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRoute {
    pub method: String,
    pub path: String,
}

impl CommandRoute {
    /// Renders `template` with `params` (a `{name}` segment takes the parameter's value).
    fn render(method: &str, template: &str, params: &[(&str, &str)]) -> Self {
        let path = template
            .split('/')
            .map(|segment| {
                segment
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .and_then(|name| params.iter().find(|(n, _)| *n == name))
                    .map_or(segment, |(_, value)| *value)
            })
            .collect::<Vec<_>>()
            .join("/");
        Self {
            method: method.to_owned(),
            path,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CommandRoute {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let template = parts.extensions.get::<MatchedPath>().cloned();
        let params = RawPathParams::from_request_parts(parts, state).await.ok();
        Ok(match (template, params) {
            (Some(template), Some(params)) => {
                let params: Vec<(&str, &str)> = params.iter().collect();
                Self::render(parts.method.as_str(), template.as_str(), &params)
            }
            // Outside a matched route (never for a mounted handler): the request's own path.
            _ => Self {
                method: parts.method.as_str().to_owned(),
                path: parts.uri.path().to_owned(),
            },
        })
    }
}

/// What [`command`] needs from the request besides the action: who sends it, the optional
/// `Idempotency-Key`, the route and the raw JSON body (for the request hash).
pub(crate) struct Command<'a> {
    pub app: &'a App,
    pub caller: &'a Caller,
    pub key: IdempotencyKey,
    pub route: CommandRoute,
    pub body: &'a Value,
}

impl Command<'_> {
    /// The engine's idempotency request: the key scoped to the principal, bound to the method,
    /// path and canonical body.
    fn idempotency(&self) -> Option<IdempotencyRequest> {
        self.key.0.clone().map(|key| IdempotencyRequest {
            scope: self.caller.principal.reference(),
            key,
            request_hash: aggregates::canonical::hash_canonical(&json!({
                "method": self.route.method, "path": self.route.path, "body": self.body
            })),
        })
    }
}

/// Executes `action` on aggregate `id` for `request` and answers with `view` of the outcome:
/// `created` when the command was applied (or replayed by its `Idempotency-Key`), `200` when it
/// changed nothing.
///
/// # Errors
/// The engine's refusals, mapped to the envelope (`409`, `400`, `404`, `503`, …).
pub(crate) async fn command<A, T>(
    request: Command<'_>,
    id: &str,
    action: A::Action,
    created: StatusCode,
    view: impl FnOnce(&Outcome<A>) -> T,
) -> Result<Response, ApiError>
where
    A: RuntimeAggregate,
    T: Serialize,
    ApiError: From<CommandError<A::Error>>,
{
    let context = request.caller.context(request.idempotency());
    let outcome = request
        .app
        .engine()
        .execute::<A>(id, action, &context)
        .await?;
    Ok(respond(&outcome, created, view(&outcome)))
}

/// The response status for a command outcome: `created` on first application (and on an
/// `Idempotency-Key` replay of it), `200` when nothing changed.
pub(crate) fn status_of<A: RuntimeAggregate>(
    outcome: &Outcome<A>,
    created: StatusCode,
) -> StatusCode {
    match outcome.kind {
        OutcomeKind::Appended | OutcomeKind::Replayed => created,
        OutcomeKind::Unchanged => StatusCode::OK,
    }
}

/// `(status, body)` plus `Idempotent-Replayed: true` on an `Idempotency-Key` replay.
pub(crate) fn respond<A: RuntimeAggregate, T: Serialize>(
    outcome: &Outcome<A>,
    created: StatusCode,
    body: T,
) -> Response {
    let mut response = (status_of(outcome, created), Json(body)).into_response();
    if outcome.kind == OutcomeKind::Replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::CommandRoute;

    #[test]
    fn a_route_renders_its_template_with_the_decoded_parameters() {
        let params = [("run_id", "run 1/x")];
        assert_eq!(
            CommandRoute::render("POST", "/internal/v1/runs/{run_id}/frames", &params),
            CommandRoute {
                method: "POST".into(),
                path: "/internal/v1/runs/run 1/x/frames".into()
            }
        );
        assert_eq!(
            CommandRoute::render("POST", "/internal/v1/runs", &[]).path,
            "/internal/v1/runs"
        );
        // A value is not rendered again, whatever it holds.
        let params = [("worker_id", "{worker_id}")];
        assert_eq!(
            CommandRoute::render("POST", "/w/{worker_id}/stop", &params).path,
            "/w/{worker_id}/stop"
        );
    }
}
