//! Benchmarks behind `openagents-runtime bench …`. Each prints its figures beside a raw baseline
//! measured in the same run; results and commands are recorded in `docs/BENCHMARKS.md`.

pub mod append;
pub mod project;
