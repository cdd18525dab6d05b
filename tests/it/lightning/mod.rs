//! The Lightning lane end to end: the payment executor and the L402 gateway/reconcile, over real
//! HTTP, real gRPC over TLS to an in-process fake LND, real journals and a real killed child process.

mod answers;
mod audit_secrets;
mod executor;
mod l402;
mod l402_proxy;
mod lease;
mod outcomes;
mod read_model;
