//! The OpenAgents Runtime's composition root: CLI subcommands and HTTP surfaces built on the
//! workspace crates.
//!
//! # Layout
//! - [`replay`]: deterministic replay of fixtures, REPLAY.jsonl files and compat histories; the
//!   `--journal` drift check; `bench replay`.
//! - [`audit`]: audit bundles (export, verify), the run artifact HTTP routes, `bench export`.
#![forbid(unsafe_code)]

pub mod audit;
pub mod replay;
