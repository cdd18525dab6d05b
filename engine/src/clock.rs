//! Injectable time and id sources. Domain code never reads the wall clock or a random generator:
//! the engine stamps commands through these, and tests swap in deterministic ones.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use aggregates::Timestamp;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock, made strictly increasing: two calls never return the same microsecond and
/// never go backwards, even if the wall clock steps back.
#[derive(Debug, Default)]
pub struct SystemClock {
    last_micros: AtomicI64,
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let wall = Timestamp::from_datetime(chrono::Utc::now()).unix_micros();
        let mut last = self.last_micros.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + 1);
            match self.last_micros.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Timestamp::from_unix_micros(next)
                        .expect("the system clock is inside chrono's range")
                }
                Err(actual) => last = actual,
            }
        }
    }
}

/// A clock that only moves when told to; each `now()` also advances it by `step_micros`.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
    step_micros: i64,
}

impl ManualClock {
    pub fn new(start: Timestamp, step_micros: i64) -> Self {
        Self {
            micros: AtomicI64::new(start.unix_micros()),
            step_micros,
        }
    }

    /// Moves the clock forward by `millis`.
    pub fn advance_millis(&self, millis: i64) {
        self.micros.fetch_add(millis * 1000, Ordering::Relaxed);
    }

    /// Sets the clock.
    pub fn set(&self, at: Timestamp) {
        self.micros.store(at.unix_micros(), Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        let micros = self.micros.fetch_add(self.step_micros, Ordering::Relaxed);
        Timestamp::from_unix_micros(micros).expect("manual clock stays in range")
    }
}

/// Where new ids come from (run, worker and request ids the server has to invent).
pub trait IdSource: Send + Sync + 'static {
    /// A new unique id with the given prefix, e.g. `codexw_0192…`.
    fn next_id(&self, prefix: &str) -> String;
}

/// UUIDv7-based ids: unique, and sortable by creation time.
#[derive(Debug, Default)]
pub struct UuidV7Ids;

impl IdSource for UuidV7Ids {
    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", uuid::Uuid::now_v7().simple())
    }
}

/// Deterministic ids: `<prefix>000001`, `<prefix>000002`, …
#[derive(Debug, Default)]
pub struct SequentialIds {
    next: AtomicU64,
}

impl IdSource for SequentialIds {
    fn next_id(&self, prefix: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{prefix}{n:06}")
    }
}

/// The clock and id source the engine uses, shareable across tasks.
#[derive(Clone)]
pub struct Stamps {
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
}

impl Stamps {
    /// Wall clock and UUIDv7 ids.
    pub fn system() -> Self {
        Self {
            clock: Arc::new(SystemClock::default()),
            ids: Arc::new(UuidV7Ids),
        }
    }
}

/// Unix milliseconds on the wall clock, for leases, expiries and bookkeeping outside the
/// domain's decisions (those take time from a [`Clock`]).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_strictly_increasing() {
        let clock = SystemClock::default();
        let mut last = clock.now();
        for _ in 0..10_000 {
            let now = clock.now();
            assert!(now > last);
            last = now;
        }
    }

    #[test]
    fn manual_clock_steps_and_advances() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start, 1_000);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.now().to_rfc3339(), "2026-01-01T00:00:00.001Z");
        clock.advance_millis(1_000);
        assert_eq!(clock.now().to_rfc3339(), "2026-01-01T00:00:01.002Z");
    }

    #[test]
    fn sequential_ids_are_deterministic() {
        let ids = SequentialIds::default();
        assert_eq!(ids.next_id("run_"), "run_000001");
        assert_eq!(ids.next_id("run_"), "run_000002");
    }
}
