//! Test helpers (feature `testing`): the fake LND.

pub mod fake_lnd;

pub use fake_lnd::{Behavior, FakeInvoice, FakeLnd, SendFault};
/// gRPC status codes, for scripting [`SendFault::Status`] without a direct `tonic` dependency.
pub use tonic::Code as GrpcCode;
