//! Fuzzes `parse_schedule`, which reads `retry_schedule` from the config and
//! an endpoint's `retrySchedule` from the API.
//!
//! On success it asserts the documented bounds: at most 50 delays, each from
//! 1 ms to 30 days. It also formats the delays as the API returns them and
//! asserts that parsing the text gives the same delays. This holds at full
//! precision and after rounding down to the milliseconds an endpoint stores.

#![no_main]

use std::time::Duration;

use hookd::config::parse_schedule;
use libfuzzer_sys::fuzz_target;

const MAX_DELAYS: usize = 50;
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Formats delays the way the API returns an endpoint's schedule: each with
/// `humantime::format_duration`, joined by commas.
fn format_schedule(delays: &[Duration]) -> String {
    delays
        .iter()
        .map(|delay| humantime::format_duration(*delay).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(delays) = parse_schedule(text) else {
        return;
    };

    assert!(delays.len() <= MAX_DELAYS, "{text:?}: {delays:?}");
    for delay in &delays {
        assert!(*delay >= Duration::from_millis(1), "{text:?}: {delay:?}");
        assert!(*delay <= MAX_DELAY, "{text:?}: {delay:?}");
    }

    let formatted = format_schedule(&delays);
    let reparsed = parse_schedule(&formatted)
        .unwrap_or_else(|err| panic!("{text:?} formatted as {formatted:?}: {err}"));
    assert_eq!(reparsed, delays, "{text:?} formatted as {formatted:?}");

    let millis: Vec<Duration> = delays
        .iter()
        .map(|delay| Duration::from_millis(delay.as_millis() as u64))
        .collect();
    let formatted = format_schedule(&millis);
    let reparsed = parse_schedule(&formatted)
        .unwrap_or_else(|err| panic!("{text:?} in milliseconds as {formatted:?}: {err}"));
    assert_eq!(
        reparsed, millis,
        "{text:?} in milliseconds as {formatted:?}"
    );
});
