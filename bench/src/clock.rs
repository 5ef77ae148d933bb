//! One monotonic clock for the whole harness, so that an accept time taken by
//! the load generator and a receipt time taken by the receiver can be
//! subtracted.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the clock; later calls do nothing.
pub fn init() {
    START.get_or_init(Instant::now);
}

fn start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Microseconds since [`init`].
pub fn now_us() -> u64 {
    start().elapsed().as_micros() as u64
}

/// Returns the instant `us` microseconds after [`init`].
pub fn instant_at(us: u64) -> Instant {
    start() + Duration::from_micros(us)
}
