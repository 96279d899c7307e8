//! `log`: the plugin's own log lines, bounded in length.

use super::HostState;
use crate::bindings::log::{Host, Level};
use crate::events::{LogLevel, LogSource};

/// Longer messages are cut: a log line is not a data channel.
const MAX_MESSAGE: usize = 4096;

host_capability!(Log, Log, log);

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
    fn long_messages_are_cut_at_a_character_boundary() {
        let message = "é".repeat(MAX_MESSAGE);
        let out = cut(message);
        assert!(out.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(out.ends_with('…'));
        assert_eq!(cut("short".into()), "short");
    }
}
