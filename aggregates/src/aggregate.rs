//! What the runtime needs from an aggregate beyond cqrs-es's `Aggregate`: commands stamped with
//! their time, a cheap summary for responses, and upcasting of older stored event versions.

use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;

use crate::Timestamp;

/// A command together with the instant the engine accepted it. Domain logic reads time only
/// from here, so handling the same stamped commands always produces the same events.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped<C> {
    pub at: Timestamp,
    pub command: C,
}

impl<C> Stamped<C> {
    pub fn new(at: Timestamp, command: C) -> Self {
        Self { at, command }
    }
}

/// An aggregate the runtime engine can execute.
pub trait RuntimeAggregate:
    Aggregate<Command = Stamped<Self::Action>, Services = ()> + 'static
{
    /// The unstamped command type (what callers build).
    type Action: Clone + Send + Sync + 'static;
    /// A small, cheaply cloned view of the state, returned with every command outcome.
    type Summary: Clone + Send + Sync + std::fmt::Debug + 'static;

    fn summary(&self) -> Self::Summary;

    /// Roughly how many bytes this aggregate holds in memory, for the engine's byte-bounded
    /// cache. The default is the inline size; aggregates with collections that grow add them.
    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }

    /// When `action` repeats one the aggregate already recorded (a natural-key duplicate, such
    /// as a frame or request re-sent with the same id, that it answers with no events): the
    /// journal sequence of the event that recorded it, so a retry learns where it landed.
    fn recorded_sequence(&self, _action: &Self::Action) -> Option<u64> {
        None
    }

    /// Rewrites an event stored in an older `event_version` into the current shape. The default
    /// keeps events as they are; aggregates with history override it.
    fn upcast(event: SerializedEvent) -> SerializedEvent {
        event
    }
}
