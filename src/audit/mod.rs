//! Audit bundles.
