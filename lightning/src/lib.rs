//! The Lightning payment lane: a Bolt11 payment executor that pays through LND under spend caps
//! exactly once, and the L402 control-plane reconcile for an Aperture proxy.
//!
//! Not implemented yet: this crate only fixes the dependency direction (`lightning` implements
//! service traits that `aggregates` will define; LND's generated gRPC types never leave it).
#![forbid(unsafe_code)]
