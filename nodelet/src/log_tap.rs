//! Which node a log line is from. One process may run several nodes (the
//! herd test, the benchmarks' agents), each posting its own lines to the hub
//! under its own name, so the buffer of lines belongs to the node, not to
//! the process.
//!
//! A node runs inside its span ([`node_span`]), which carries the node's
//! [`LogBuffer`]. [`LogTap`], the tracing layer, copies an event into the
//! buffer of the nearest node span around it, and drops events outside any
//! node. Work a node hands to another task or thread (a plugin's thread, a
//! blocking call, a supervised task) takes the node's span along
//! ([`spawn`], [`spawn_blocking`], [`LogContext`]), so its lines find their
//! node too.

use crate::uplink::LogBuffer;
use harvester_api::live::{LogLevel, LogLine, LogSource};
use std::future::Future;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::instrument::{Instrument, Instrumented, WithDispatch, WithSubscriber};
use tracing::{Dispatch, Span};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, Registry};

/// The span extension that marks a node's span: where its lines go, if
/// anywhere.
struct Tap(Option<Arc<LogBuffer>>);

/// The span a node runs in, named after it; its events go to `logs` (none
/// when the node posts no lines, standalone). The buffer is attached when
/// the process's subscriber is built on `tracing_subscriber`'s registry,
/// as `harvester`'s is; with another subscriber, no line is tapped.
///
/// At level ERROR so that any log filter short of `off` keeps it: a node's
/// lines must not lose their node because its span was filtered out.
pub fn node_span(name: &str, logs: Option<&Arc<LogBuffer>>) -> Span {
    let span = tracing::error_span!("node", name = %name);
    Span::with_subscriber(&span, |(id, dispatch)| {
        if let Some(span) = dispatch.downcast_ref::<Registry>().and_then(|r| r.span(id)) {
            span.extensions_mut().insert(Tap(logs.cloned()));
        }
    });
    span
}

/// The node a piece of work belongs to, to carry it to another thread: its
/// span, and the subscriber in use (a test may run nodes under a scoped
/// one rather than the process's global subscriber).
#[derive(Clone)]
pub struct LogContext {
    span: Span,
    dispatch: Dispatch,
}

impl LogContext {
    /// The context of the calling code.
    pub fn current() -> LogContext {
        LogContext {
            span: Span::current(),
            dispatch: tracing::dispatcher::get_default(Dispatch::clone),
        }
    }

    /// Runs `f` in this context (on another thread, say).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::dispatcher::with_default(&self.dispatch, || self.span.in_scope(f))
    }

    /// `fut` polled in this context, wherever it runs.
    pub fn bind<F: Future>(&self, fut: F) -> WithDispatch<Instrumented<F>> {
        fut.instrument(self.span.clone()).with_subscriber(self.dispatch.clone())
    }
}

/// `tokio::spawn`, the task keeping the caller's node.
pub(crate) fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(LogContext::current().bind(fut))
}

/// `tokio::task::spawn_blocking`, the call keeping the caller's node.
pub(crate) fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let cx = LogContext::current();
    tokio::task::spawn_blocking(move || cx.run(f))
}

/// A tracing layer that copies the nodes' own log events that pass the log
/// filter into the buffer of the node that emitted them; free for events
/// outside a node. Plugins' lines reach the buffer typed, not through here.
pub struct LogTap;

#[derive(Default)]
struct Fields {
    message: String,
    plugin: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "plugin" => self.plugin = Some(value.to_string()),
            name => {
                use std::fmt::Write;
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "plugin" => self.plugin = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for LogTap
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() == crate::report::PLUGIN_LINES {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else { return };
        // The nearest node's buffer: never an outer node's.
        let Some(buffer) = scope
            .into_iter()
            .find_map(|span| span.extensions().get::<Tap>().map(|t| t.0.clone()))
            .flatten()
        else {
            return;
        };
        let mut f = Fields::default();
        event.record(&mut f);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            _ => LogLevel::Debug,
        };
        buffer.push(LogLine {
            at: harvester_api::now_ms(),
            node: String::new(),
            plugin: f.plugin,
            level,
            source: LogSource::Node,
            message: f.message + &f.rest,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn messages(buffer: &LogBuffer) -> Vec<String> {
        buffer.take(100).0.into_iter().map(|l| l.message).collect()
    }

    /// Logs from every kind of place a node's work runs: its own task, a
    /// task it spawned, a blocking call, a thread of its own (a plugin's).
    async fn work(name: &'static str) {
        tracing::info!("{name}: in the node");
        spawn(async move { tracing::info!("{name}: in a task") }).await.unwrap();
        spawn_blocking(move || tracing::info!("{name}: in a blocking call"))
            .await
            .unwrap();
        let cx = LogContext::current();
        std::thread::spawn(move || cx.run(|| tracing::info!("{name}: in a thread")))
            .join()
            .unwrap();
    }

    #[test]
    fn two_nodes_in_one_process_each_get_only_their_own_lines() {
        let subscriber = tracing_subscriber::registry().with(LogTap);
        let _default = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (a, b) = (Arc::new(LogBuffer::new(100)), Arc::new(LogBuffer::new(100)));
        rt.block_on(async {
            let left = LogContext::current().bind(work("left").instrument(node_span("left", Some(&a))));
            let right = LogContext::current().bind(work("right").instrument(node_span("right", Some(&b))));
            // Both at once, interleaved on the same worker threads.
            let (left, right) = tokio::join!(spawn(left), spawn(right));
            left.unwrap();
            right.unwrap();
            tracing::info!("outside any node");
        });
        let places = ["in the node", "in a task", "in a blocking call", "in a thread"];
        for (name, buffer) in [("left", &a), ("right", &b)] {
            let mut got = messages(buffer);
            got.sort();
            let mut want: Vec<String> = places.iter().map(|p| format!("{name}: {p}")).collect();
            want.sort();
            assert_eq!(got, want, "{name}'s buffer");
        }
    }

    #[test]
    fn a_node_that_posts_no_lines_lends_none_to_another() {
        let subscriber = tracing_subscriber::registry().with(LogTap);
        let _default = tracing::subscriber::set_default(subscriber);
        let outer = Arc::new(LogBuffer::new(10));
        node_span("outer", Some(&outer)).in_scope(|| {
            tracing::info!(plugin = "probe", "mine");
            node_span("standalone", None).in_scope(|| tracing::info!("not posted"));
        });
        let (lines, _) = outer.take(10);
        assert_eq!(lines.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["mine"]);
        assert_eq!(lines[0].plugin.as_deref(), Some("probe"));
    }
}
