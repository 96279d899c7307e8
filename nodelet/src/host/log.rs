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

/// A plugin's line budget, a token bucket kept across its versions.
#[derive(Debug)]
pub(crate) struct LogBudget(std::sync::Mutex<Bucket>);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    /// Lines dropped since the last one that passed.
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget(std::sync::Mutex::new(Bucket {
            tokens: BURST,
            at: std::time::Instant::now(),
            dropped: 0,
        }))
    }
}

/// What the budget says of one line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it; `dropped` lines went before it since the last one written.
    Write {
        dropped: u64,
    },
    /// The first line dropped in a run: say so once.
    FirstDropped,
    Dropped,
}

impl LogBudget {
    pub(crate) fn admit(&self, now: std::time::Instant) -> Admit {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        b.tokens = (b.tokens + elapsed * LINES_PER_SECOND).min(BURST);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admit::Write {
                dropped: std::mem::take(&mut b.dropped),
            };
        }
        b.dropped += 1;
        if b.dropped == 1 {
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
    fn a_flood_is_cut_said_once_and_counted_when_lines_flow_again() {
        let budget = LogBudget::default();
        let t = std::time::Instant::now();
        for _ in 0..BURST as usize {
            assert_eq!(budget.admit(t), Admit::Write { dropped: 0 });
        }
        assert_eq!(budget.admit(t), Admit::FirstDropped);
        for _ in 0..99 {
            assert_eq!(budget.admit(t), Admit::Dropped);
        }
        let later = t + std::time::Duration::from_secs(1);
        assert_eq!(budget.admit(later), Admit::Write { dropped: 100 });
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
