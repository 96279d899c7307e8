//! The node's live report to the hub: its own log lines (its tracing
//! events, through [`crate::log_tap::LogTap`]) and its plugins' (typed,
//! from the runtime's reporter), telemetry readings, the LED frame and
//! buzzer activity, pushed about once a second over the same outbound HTTP
//! connection the agent uses.
//!
//! Lines wait in a bounded buffer while the hub is unreachable; beyond it
//! the oldest are dropped and counted, so a long outage cannot exhaust a
//! board's memory.

use crate::events::EventKind;
use crate::runtime::Runtime;
use harvester_api::live::{BuzzerActivity, LiveReading, LiveReport, LogLine};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines kept while the hub is unreachable.
pub const LOG_BUFFER: usize = 2000;
/// Readings kept while the hub is unreachable.
const READINGS_KEPT: usize = 2000;
/// Buzzer actions kept while the hub is unreachable: the newest.
const BUZZER_KEPT: usize = 100;
/// Lines per report; a burst is sent in several.
const LINES_PER_REPORT: usize = 500;
const INTERVAL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Buffered {
    lines: VecDeque<LogLine>,
    dropped: u64,
}

/// A node's log lines waiting to go to the hub: one per node, made by its
/// composition root ([`crate::node`]).
#[derive(Default)]
pub struct LogBuffer {
    inner: Mutex<Buffered>,
    capacity: usize,
    /// Wakes the pusher early when a burst arrives.
    pub(crate) burst: tokio::sync::Notify,
}

impl std::fmt::Debug for LogBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogBuffer({} lines)", self.len())
    }
}

impl LogBuffer {
    pub fn new(capacity: usize) -> LogBuffer {
        LogBuffer {
            inner: Mutex::new(Buffered::default()),
            capacity,
            burst: tokio::sync::Notify::new(),
        }
    }

    pub fn push(&self, line: LogLine) {
        let mut b = lock(&self.inner);
        if b.lines.len() >= self.capacity {
            b.lines.pop_front();
            b.dropped += 1;
        }
        b.lines.push_back(line);
        if b.lines.len() == LINES_PER_REPORT {
            self.burst.notify_one();
        }
    }

    /// Takes up to `max` lines and the count dropped since the last take.
    pub fn take(&self, max: usize) -> (Vec<LogLine>, u64) {
        let mut b = lock(&self.inner);
        let n = b.lines.len().min(max);
        let lines = b.lines.drain(..n).collect();
        (lines, std::mem::take(&mut b.dropped))
    }

    /// Puts lines back after a failed send, ahead of newer ones.
    pub fn put_back(&self, lines: Vec<LogLine>, dropped: u64) {
        let mut b = lock(&self.inner);
        b.dropped += dropped;
        for line in lines.into_iter().rev() {
            if b.lines.len() >= self.capacity {
                b.dropped += 1;
                continue;
            }
            b.lines.push_front(line);
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the pusher gathered since its last successful report.
#[derive(Default)]
struct Pending {
    readings: VecDeque<LiveReading>,
    buzzer: VecDeque<BuzzerActivity>,
}

impl Pending {
    fn reading(&mut self, reading: LiveReading) {
        if self.readings.len() == READINGS_KEPT {
            self.readings.pop_front();
        }
        self.readings.push_back(reading);
    }

    /// Keeps the newest actions: the dashboard shows what happened last.
    fn buzzer(&mut self, activity: BuzzerActivity) {
        if self.buzzer.len() == BUZZER_KEPT {
            self.buzzer.pop_front();
        }
        self.buzzer.push_back(activity);
    }
}

/// Pushes live reports to `url` until aborted.
/// `http` gives the link's client as of now (a renewed certificate makes a new one).
pub(crate) async fn run(
    http: impl Fn() -> reqwest::Client,
    url: String,
    runtime: Arc<Runtime>,
    logs: Option<Arc<LogBuffer>>,
) {
    let mut events = runtime.subscribe();
    let mut pending = Pending::default();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let has_leds = runtime.hardware().leds.is_some();
    loop {
        let burst = async {
            match &logs {
                Some(l) => l.burst.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = burst => {}
            ev = events.recv() => {
                match ev {
                    Ok(ev) => match ev.kind {
                        EventKind::Telemetry { name, value, unit } => pending.reading(LiveReading {
                            plugin: ev.plugin,
                            name,
                            value,
                            unit,
                            at: harvester_api::unix_ms(ev.at),
                        }),
                        EventKind::Buzzer { action } => pending.buzzer(BuzzerActivity {
                            at: harvester_api::unix_ms(ev.at),
                            plugin: ev.plugin,
                            action,
                        }),
                        _ => {}
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
                continue;
            }
        }
        let (lines, dropped) = logs.as_ref().map(|l| l.take(LINES_PER_REPORT)).unwrap_or_default();
        let report = LiveReport {
            logs: lines,
            dropped_logs: dropped,
            readings: pending.readings.iter().cloned().collect(),
            leds: has_leds.then(|| runtime.led_frame().iter().map(|c| c.hex()).collect()),
            buzzer: pending.buzzer.iter().cloned().collect(),
        };
        let sent = http()
            .post(&url)
            .timeout(Duration::from_secs(10))
            .json(&report)
            .send()
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| match r.status().is_success() {
                true => Ok(()),
                false => Err(anyhow::anyhow!("{}", r.status())),
            });
        match sent {
            Ok(()) => {
                pending.readings.clear();
                pending.buzzer.clear();
            }
            Err(e) => {
                tracing::debug!("live report not delivered: {e:#}");
                if let Some(l) = &logs {
                    l.put_back(report.logs, report.dropped_logs);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> LogLine {
        LogLine {
            at: i as u64,
            node: String::new(),
            plugin: None,
            level: harvester_api::live::LogLevel::Info,
            source: harvester_api::live::LogSource::Node,
            message: format!("line {i}"),
        }
    }

    #[test]
    fn buzzer_actions_kept_while_the_hub_is_away_are_the_newest() {
        let mut p = Pending::default();
        for i in 0..(BUZZER_KEPT as u64 + 5) {
            p.buzzer(BuzzerActivity {
                at: i,
                plugin: "buzzer".into(),
                action: "short".into(),
            });
        }
        assert_eq!(p.buzzer.len(), BUZZER_KEPT);
        assert_eq!(p.buzzer.front().map(|b| b.at), Some(5));
        assert_eq!(p.buzzer.back().map(|b| b.at), Some(BUZZER_KEPT as u64 + 4));
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let b = LogBuffer::new(3);
        for i in 0..5 {
            b.push(line(i));
        }
        let (lines, dropped) = b.take(10);
        assert_eq!(dropped, 2);
        assert_eq!(lines.iter().map(|l| l.at).collect::<Vec<_>>(), vec![2, 3, 4]);
        // A failed send puts lines back in order, ahead of newer ones.
        b.push(line(5));
        b.put_back(lines, dropped);
        let (again, dropped) = b.take(10);
        assert_eq!(again.iter().map(|l| l.at).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(dropped, 3, "the two dropped before and line 2, the oldest");
    }
}
