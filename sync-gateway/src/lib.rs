//! Khala, the sync gateway: a subscriber of the projectors' sync stream that will serve the
//! Phoenix Channels v2 `sync:v1` protocol over WebSockets (replay from a client's watermark, then
//! live deltas). It never writes authority state.
//!
//! Not implemented yet: this crate only fixes the dependency direction
//! (`sync-gateway` → `projectors`). The read API it will consume is
//! `projectors::store` (hydration and stream-after-watermark).
#![forbid(unsafe_code)]
