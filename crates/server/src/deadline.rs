//! The caller's deadline (`grpc-timeout`), which bounds how long the server
//! waits on its behalf (a write's commit, a membership change's steps).

use std::time::Duration;

use tokio::time::Instant;

/// Longest a call waits when the caller set no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Metadata a client may send instead of `grpc-timeout` (same syntax): how
/// long it waits. Unlike `grpc-timeout`, tonic arms no timer of its own for
/// it; the server bounds its own wait (writes, see `kv_service`).
pub const WAIT_HEADER: &str = "raftkv-wait";

/// The deadline a caller sent (`grpc-timeout`, or `raftkv-wait`), less a
/// margin for the reply to travel back; `DEFAULT_WAIT` when none was sent.
pub fn deadline_of<T>(request: &tonic::Request<T>) -> Instant {
    let metadata = request.metadata();
    let wait = metadata
        .get("grpc-timeout")
        .or_else(|| metadata.get(WAIT_HEADER))
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(DEFAULT_WAIT, |d| {
            d.saturating_sub(d / 10).min(Duration::from_secs(600))
        });
    Instant::now() + wait
}

/// `grpc-timeout` values: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_with_their_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout("4999m"),
            Some(Duration::from_millis(4999))
        );
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("7"), None);
        assert_eq!(parse_grpc_timeout("x5S"), None);
        assert_eq!(parse_grpc_timeout("5X"), None);
    }
}
