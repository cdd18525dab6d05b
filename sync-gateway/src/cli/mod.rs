//! Commands the root binary exposes: `watch` (the reference Khala client) and `token mint`.
//! Each is a `clap::Args` type plus an async `run` function; the root adds the enum variants.

pub mod token;
pub mod watch;

pub use token::{run_token_mint, TokenMintArgs};
pub use watch::{run_watch, watch, WatchArgs, WatchEvent, WatchState};
