//! Test-only network faults on the peer links: partitions, message loss and
//! delay, for the fault-injection suite (issue 6) on loopback, where there is
//! no network to break.
//!
//! Enabled only when the environment variable `RAFTKV_NET_FAULTS` names a
//! file; the server re-reads it whenever it changes (checked every 50 ms).
//! Each line is one rule for raft messages this node *sends* (a partition is
//! made by giving both sides a `drop` rule):
//!
//! ```text
//! drop 2,3          # drop every message to nodes 2 and 3
//! loss 10           # drop 10% of messages to every peer, at random
//! delay 50 25       # delay every message by 50 ms +- 25 ms (order kept)
//! ```
//!
//! An empty file means no faults. Client traffic is never affected. Why a
//! layer in the transport rather than a TCP proxy per link: every node is
//! reached by all its peers at one advertised address, so a proxy could not
//! tell the link 1->3 from 2->3 without per-link addresses; the layer sees
//! both ends of every message and needs no extra processes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// The variable naming the rules file.
pub const ENV_VAR: &str = "RAFTKV_NET_FAULTS";

const RELOAD_EVERY: Duration = Duration::from_millis(50);

/// The rules in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub drop_to: BTreeSet<u64>,
    /// Share of messages dropped, 0.0..=1.0.
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Drop,
    /// Send, not before the given instant (if any).
    Send(Option<Instant>),
}

impl Rules {
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut rules = Rules::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            let number = |word: Option<&str>| -> Result<u64, String> {
                word.ok_or_else(|| bad("missing number"))?
                    .parse()
                    .map_err(|_| bad("not a number"))
            };
            match words.next() {
                Some("drop") => {
                    for id in words.next().ok_or_else(|| bad("missing ids"))?.split(',') {
                        rules
                            .drop_to
                            .insert(id.parse().map_err(|_| bad("not a node id"))?);
                    }
                }
                Some("loss") => rules.loss = (number(words.next())? as f64 / 100.0).min(1.0),
                Some("delay") => {
                    rules.delay = Duration::from_millis(number(words.next())?);
                    rules.jitter = match words.next() {
                        Some(word) => Duration::from_millis(number(Some(word))?),
                        None => Duration::ZERO,
                    };
                }
                _ => return Err(bad("unknown rule (drop, loss, delay)")),
            }
        }
        Ok(rules)
    }

    pub fn fate(&self, to: u64) -> Fate {
        if self.drop_to.contains(&to) || (self.loss > 0.0 && rand::random::<f64>() < self.loss) {
            return Fate::Drop;
        }
        if self.delay.is_zero() && self.jitter.is_zero() {
            return Fate::Send(None);
        }
        let jitter_ms = self.jitter.as_millis() as i64;
        let offset = if jitter_ms > 0 {
            rand::random::<i64>().rem_euclid(2 * jitter_ms + 1) - jitter_ms
        } else {
            0
        };
        let delay_ms = (self.delay.as_millis() as i64 + offset).max(0) as u64;
        Fate::Send(Some(Instant::now() + Duration::from_millis(delay_ms)))
    }
}

/// The live rules, reloaded from the file by a background task.
#[derive(Clone, Default)]
pub struct NetFaults {
    rules: Arc<RwLock<Rules>>,
}

impl NetFaults {
    /// Starts watching the file named by `RAFTKV_NET_FAULTS`, if set.
    pub fn from_env(runtime: &tokio::runtime::Handle) -> Option<NetFaults> {
        let path = PathBuf::from(std::env::var_os(ENV_VAR)?);
        tracing::warn!(
            "test-only network faults enabled from {} ({ENV_VAR})",
            path.display()
        );
        let faults = NetFaults::default();
        let rules = faults.rules.clone();
        runtime.spawn(async move {
            let mut seen: Option<(SystemTime, u64)> = None;
            loop {
                let stamp = std::fs::metadata(&path)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                if stamp != seen {
                    seen = stamp;
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match Rules::parse(&text) {
                        Ok(new) => {
                            tracing::warn!("network faults now: {new:?}");
                            *rules.write().expect("rules lock") = new;
                        }
                        Err(e) => tracing::error!("ignoring {}: {e}", path.display()),
                    }
                }
                tokio::time::sleep(RELOAD_EVERY).await;
            }
        });
        Some(faults)
    }

    pub fn fate(&self, to: u64) -> Fate {
        self.rules.read().expect("rules lock").fate(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_decide() {
        let rules = Rules::parse("drop 2,3\n# comment\nloss 0\ndelay 50 25\n").unwrap();
        assert_eq!(rules.drop_to, BTreeSet::from([2, 3]));
        assert_eq!(rules.fate(2), Fate::Drop);
        match rules.fate(4) {
            Fate::Send(Some(at)) => {
                let wait = at.saturating_duration_since(Instant::now());
                assert!(wait <= Duration::from_millis(75), "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Rules::parse("").unwrap(), Rules::default());
        assert_eq!(Rules::parse("loss 100").unwrap().fate(1), Fate::Drop);
        assert!(Rules::parse("flood 3").is_err());
        assert!(Rules::parse("drop x").is_err());
    }
}
