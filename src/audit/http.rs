//! Mounting one run's artifacts in a runtime process: the routes of [`super::artifacts_http`]
//! (receipt, REPLAY.jsonl and audit bundle, owner only) on a [`Server`]'s internal router, and the
//! task that records each run's receipt when it finishes. The routes themselves know nothing of
//! the server: they are a router the server merges.

use engine::artifacts::ReceiptSigner;
use engine::audit_log::AuditKey;

use super::artifacts_http::{router, ArtifactState};
use crate::app::App;
use crate::server::Server;

/// Mounts the artifact routes on `server`'s internal router and adds the task that records each
/// run's receipt when it finishes (`engine::artifacts::run_receipt_recorder`), signing both with
/// `signer` when given: what `serve` runs.
pub fn with_artifacts(server: Server, app: &App, signer: Option<ReceiptSigner>) -> Server {
    with_artifacts_audited(server, app, signer, None)
}

/// [`with_artifacts`], with bundles cut at a fresh checkpoint signed by `audit_key`: what `serve`
/// runs.
pub fn with_artifacts_audited(
    server: Server,
    app: &App,
    signer: Option<ReceiptSigner>,
    audit_key: Option<AuditKey>,
) -> Server {
    let router = router(ArtifactState {
        engine: app.engine().clone(),
        database: app.database().clone(),
        signer: signer.clone(),
        runtime_version: crate::VERSION.to_owned(),
        audit_key,
    });
    let engine = app.engine().clone();
    let database = app.database().clone();
    server
        .merge_internal(router)
        .task("receipt-recorder", move |shutdown| {
            engine::artifacts::run_receipt_recorder(
                engine,
                database,
                engine::artifacts::RecorderConfig {
                    signer,
                    ..Default::default()
                },
                shutdown,
            )
        })
}
