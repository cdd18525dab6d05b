//! Fan-out: one [`Tailer`] per topic per node reads new stream rows once, prepares each row's
//! JSON once, keeps a bounded window of recent rows, and hands rows to per-principal [`Feed`]s
//! that only the matching sessions read and are woken by.
//!
//! - [`prepared`]: a stream row serialized once and shared (`Arc`) by every session.
//! - [`tailer`]: the per-topic reader, its window and its feed index.

pub mod prepared;
pub mod tailer;

pub use prepared::PreparedRow;
pub use tailer::{Feed, FeedHandle, Pulled, Tailer};
