//! `log`: the plugin's own log lines, bounded in length, and the budget of
//! every line a plugin writes (log calls, stdout, stderr) per second.

use super::HostState;
use crate::bindings::log::{Host, Level};
use crate::events::{LogLevel, LogSource};

/// Longer messages are cut: a log line is not a data channel.
const MAX_MESSAGE: usize = 4096;

/// Lines per second a plugin may write, on average, and in a burst.
pub const LINES_PER_SECOND: f64 = 50.0;
const BURST: f64 = 500.0;

host_capability!(Log, Log, log);

/// How often, at most, the node says a plugin's lines are being dropped.
const SAY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A plugin's line budget, a token bucket kept across its versions.
#[derive(Debug)]
pub(crate) struct LogBudget(std::sync::Mutex<Bucket>);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    /// Lines dropped and not yet said.
    dropped: u64,
    /// When the node last said something about dropped lines.
    said: Option<std::time::Instant>,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget(std::sync::Mutex::new(Bucket {
            tokens: BURST,
            at: std::time::Instant::now(),
            dropped: 0,
            said: None,
        }))
    }
}

/// What the budget says of one line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it; first say that `dropped` lines went before it (0: nothing
    /// to say, or said recently).
    Write {
        dropped: u64,
    },
    /// Dropped, and time to say that lines are being dropped.
    FirstDropped,
    Dropped,
}

impl LogBudget {
    /// At most one line about dropped lines every [`SAY_EVERY`], however
    /// the plugin writes: the node's own lines are not a flood either.
    pub(crate) fn admit(&self, now: std::time::Instant) -> Admit {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        b.tokens = (b.tokens + elapsed * LINES_PER_SECOND).min(BURST);
        let may_say = b.said.is_none_or(|t| now.saturating_duration_since(t) >= SAY_EVERY);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            if b.dropped > 0 && may_say {
                b.said = Some(now);
                return Admit::Write {
                    dropped: std::mem::take(&mut b.dropped),
                };
            }
            return Admit::Write { dropped: 0 };
        }
        b.dropped += 1;
        if may_say {
            b.said = Some(now);
            Admit::FirstDropped
        } else {
            Admit::Dropped
        }
    }
}

fn cut(message: String) -> String {
    harvester_api::truncate(message, MAX_MESSAGE)
}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.ctx.log(level, LogSource::Plugin, cut(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_and_said_at_most_once_every_ten_seconds() {
        let budget = LogBudget::default();
        let t = std::time::Instant::now();
        for _ in 0..BURST as usize {
            assert_eq!(budget.admit(t), Admit::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(t), Admit::FirstDropped);
        for _ in 0..99 {
            assert_eq!(budget.admit(t), Admit::Dropped);
        }
        // A trickle gets through; still over the budget on and off, and
        // nothing more is said for ten seconds.
        let secs = |s: u64| t + std::time::Duration::from_secs(s);
        assert_eq!(budget.admit(secs(1)), Admit::Write { dropped: 0 });
        for _ in 0..49 {
            assert_eq!(budget.admit(secs(1)), Admit::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(secs(1)), Admit::Dropped);
        // Then how many went, once.
        assert_eq!(budget.admit(secs(11)), Admit::Write { dropped: 101 });
        assert_eq!(budget.admit(secs(11)), Admit::Write { dropped: 0 });
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let message = "é".repeat(MAX_MESSAGE);
        let out = cut(message);
        assert!(out.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(out.ends_with('…'));
        assert_eq!(cut("short".into()), "short");
    }
}
