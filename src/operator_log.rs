//! Operator actions into the journal: the runtime's [`OperatorLog`] for the sync gateway's mint
//! and revoke routes. Each action an operator takes for another principal becomes one
//! `operator_action` aggregate with one `operator.action_recorded` event, appended through the
//! engine like any command (chain hashes, the audit tree), before the route answers.

use std::sync::Arc;

use aggregates::operator::{ActionRecord, OperatorAction, OperatorCommand};
use async_trait::async_trait;
use engine::{CommandContext, Engine};
use sync_gateway::auth::owners::{OperatorActionRecord, OperatorLog};

/// Appends operator actions through the engine.
pub struct JournalOperatorLog {
    engine: Arc<Engine>,
}

impl JournalOperatorLog {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

#[async_trait]
impl OperatorLog for JournalOperatorLog {
    async fn record(&self, record: &OperatorActionRecord) -> Result<(), String> {
        let id = format!("op_{}", uuid::Uuid::now_v7().simple());
        let context = CommandContext {
            actor: record.actor.clone(),
            ..CommandContext::default()
        };
        let command = OperatorCommand::Record(ActionRecord {
            action: record.action.clone(),
            actor: record.actor.clone(),
            subject: record.subject.clone(),
            detail: record.detail.clone(),
        });
        self.engine
            .execute::<OperatorAction>(&id, command, &context)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
