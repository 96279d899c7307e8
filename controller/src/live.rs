//! What the hub knows about the fleet right now, kept in memory only: each
//! node's recent log lines (a bounded window), recent readings per series,
//! LED frame and buzzer activity, fed by the nodes' live reports. Also the
//! commands in flight to nodes and the channels that carry them down the
//! nodes' assignment streams.

use harvester_api::live::{BuzzerActivity, Command, CommandResult, LiveReport, LogLine};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Log lines kept per node.
pub const LOG_WINDOW: usize = 2000;
/// Memory for all nodes' log windows together (`--log-memory`): with many
/// nodes each window gets a fair share of it instead of its full length.
pub const LOG_MEMORY: usize = 64 << 20;
/// A node's share never drops below this (about 100 lines) while the
/// budget allows it; past 4,096 nodes the shares shrink so the budget holds.
const MIN_NODE_LOG_BYTES: usize = 16 << 10;
/// Reading series one node may have (by plugin and name); more are dropped
/// and counted.
const SERIES_PER_NODE: usize = 64;
/// Reading series all nodes together may have.
const SERIES_TOTAL: usize = 20_000;
/// Points kept per reading series (at one per 3 s, about 15 minutes).
const HISTORY_POINTS: usize = 300;
const BUZZER_KEPT: usize = 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub plugin: String,
    pub name: String,
    pub unit: String,
    /// `[milliseconds, value]`, oldest first.
    pub points: VecDeque<(u64, f64)>,
}

/// What a kept line costs, roughly: the struct, its strings and the
/// allocator's overhead for each.
fn line_cost(l: &LogLine) -> usize {
    const PER_ALLOCATION: usize = 16;
    std::mem::size_of::<LogLine>()
        + 3 * PER_ALLOCATION
        + l.message.len()
        + l.node.len()
        + l.plugin.as_ref().map_or(0, String::len)
}

#[derive(Debug, Default)]
struct NodeLive {
    logs: VecDeque<LogLine>,
    log_bytes: usize,
    dropped_logs: u64,
    /// Readings of series past SERIES_PER_NODE or SERIES_TOTAL.
    dropped_readings: u64,
    series: BTreeMap<(String, String), Series>,
    leds: Option<Vec<String>>,
    buzzer: VecDeque<BuzzerActivity>,
    last_report: u64,
}

/// A node's live view, as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub leds: Option<Vec<String>>,
    pub buzzer: Vec<BuzzerActivity>,
    pub dropped_logs: u64,
    /// Readings of series past the hub's bounds (64 a node, 20,000 in all).
    pub dropped_readings: u64,
    pub last_report: u64,
    /// With the whole history, or only the latest point per series.
    pub series: Vec<Series>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("node {0} is not connected to the hub")]
    NotConnected(String),
    #[error("node {node} did not answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
}

pub struct Live {
    nodes: Mutex<BTreeMap<String, NodeLive>>,
    log_memory: usize,
    /// Which other node's window the next report trims, round robin, so
    /// nodes that stopped reporting shrink too.
    trim_cursor: AtomicU64,
    /// Reading series kept, all nodes together.
    series_total: AtomicU64,
    logs: broadcast::Sender<LogLine>,
    links: Mutex<HashMap<String, (u64, mpsc::Sender<Command>)>>,
    /// Commands sent, by id: the node each went to, and who waits.
    pending: Mutex<HashMap<u64, (String, oneshot::Sender<CommandResult>)>>,
    next_id: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Default for Live {
    fn default() -> Self {
        Live::new(LOG_MEMORY)
    }
}

impl NodeLive {
    fn trim(&mut self, budget: usize) {
        while self.logs.len() > LOG_WINDOW || (self.log_bytes > budget && !self.logs.is_empty()) {
            if let Some(old) = self.logs.pop_front() {
                self.log_bytes -= line_cost(&old);
            }
        }
        // A burst leaves a large buffer behind; with a thousand nodes the
        // empty slots would outweigh the lines.
        if self.logs.capacity() > 2 * self.logs.len() + 64 {
            self.logs.shrink_to(self.logs.len() + self.logs.len() / 4);
        }
    }
}

impl Live {
    /// `log_memory`: bytes for all nodes' log windows together.
    pub fn new(log_memory: usize) -> Live {
        Live {
            nodes: Mutex::new(BTreeMap::new()),
            log_memory,
            trim_cursor: AtomicU64::new(0),
            series_total: AtomicU64::new(0),
            logs: broadcast::channel(4096).0,
            links: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closing: watch::channel(false).0,
        }
    }

    /// Takes a node's report in; log lines go to followers at once.
    pub fn report(&self, node: &str, report: LiveReport, now_ms: u64) {
        let mut nodes = lock(&self.nodes);
        let live = nodes.entry(node.to_string()).or_default();
        live.last_report = now_ms;
        live.dropped_logs += report.dropped_logs;
        for mut line in report.logs {
            line.node = node.to_string();
            live.log_bytes += line_cost(&line);
            live.logs.push_back(line.clone());
            let _ = self.logs.send(line);
        }
        let share = self.log_memory / nodes.len().max(1);
        let budget = if share * nodes.len() >= MIN_NODE_LOG_BYTES * nodes.len() {
            share.max(MIN_NODE_LOG_BYTES)
        } else {
            share
        };
        if let Some(live) = nodes.get_mut(node) {
            live.trim(budget);
        }
        let i = self.trim_cursor.fetch_add(1, Ordering::Relaxed) as usize % nodes.len();
        if let Some(other) = nodes.values_mut().nth(i) {
            other.trim(budget);
        }
        let live = nodes.get_mut(node).expect("inserted above");
        let mut room = SERIES_TOTAL.saturating_sub(self.series_total.load(Ordering::Relaxed) as usize);
        // Readings are ordered by the hub's clock: the newest of a report is
        // taken as received now and the others keep their spacing to it, so
        // a board whose clock steps (a Pi has no real-time clock) neither
        // loses readings nor writes them into the past or the future.
        let newest = report.readings.iter().map(|r| r.at).max().unwrap_or(0);
        for mut r in report.readings {
            r.at = now_ms.saturating_sub(newest - r.at);
            let key = (r.plugin.clone(), r.name.clone());
            if !live.series.contains_key(&key) {
                if live.series.len() >= SERIES_PER_NODE || room == 0 {
                    live.dropped_readings += 1;
                    continue;
                }
                room -= 1;
                self.series_total.fetch_add(1, Ordering::Relaxed);
            }
            let s = live.series.entry(key).or_insert_with(|| Series {
                plugin: r.plugin.clone(),
                name: r.name.clone(),
                unit: r.unit.clone(),
                points: VecDeque::new(),
            });
            s.unit = r.unit;
            if s.points.back().is_some_and(|(at, _)| *at >= r.at) {
                continue;
            }
            if s.points.len() == HISTORY_POINTS {
                s.points.pop_front();
            }
            s.points.push_back((r.at, r.value));
        }
        if report.leds.is_some() {
            live.leds = report.leds;
        }
        for b in report.buzzer {
            if live.buzzer.len() == BUZZER_KEPT {
                live.buzzer.pop_front();
            }
            live.buzzer.push_back(b);
        }
    }

    /// Long-lived streams end when this fires, so shutdown does not wait on them.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Forgets a deleted node.
    pub fn forget(&self, node: &str) {
        if let Some(gone) = lock(&self.nodes).remove(node) {
            self.series_total.fetch_sub(gone.series.len() as u64, Ordering::Relaxed);
        }
    }

    pub fn view(&self, node: &str, history: bool) -> Option<NodeView> {
        let nodes = lock(&self.nodes);
        let live = nodes.get(node)?;
        Some(NodeView {
            leds: live.leds.clone(),
            buzzer: live.buzzer.iter().cloned().collect(),
            dropped_logs: live.dropped_logs,
            dropped_readings: live.dropped_readings,
            last_report: live.last_report,
            series: live
                .series
                .values()
                .map(|s| {
                    let mut s = s.clone();
                    if !history {
                        s.points = s.points.back().copied().into_iter().collect();
                    }
                    s
                })
                .collect(),
        })
    }

    /// Recent lines matching `filter`, oldest first, at most `tail`.
    pub fn logs(&self, filter: &LogFilter, tail: usize) -> Vec<LogLine> {
        let nodes = lock(&self.nodes);
        let mut out: Vec<LogLine> = nodes
            .iter()
            .filter(|(name, _)| filter.node.as_ref().is_none_or(|n| n == *name))
            .flat_map(|(_, live)| live.logs.iter().filter(|l| filter.matches(l)).cloned())
            .collect();
        out.sort_by_key(|l| l.at);
        let skip = out.len().saturating_sub(tail);
        out.split_off(skip)
    }

    pub fn follow_logs(&self) -> broadcast::Receiver<LogLine> {
        self.logs.subscribe()
    }

    /// A node's assignment stream opened: commands for it go down this one.
    /// Returns a token for [`Live::unlink`].
    pub fn link(&self, node: &str) -> (u64, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(16);
        let token = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.links).insert(node.to_string(), (token, tx));
        (token, rx)
    }

    /// The stream closed; a newer one for the same node stays.
    pub fn unlink(&self, node: &str, token: u64) {
        let mut links = lock(&self.links);
        if links.get(node).is_some_and(|(t, _)| *t == token) {
            links.remove(node);
        }
    }

    pub fn connected(&self, node: &str) -> bool {
        lock(&self.links).get(node).is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// Sends a command to a node's plugin and waits for the answer.
    pub async fn command(
        &self,
        node: &str,
        plugin: &str,
        name: &str,
        args: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<CommandResult, CommandError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tx = lock(&self.links)
            .get(node)
            .map(|(_, tx)| tx.clone())
            .ok_or_else(|| CommandError::NotConnected(node.to_string()))?;
        let (done, answer) = oneshot::channel();
        lock(&self.pending).insert(id, (node.to_string(), done));
        let command = Command {
            id,
            plugin: plugin.to_string(),
            name: name.to_string(),
            args,
        };
        // Either way the pending entry goes: answered, timed out, or unsent.
        let outcome = match tx.send(command).await {
            Ok(()) => tokio::time::timeout(timeout, answer).await.ok().and_then(Result::ok),
            Err(_) => {
                lock(&self.pending).remove(&id);
                return Err(CommandError::NotConnected(node.to_string()));
            }
        };
        lock(&self.pending).remove(&id);
        outcome.ok_or_else(|| CommandError::Timeout {
            node: node.to_string(),
            timeout,
        })
    }

    /// `node` answered command `id`. Only the node a command went to may
    /// answer it.
    pub fn answer(&self, node: &str, id: u64, result: CommandResult) -> Answered {
        let mut pending = lock(&self.pending);
        match pending.get(&id) {
            Some((to, _)) if to != node => Answered::NotSentTo,
            Some(_) => {
                let (_, tx) = pending.remove(&id).expect("present");
                if tx.send(result).is_ok() {
                    Answered::Delivered
                } else {
                    Answered::Gone
                }
            }
            None => Answered::Gone,
        }
    }
}

/// Which log lines someone wants.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub node: Option<String>,
    pub plugin: Option<String>,
}

impl LogFilter {
    pub fn matches(&self, l: &LogLine) -> bool {
        self.node.as_ref().is_none_or(|n| *n == l.node)
            && self.plugin.as_ref().is_none_or(|p| l.plugin.as_ref() == Some(p))
    }
}

/// What became of a command's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Delivered,
    /// Whoever asked gave up waiting.
    Gone,
    /// The command went to another node.
    NotSentTo,
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_api::live::LiveReading;

    fn line(at: u64, plugin: Option<&str>, message: &str) -> LogLine {
        LogLine {
            at,
            node: String::new(),
            plugin: plugin.map(str::to_string),
            level: harvester_api::live::LogLevel::Info,
            source: harvester_api::live::LogSource::Node,
            message: message.into(),
        }
    }

    #[test]
    fn keeps_a_bounded_window_per_node_and_filters() {
        let live = Live::default();
        let logs = (0..LOG_WINDOW as u64 + 10)
            .map(|i| line(i, None, &format!("n{i}")))
            .collect();
        live.report(
            "pi4",
            LiveReport {
                logs,
                ..LiveReport::default()
            },
            1,
        );
        live.report(
            "hub",
            LiveReport {
                logs: vec![line(5, Some("system"), "hello")],
                ..LiveReport::default()
            },
            1,
        );
        let all_pi4 = live.logs(
            &LogFilter {
                node: Some("pi4".into()),
                plugin: None,
            },
            usize::MAX,
        );
        assert_eq!(all_pi4.len(), LOG_WINDOW);
        assert_eq!(all_pi4[0].message, "n10");
        assert!(all_pi4.iter().all(|l| l.node == "pi4"));
        let system = live.logs(
            &LogFilter {
                node: None,
                plugin: Some("system".into()),
            },
            10,
        );
        assert_eq!(system.len(), 1);
        assert_eq!(system[0].node, "hub");
        assert_eq!(live.logs(&LogFilter::default(), 3).len(), 3);
    }

    #[test]
    fn log_windows_share_a_memory_budget() {
        let one_line = line_cost(&LogLine {
            node: "n0".into(),
            ..line(0, None, "x")
        });
        // Room for 300 one-character lines in all: 3 nodes get ~100 each.
        let live = Live::new(300 * one_line);
        for n in 0..3 {
            let logs = (0..1000).map(|i| line(i, None, "x")).collect();
            live.report(
                &format!("n{n}"),
                LiveReport {
                    logs,
                    ..LiveReport::default()
                },
                1,
            );
        }
        // Later reports trim the others' windows too, round robin.
        for _ in 0..3 {
            live.report("n2", LiveReport::default(), 2);
        }
        let kept = |n: &str| {
            live.logs(
                &LogFilter {
                    node: Some(n.into()),
                    plugin: None,
                },
                usize::MAX,
            )
            .len()
        };
        // The budget holds for all of them together, even below the
        // minimum share: each keeps its third.
        for n in ["n0", "n1", "n2"] {
            assert!(kept(n) <= 101, "{n}: {}", kept(n));
            assert!(kept(n) >= 99, "{n}: {}", kept(n));
        }
        // The newest lines are the ones kept.
        let n2 = live.logs(
            &LogFilter {
                node: Some("n2".into()),
                plugin: None,
            },
            1,
        );
        assert_eq!(n2[0].at, 999);
    }

    #[test]
    fn reading_series_are_bounded_per_node_and_freed_with_it() {
        let live = Live::default();
        let readings = (0..1000)
            .map(|i| LiveReading {
                plugin: "spam".into(),
                name: format!("s{i}"),
                unit: "u".into(),
                value: 1.0,
                at: 1,
            })
            .collect();
        live.report(
            "n0",
            LiveReport {
                readings,
                ..LiveReport::default()
            },
            1,
        );
        let view = live.view("n0", true).unwrap();
        assert_eq!(view.series.len(), SERIES_PER_NODE);
        assert_eq!(view.dropped_readings, 1000 - SERIES_PER_NODE as u64);
        live.forget("n0");
        assert_eq!(live.series_total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn series_keep_order_and_drop_repeats() {
        let live = Live::default();
        let reading = |at, value| LiveReading {
            plugin: "dht22".into(),
            name: "temperature".into(),
            value,
            unit: "celsius".into(),
            at,
        };
        live.report(
            "pi4",
            LiveReport {
                readings: vec![reading(1, 20.0), reading(2, 21.0), reading(2, 21.0), reading(1, 5.0)],
                ..LiveReport::default()
            },
            2,
        );
        let v = live.view("pi4", true).unwrap();
        assert_eq!(v.series[0].points, VecDeque::from(vec![(1, 20.0), (2, 21.0)]));
        let latest = live.view("pi4", false).unwrap();
        assert_eq!(latest.series[0].points, VecDeque::from(vec![(2, 21.0)]));
        // The board's clock stepped back behind what it sent before: its
        // readings still count, at the hub's time of receipt, as far apart
        // as sent.
        live.report(
            "pi4",
            LiveReport {
                readings: vec![reading(0, 22.0), reading(1, 23.0)],
                ..LiveReport::default()
            },
            3_600_000,
        );
        let v = live.view("pi4", true).unwrap();
        assert_eq!(
            v.series[0].points,
            VecDeque::from(vec![(1, 20.0), (2, 21.0), (3_599_999, 22.0), (3_600_000, 23.0)])
        );
    }

    #[tokio::test]
    async fn commands_travel_over_the_link_and_time_out() {
        let live = std::sync::Arc::new(Live::default());
        let err = live
            .command("pi4", "buzzer", "short", vec![], Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::NotConnected(_)), "{err}");
        let (_token, mut rx) = live.link("pi4");
        let node = {
            let live = live.clone();
            tokio::spawn(async move {
                let c = rx.recv().await.unwrap();
                assert_eq!((c.plugin.as_str(), c.name.as_str()), ("buzzer", "short"));
                let result = CommandResult {
                    ok: true,
                    message: "played short".into(),
                };
                // Only the node the command went to may answer it.
                assert_eq!(live.answer("pi3", c.id, result.clone()), Answered::NotSentTo);
                assert_eq!(live.answer("pi4", c.id, result.clone()), Answered::Delivered);
                assert_eq!(live.answer("pi4", c.id, result), Answered::Gone);
                rx
            })
        };
        let r = live
            .command("pi4", "buzzer", "short", vec![], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.message, "played short");
        let _rx = node.await.unwrap();
        let err = live
            .command("pi4", "buzzer", "long", vec![], Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    }
}
