//! The runtime's integration tests: one test binary, real databases, real HTTP, real processes.
//!
//! PostgreSQL tests use a fresh database each (`engine::testing::TestDb`); they are skipped with a
//! message when PostgreSQL is unreachable, and fail instead when `CI` is set.

mod app;
mod child;
mod support;

mod api;
mod audit;
mod audit_log;
mod audit_trust;
mod auth;
mod cli;
mod concurrency;
mod console;
mod crash;
mod fuzz;
mod journal;
mod khala;
mod khala_e2e;
mod khala_nodes;
mod lightning;
mod openapi;
mod projection;
mod replay;
mod replica;
mod soak;
mod store;
mod sweeper;
mod trust;
