//! Test helpers (feature `testing`): the fake LND.

pub mod fake_lnd;

pub use fake_lnd::{Behavior, FakeInvoice, FakeLnd};
