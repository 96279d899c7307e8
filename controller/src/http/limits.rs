//! What one identity may take of the hub: requests per second (a token
//! bucket per user, node, or address for who has no identity; 429 with
//! Retry-After past it), open streams at once (watches, log follows, the
//! page's event streams), and the number of Nodes the hub keeps.

use super::ApiError;
use crate::identity::Identity;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bounds, as the controller's flags set them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApiLimits {
    /// Requests per second each identity may make, on average.
    pub requests_per_second: f64,
    /// How many it may make at once after being quiet.
    pub burst: f64,
    /// Streams each identity may hold open at once.
    pub streams_per_identity: usize,
    /// Nodes the hub keeps; a new one past this is refused.
    pub max_nodes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            requests_per_second: 5000.0,
            burst: 10_000.0,
            streams_per_identity: 32,
            max_nodes: 10_000,
        }
    }
}

/// Buckets kept at most; past this the ones idle for a minute go (a full
/// bucket is what a new one would be anyway).
const MAX_BUCKETS: usize = 100_000;

pub(crate) struct Limits {
    pub config: ApiLimits,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who a request counts against: the identity, else its address.
pub(crate) fn key(who: Option<&Identity>, addr: Option<std::net::SocketAddr>) -> String {
    match who {
        Some(Identity::User { name, .. }) => format!("user/{name}"),
        Some(Identity::Node { name, .. }) => format!("node/{name}"),
        _ => format!("ip/{}", addr.map(|a| a.ip().to_string()).unwrap_or_default()),
    }
}

impl Limits {
    pub(crate) fn new(config: ApiLimits) -> Limits {
        Limits {
            config,
            buckets: Mutex::new(HashMap::new()),
            streams: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one.
    pub(crate) fn request(&self, key: &str) -> Result<(), ApiError> {
        let (rate, burst) = (self.config.requests_per_second.max(0.001), self.config.burst.max(1.0));
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, (_, last)| now.duration_since(*last) < Duration::from_secs(60));
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + rate * now.duration_since(*last).as_secs_f64()).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - *tokens) / rate).ceil().max(1.0) as u64;
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!("{key} made more than {rate} requests a second (--rate-limit); retry in {wait}s"),
        )
        .retry_after(wait))
    }

    /// A slot for one more open stream of `who`, held until dropped.
    pub(crate) fn stream(&self, who: &Identity) -> Result<StreamSlot, ApiError> {
        let key = key(Some(who), None);
        let mut streams = lock(&self.streams);
        let open = streams.entry(key.clone()).or_insert(0);
        if *open >= self.config.streams_per_identity {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyStreams",
                format!(
                    "{key} already holds {open} open streams (watches, log follows; --max-streams): close one first"
                ),
            )
            .retry_after(5));
        }
        *open += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            key,
        })
    }
}

/// One open stream, counted until dropped.
pub(crate) struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = lock(&self.streams);
        if let Some(n) = streams.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_429_with_retry_after() {
        let limits = Limits::new(ApiLimits {
            requests_per_second: 1.0,
            burst: 3.0,
            ..ApiLimits::default()
        });
        for _ in 0..3 {
            assert!(limits.request("user/a").is_ok());
        }
        let refused = limits.request("user/a").unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.message().contains("user/a"), "{}", refused.message());
        assert!(limits.request("user/b").is_ok(), "each identity has its own bucket");
    }

    #[test]
    fn streams_are_counted_until_dropped() {
        let limits = Limits::new(ApiLimits {
            streams_per_identity: 2,
            ..ApiLimits::default()
        });
        let who = Identity::User {
            name: "a".into(),
            role: harvester_api::identity::Role::Viewer,
            uid: String::new(),
        };
        let one = limits.stream(&who).unwrap();
        let _two = limits.stream(&who).unwrap();
        assert!(limits.stream(&who).is_err());
        drop(one);
        assert!(limits.stream(&who).is_ok());
    }
}
