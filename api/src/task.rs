//! Tasks that must not die: a panic inside one (a bug, whatever input
//! reached it) is logged with the task's name, counted, and the task is
//! started again after a pause, while the rest of the process goes on.

use std::future::Future;
use std::time::Duration;
use tracing::Instrument;
use tracing::instrument::WithSubscriber;

/// Runs `make()` as a task, again after each panic (waiting `pause`, then
/// twice that, up to a minute); ends when the task returns. Aborting the
/// returned handle aborts the task it runs. The task logs in the tracing
/// span (and to the subscriber) of its caller: in a process running
/// several nodes, its lines stay those of the node that started it.
pub fn supervise<F, Fut>(
    name: &'static str,
    on_panic: impl Fn(&'static str) + Send + 'static,
    pause: Duration,
    make: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let supervisor = async move {
        let mut wait = pause;
        loop {
            let mut task = AbortOnDrop(tokio::spawn(make().in_current_span().with_current_subscriber()));
            let outcome = task.await_it().await;
            match outcome {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let why = panic_message(e.into_panic());
                    tracing::error!(task = name, "panicked: {why}; starting it again in {wait:?}");
                    on_panic(name);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
                Err(_) => return,
            }
        }
    };
    tokio::spawn(supervisor.in_current_span().with_current_subscriber())
}

/// Aborts the task when dropped: a supervisor aborted takes its task along.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    async fn await_it(&mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => s.to_string(),
            Err(_) => "(no message)".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_started_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let panics = Arc::new(AtomicUsize::new(0));
        let (r, p) = (runs.clone(), panics.clone());
        let handle = supervise(
            "flaky",
            move |name| {
                assert_eq!(name, "flaky");
                p.fetch_add(1, Ordering::SeqCst);
            },
            Duration::from_millis(1),
            move || {
                let r = r.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("bad input");
                    }
                }
            },
        );
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(panics.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn aborting_the_supervisor_stops_its_task() {
        let alive = Arc::new(AtomicUsize::new(0));
        let a = alive.clone();
        let handle = supervise(
            "forever",
            |_| {},
            Duration::from_millis(1),
            move || {
                let a = a.clone();
                async move {
                    loop {
                        a.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            },
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        handle.abort();
        let _ = handle.await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = alive.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(
            alive.load(Ordering::SeqCst),
            seen,
            "the task ran on after its supervisor was aborted"
        );
    }
}
