//! The OperatorAction aggregate: one action an operator took on another principal's behalf
//! (minting a sync token for them, revoking their session, device or token id), recorded in
//! the journal (aggregate type `operator_action`, one aggregate per action, id chosen by the
//! recorder) so it is covered by the journal's hash chains and Merkle tree like every other
//! fact: an operator cannot act for someone and leave no tamper-evident trace.
//!
//! Recording is idempotent: the same action again is a no-op; a different one under the same
//! id is rejected.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{RuntimeAggregate, Stamped, Timestamp};

/// Current version of every operator action event shape.
pub const OPERATOR_EVENT_VERSION: &str = "1.0";

/// What happened, by whom, to whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// `mint` (a sync token for another principal) or `revoke` (another principal's session,
    /// device or token id).
    pub action: String,
    /// The operator's reference (its subject, user or guest, and org).
    pub actor: String,
    /// The principal acted for (the credential owner, `subject|org:…`).
    pub subject: String,
    /// Compact JSON: what was minted or revoked (never a token or a secret).
    pub detail: String,
}

/// The one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorCommand {
    Record(ActionRecord),
}

/// The one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorEvent {
    ActionRecorded {
        #[serde(flatten)]
        record: ActionRecord,
        at: Timestamp,
    },
}

impl DomainEvent for OperatorEvent {
    fn event_type(&self) -> String {
        match self {
            OperatorEvent::ActionRecorded { .. } => "operator.action_recorded".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        OPERATOR_EVENT_VERSION.to_owned()
    }
}

/// Why recording was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("a different action is already recorded under this id")]
    Conflict,
}

impl OperatorError {
    /// A stable code for the rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            OperatorError::Conflict => "operator_action_conflict",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorAction {
    recorded: Option<(ActionRecord, Timestamp)>,
}

impl Aggregate for OperatorAction {
    const TYPE: &'static str = "operator_action";
    type Command = Stamped<OperatorCommand>;
    type Event = OperatorEvent;
    type Error = OperatorError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let OperatorCommand::Record(record) = command.command;
        match &self.recorded {
            Some((held, _)) if *held == record => Ok(()),
            Some(_) => Err(OperatorError::Conflict),
            None => {
                let event = OperatorEvent::ActionRecorded {
                    record,
                    at: command.at,
                };
                sink.write(event, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OperatorEvent::ActionRecorded { record, at } => self.recorded = Some((record, at)),
        }
    }
}

impl RuntimeAggregate for OperatorAction {
    type Action = OperatorCommand;
    type Summary = Option<(ActionRecord, Timestamp)>;

    fn summary(&self) -> Self::Summary {
        self.recorded.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn record(detail: &str) -> ActionRecord {
        ActionRecord {
            action: "mint".into(),
            actor: "user:op".into(),
            subject: "user:2|org:o".into(),
            detail: detail.into(),
        }
    }

    fn at() -> Timestamp {
        "2026-12-07T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn records_once_and_refuses_a_different_action_under_the_same_id() {
        let recorded = OperatorEvent::ActionRecorded {
            record: record("{}"),
            at: at(),
        };
        TestFramework::<OperatorAction>::with(())
            .given_no_previous_events()
            .when(Stamped::new(at(), OperatorCommand::Record(record("{}"))))
            .then_expect_events(vec![recorded.clone()]);
        TestFramework::<OperatorAction>::with(())
            .given(vec![recorded.clone()])
            .when(Stamped::new(at(), OperatorCommand::Record(record("{}"))))
            .then_expect_events(vec![]);
        TestFramework::<OperatorAction>::with(())
            .given(vec![recorded])
            .when(Stamped::new(
                at(),
                OperatorCommand::Record(record("{\"x\":1}")),
            ))
            .then_expect_error(OperatorError::Conflict);
    }
}
