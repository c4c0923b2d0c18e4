//! The reconnect policy: what a session does when its connection ends (the
//! close-code table, the same as the JS client's `POLICY`), how long it
//! waits (exponential backoff with full jitter), and which URL it tries
//! next. Pure: no clock, no socket, no randomness of its own (the caller
//! passes a number in `[0, 1)`), so the tests assert exact decisions.

use std::fmt;
use std::time::Duration;

/// Why a connection ended, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCause {
    /// A WebSocket close code: sent by the server, 1005 (a close frame
    /// without a code), 1006 (the link was lost or never opened), or 4000
    /// (this client gave up on the link: no `welcome` in time, or no frame
    /// for `heartbeat_ms` + grace).
    Code(u16),
    /// The server refused the upgrade with this HTTP status (401, 503, ...).
    Http(u16),
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::Code(code) => write!(f, "close {code}"),
            CloseCause::Http(status) => write!(f, "HTTP {status}"),
        }
    }
}

/// What to do after a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconnect after the backoff delay.
    Reconnect,
    /// Ask the token provider for a new token and reconnect at once (then
    /// with backoff; give up after `max_auth_failures` in a row).
    Refresh,
    /// Reconnect after at least `rate_limited_delay` (or the last
    /// `retry_after_ms`, if longer), plus jitter.
    Slow,
    /// Give up: the session is closed and does not reconnect.
    Stop,
}

/// One row of the close-code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub action: Action,
    /// Try the next URL (a connection that never opened always does).
    pub rotate: bool,
    pub why: &'static str,
}

const fn row(action: Action, rotate: bool, why: &'static str) -> Policy {
    Policy { action, rotate, why }
}

/// The decision for a cause of a lost connection: the close-code table
/// (`docs/protocol.md` section 8, and `clients/js` `POLICY`).
pub fn policy_for(cause: CloseCause) -> Policy {
    use Action::*;
    match cause {
        CloseCause::Code(1000) => row(Stop, false, "the server disconnected this user"),
        CloseCause::Code(1001) => row(Reconnect, true, "going away"),
        CloseCause::Code(1002) => row(Stop, false, "protocol error: reconnecting would repeat it"),
        CloseCause::Code(1003) => row(Stop, false, "unsupported data: reconnecting would repeat it"),
        CloseCause::Code(1005) => row(Reconnect, true, "closed without a code"),
        CloseCause::Code(1006) => row(Reconnect, true, "connection lost or refused"),
        CloseCause::Code(1007) => row(Stop, false, "invalid payload: reconnecting would repeat it"),
        CloseCause::Code(1008) => row(Refresh, false, "token expired"),
        CloseCause::Code(1009) => row(Reconnect, false, "message too large"),
        CloseCause::Code(1011) => row(Reconnect, true, "server error"),
        CloseCause::Code(1012) => row(Reconnect, true, "node restarting or evicted"),
        CloseCause::Code(1013) => row(Reconnect, true, "node overloaded"),
        CloseCause::Code(4000) => row(Reconnect, true, "no welcome or no frame from the server in time"),
        CloseCause::Code(4001) => row(Reconnect, false, "server heartbeat timeout"),
        CloseCause::Code(4008) => row(Reconnect, false, "slow consumer"),
        CloseCause::Code(4029) => row(Slow, false, "rate limited"),
        CloseCause::Http(401) => row(Refresh, false, "token refused at the upgrade"),
        CloseCause::Http(503) => row(Reconnect, true, "node draining or full"),
        _ => row(Reconnect, true, "unknown close code"),
    }
}

/// Exponential backoff with full jitter: `random` (in `[0, 1)`) times
/// `min(max, min * 2^attempt)`.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, random: f64) -> Duration {
    let ceiling = min.saturating_mul(1u32 << attempt.min(30)).min(max);
    ceiling.mul_f64(random.clamp(0.0, 1.0))
}

/// The knobs of [`Reconnector`] (copied from the session's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub rate_limited_delay: Duration,
    pub max_auth_failures: u32,
}

/// What [`Reconnector::lost`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Connect to `urls[url_index]` after `delay`.
    Retry { delay: Duration, url_index: usize },
    /// Stop for good (the close code says so, or too many auth failures).
    Stop { why: &'static str },
}

/// The reconnect state across connections: attempt count, consecutive
/// auth failures, and the URL in use.
#[derive(Debug, Clone)]
pub struct Reconnector {
    backoff: Backoff,
    urls: usize,
    url_index: usize,
    attempt: u32,
    auth_failures: u32,
}

impl Reconnector {
    pub fn new(backoff: Backoff, urls: usize) -> Reconnector {
        debug_assert!(urls > 0, "a session needs at least one URL");
        Reconnector { backoff, urls: urls.max(1), url_index: 0, attempt: 0, auth_failures: 0 }
    }

    /// The URL index of the current (or next) attempt.
    pub fn url_index(&self) -> usize {
        self.url_index
    }

    /// A `welcome` arrived: the next loss starts the backoff afresh.
    pub fn connected(&mut self) {
        self.attempt = 0;
        self.auth_failures = 0;
    }

    /// The connection ended with `cause`; `opened` says whether a
    /// `welcome` came on it; `retry_after` is the last `retry_after_ms` the
    /// server sent with `rate_limited`; `random` is in `[0, 1)`.
    pub fn lost(&mut self, cause: CloseCause, opened: bool, retry_after: Duration, random: f64) -> Decision {
        let policy = policy_for(cause);
        if policy.action == Action::Refresh {
            self.auth_failures += 1;
        }
        if policy.action == Action::Stop {
            return Decision::Stop { why: policy.why };
        }
        if self.auth_failures > self.backoff.max_auth_failures {
            return Decision::Stop { why: "too many authentication failures in a row" };
        }
        if policy.rotate || !opened {
            self.url_index = (self.url_index + 1) % self.urls;
        }
        let Backoff { min_delay, max_delay, rate_limited_delay, .. } = self.backoff;
        let delay = match policy.action {
            Action::Refresh if self.auth_failures <= 1 => Duration::ZERO,
            Action::Slow => {
                rate_limited_delay.max(retry_after) + backoff_delay(0, min_delay, max_delay, random)
            }
            _ => backoff_delay(self.attempt, min_delay, max_delay, random),
        };
        self.attempt = self.attempt.saturating_add(1);
        Decision::Retry { delay, url_index: self.url_index }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn backoff() -> Backoff {
        Backoff {
            min_delay: MS(250),
            max_delay: MS(10_000),
            rate_limited_delay: MS(5_000),
            max_auth_failures: 3,
        }
    }

    #[test]
    fn backoff_ceiling_doubles_from_min_and_stops_at_max() {
        let ceilings: Vec<u64> =
            (0..8).map(|n| backoff_delay(n, MS(250), MS(10_000), 1.0).as_millis() as u64).collect();
        assert_eq!(ceilings, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(backoff_delay(1_000, MS(250), MS(10_000), 1.0), MS(10_000), "no overflow");
    }

    #[test]
    fn backoff_is_full_jitter_between_zero_and_the_ceiling() {
        assert_eq!(backoff_delay(3, MS(250), MS(10_000), 0.0), Duration::ZERO);
        assert_eq!(backoff_delay(3, MS(250), MS(10_000), 0.5), MS(1000));
    }

    #[test]
    fn the_table_matches_the_js_client_and_the_protocol() {
        use Action::*;
        let expect = [
            (CloseCause::Code(1000), Stop, false),
            (CloseCause::Code(1001), Reconnect, true),
            (CloseCause::Code(1002), Stop, false),
            (CloseCause::Code(1003), Stop, false),
            (CloseCause::Code(1005), Reconnect, true),
            (CloseCause::Code(1006), Reconnect, true),
            (CloseCause::Code(1007), Stop, false),
            (CloseCause::Code(1008), Refresh, false),
            (CloseCause::Code(1009), Reconnect, false),
            (CloseCause::Code(1011), Reconnect, true),
            (CloseCause::Code(1012), Reconnect, true),
            (CloseCause::Code(1013), Reconnect, true),
            (CloseCause::Code(4000), Reconnect, true),
            (CloseCause::Code(4001), Reconnect, false),
            (CloseCause::Code(4008), Reconnect, false),
            (CloseCause::Code(4029), Slow, false),
            (CloseCause::Http(401), Refresh, false),
            (CloseCause::Http(503), Reconnect, true),
            (CloseCause::Code(4999), Reconnect, true),
            (CloseCause::Http(500), Reconnect, true),
        ];
        for (cause, action, rotate) in expect {
            let policy = policy_for(cause);
            assert_eq!((policy.action, policy.rotate), (action, rotate), "{cause}");
        }
    }

    /// The action a README "Action" cell describes: (action, rotate).
    fn described(cell: &str, by_code: &std::collections::HashMap<String, (Action, bool)>) -> (Action, bool) {
        if let Some(like) = cell.strip_prefix("fresh token, like ") {
            return by_code[like.trim()];
        }
        let rotate = cell.contains("next URL");
        if cell.starts_with("stop") {
            return (Action::Stop, false);
        }
        if cell.starts_with("fresh token") {
            return (Action::Refresh, rotate);
        }
        if cell.starts_with("wait `rate_limited_delay`") {
            return (Action::Slow, rotate);
        }
        assert!(cell.starts_with("backoff"), "README action not understood: {cell}");
        assert!(rotate || cell.contains("same URL"), "README says which URL: {cell}");
        (Action::Reconnect, rotate)
    }

    #[test]
    fn the_table_in_the_readme_is_the_table_in_the_code() {
        let readme = include_str!("../README.md");
        let section = readme.split("## Reconnect policy").nth(1).unwrap().split("\n## ").next().unwrap();
        let rows: Vec<Vec<&str>> = section
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| Code") && !l.starts_with("|---"))
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
            .map(|cells| cells[1..cells.len() - 1].to_vec())
            .collect();
        assert!(rows.len() >= 10, "README table rows: {}", rows.len());
        let mut by_code = std::collections::HashMap::new();
        for row in &rows {
            let (codes, action) = (row[0], row[2]);
            let expected = described(action, &by_code);
            if codes == "any other" {
                let policy = policy_for(CloseCause::Code(4321));
                assert_eq!((policy.action, policy.rotate), expected, "any other");
                continue;
            }
            for code in codes.split(',').map(str::trim) {
                let cause = match code.strip_prefix("HTTP ") {
                    Some(status) => CloseCause::Http(status.parse().unwrap()),
                    None => CloseCause::Code(code.parse().unwrap_or_else(|_| panic!("code {code}"))),
                };
                let policy = policy_for(cause);
                assert_eq!((policy.action, policy.rotate), expected, "README row for {code}");
                assert!(by_code.insert(code.to_string(), expected).is_none(), "{code} listed twice");
            }
        }
        assert_eq!(by_code.len(), 18, "every code of the table is in the README: {by_code:?}");
    }

    #[test]
    fn a_lost_link_rotates_to_the_next_url_and_backs_off_more_each_attempt() {
        let mut reconnector = Reconnector::new(backoff(), 3);
        let lost = |r: &mut Reconnector| r.lost(CloseCause::Code(1006), true, Duration::ZERO, 1.0);
        assert_eq!(lost(&mut reconnector), Decision::Retry { delay: MS(250), url_index: 1 });
        assert_eq!(lost(&mut reconnector), Decision::Retry { delay: MS(500), url_index: 2 });
        assert_eq!(lost(&mut reconnector), Decision::Retry { delay: MS(1000), url_index: 0 });
        reconnector.connected();
        assert_eq!(lost(&mut reconnector), Decision::Retry { delay: MS(250), url_index: 1 });
    }

    #[test]
    fn codes_that_keep_the_url_still_move_on_when_the_link_never_opened() {
        let mut reconnector = Reconnector::new(backoff(), 2);
        let stay = reconnector.lost(CloseCause::Code(4008), true, Duration::ZERO, 0.0);
        assert_eq!(stay, Decision::Retry { delay: Duration::ZERO, url_index: 0 });
        let moved = reconnector.lost(CloseCause::Code(4008), false, Duration::ZERO, 0.0);
        assert_eq!(moved, Decision::Retry { delay: Duration::ZERO, url_index: 1 });
    }

    #[test]
    fn close_1000_and_protocol_errors_stop_for_good() {
        for code in [1000, 1002, 1003, 1007] {
            let mut reconnector = Reconnector::new(backoff(), 2);
            let decision = reconnector.lost(CloseCause::Code(code), true, Duration::ZERO, 0.5);
            assert!(matches!(decision, Decision::Stop { .. }), "{code}: {decision:?}");
        }
    }

    #[test]
    fn an_expired_token_reconnects_at_once_then_backs_off_then_gives_up() {
        let mut reconnector = Reconnector::new(backoff(), 1);
        let mut refresh = || reconnector.lost(CloseCause::Code(1008), true, Duration::ZERO, 1.0);
        assert_eq!(refresh(), Decision::Retry { delay: Duration::ZERO, url_index: 0 });
        assert_eq!(refresh(), Decision::Retry { delay: MS(500), url_index: 0 });
        assert_eq!(refresh(), Decision::Retry { delay: MS(1000), url_index: 0 });
        assert!(matches!(refresh(), Decision::Stop { .. }), "the fourth failure in a row stops");
    }

    #[test]
    fn rate_limited_waits_the_longer_of_its_delay_and_retry_after_plus_jitter() {
        let mut reconnector = Reconnector::new(backoff(), 1);
        let decision = reconnector.lost(CloseCause::Code(4029), true, MS(7_000), 1.0);
        assert_eq!(decision, Decision::Retry { delay: MS(7_250), url_index: 0 });
        let decision = reconnector.lost(CloseCause::Code(4029), true, MS(100), 0.0);
        assert_eq!(decision, Decision::Retry { delay: MS(5_000), url_index: 0 });
    }

    #[test]
    fn http_503_moves_to_the_next_node() {
        let mut reconnector = Reconnector::new(backoff(), 3);
        let decision = reconnector.lost(CloseCause::Http(503), false, Duration::ZERO, 0.0);
        assert_eq!(decision, Decision::Retry { delay: Duration::ZERO, url_index: 1 });
    }
}
