//! The audit log: an RFC 9162 Merkle tree over the journal in global commit order, its signed
//! checkpoints, and the proofs a client checks against a checkpoint it already holds
//! (`docs/audit.md`).
//!
//! # Layout
//! - [`merkle`]: RFC 9162 hashing, inclusion and consistency proofs (pure).
//! - [`leaf`]: an event's leaf (`openagents.audit_leaf.v1`) and the salted commitments that
//!   replace secret fields (`openagents.redaction.v1`), so redacted events still prove.
//! - [`checkpoint`]: signed tree heads (`openagents.audit_checkpoint.v1`) and the audit key.
//! - [`store`]: the stored tree on both journals: the maintainer that extends it off the write
//!   path (exactly once, crash safe), checkpoints, and proofs read from the stored nodes.

pub mod checkpoint;
pub mod leaf;
pub mod merkle;
pub mod store;

pub use checkpoint::{AuditKey, Checkpoint, CheckpointError};
pub use merkle::{Hash, ProofError};
pub use store::{AuditStore, TreeState};
