//! Parsers of plain values shared by many settings (whole numbers in a range, durations, addresses, non-empty text),
//! each with the error line it reports.
//!
//! Why its own module: a component's own values are parsed by that component; these belong to none.

use std::net::SocketAddr;
use std::time::Duration;

pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, &'static str> {
    s.trim()
        .parse()
        .map_err(|_| "must be an address and port such as 127.0.0.1:8080")
}

/// A whole number in `min..=max`.
pub(super) fn whole<T: TryFrom<u64>>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, String> {
    move |s| match s.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n)) {
        Some(n) => T::try_from(n).map_err(|_| format!("must be a whole number from {min} to {max}")),
        None => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// A duration of `n` seconds, `n` as `parse` reads it.
pub(super) fn secs(parse: impl Fn(&str) -> Result<u64, String>) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| parse(s).map(Duration::from_secs)
}

/// A duration of `n` milliseconds, `n` as `parse` reads it.
pub(super) fn millis(parse: impl Fn(&str) -> Result<u64, String>) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| parse(s).map(Duration::from_millis)
}

/// Whole seconds from 1 to `max`.
pub(super) fn seconds(max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= max => Ok(Duration::from_secs(n)),
        _ => Err(format!("must be a whole number of seconds from 1 to {max}")),
    }
}

pub(super) fn non_empty(s: &str) -> Result<String, &'static str> {
    match s.trim() {
        "" => Err("must not be empty"),
        t => Ok(t.to_owned()),
    }
}
