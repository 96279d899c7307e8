//! Dashboard sessions. A session is a random id in a cookie, kept here by
//! its SHA-256, and tied to one user record (the record's uid, not only the
//! name): it ends on sign-out, when its user is deleted (a user made again
//! under the same name does not inherit it), or after [`SESSION_LIFETIME`].
//! The event streams a session opened end with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How long a dashboard sign-in lasts.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once, all users together.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    user: String,
    uid: String,
    expires: SystemTime,
    /// Cancelled when the session ends: its open streams close.
    ended: CancellationToken,
}

#[derive(Default)]
pub(crate) struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

fn key(id: &str) -> String {
    harvester_pki::sha256_hex(id.as_bytes())
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_hash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session of the user record `uid` named `user`: its id.
    pub(super) fn start(&self, user: &str, uid: &str) -> String {
        let id = harvester_pki::random_hex(32);
        let now = SystemTime::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| {
            let live = s.expires > now;
            if !live {
                s.ended.cancel();
            }
            live
        });
        if sessions.len() >= MAX_SESSIONS {
            // The oldest go first: a flood of sign-ins cannot grow the map.
            let oldest = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone());
            if let Some(s) = oldest.and_then(|k| sessions.remove(&k)) {
                s.ended.cancel();
            }
        }
        sessions.insert(
            key(&id),
            Session {
                user: user.to_string(),
                uid: uid.to_string(),
                expires: now + SESSION_LIFETIME,
                ended: CancellationToken::new(),
            },
        );
        id
    }

    /// The user name and record uid of a live session.
    pub(super) fn get(&self, id: &str) -> Option<(String, String)> {
        let k = key(id);
        let mut sessions = self.lock();
        let s = sessions.get(&k)?;
        if SystemTime::now() > s.expires {
            if let Some(s) = sessions.remove(&k) {
                s.ended.cancel();
            }
            return None;
        }
        Some((s.user.clone(), s.uid.clone()))
    }

    /// Ends one session (signing out): its streams close.
    pub(super) fn end(&self, id: &str) {
        if let Some(s) = self.lock().remove(&key(id)) {
            s.ended.cancel();
        }
    }

    /// Ends every session of `user`; how many.
    pub(super) fn end_user(&self, user: &str) -> usize {
        let mut ended = 0;
        self.lock().retain(|_, s| {
            if s.user == user {
                s.ended.cancel();
                ended += 1;
                false
            } else {
                true
            }
        });
        ended
    }

    /// Cancelled when the session ends; already cancelled when there is no
    /// such session.
    pub(super) fn ended(&self, id: &str) -> CancellationToken {
        match self.lock().get(&key(id)) {
            Some(s) => s.ended.clone(),
            None => {
                let t = CancellationToken::new();
                t.cancel();
                t
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}
