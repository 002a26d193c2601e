//! Dashboard sessions: signing in with the admin token gives a random
//! session id in an `HttpOnly; SameSite=Strict` cookie; the session lives
//! here, in memory, with an idle and an absolute expiry. Each session has
//! its own CSRF token, which every state-changing form sends back.
//!
//! The map is keyed by the SHA-256 of the session id, so neither a lookup's
//! timing nor a memory dump gives a usable id. Sessions end with the
//! process: a restart signs everyone out, which is the safe direction.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

/// A session ends this long after its last request.
pub const IDLE_MS: i64 = 60 * 60 * 1000;
/// …and at the latest this long after sign-in.
pub const MAX_AGE_MS: i64 = 12 * 60 * 60 * 1000;
/// Most live sessions; signing in beyond ends the oldest.
pub const MAX_SESSIONS: usize = 1_000;

/// The name of the session cookie.
pub const COOKIE: &str = "switchboard_session";

/// A signed-in session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token forms must send back (`csrf` field) to change anything.
    pub csrf: String,
}

impl Session {
    /// Does a form's `csrf` field belong to this session?
    pub fn csrf_matches(&self, given: &str) -> bool {
        !given.is_empty() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    created: i64,
    last_seen: i64,
}

impl Entry {
    fn live(&self, now: i64) -> bool {
        now - self.last_seen < IDLE_MS && now - self.created < MAX_AGE_MS
    }
}

/// Every live session. A std Mutex: nothing async happens while it is held.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// Start a session at `now`; returns its id (for the cookie).
    pub fn create(&self, now: i64) -> String {
        let id = random_hex();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.live(now));
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.created).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            key(&id),
            Entry {
                csrf: random_hex(),
                created: now,
                last_seen: now,
            },
        );
        id
    }

    /// The live session of `id` at `now` (which counts as activity), if any.
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(id);
        let entry = map.get_mut(&k)?;
        if !entry.live(now) {
            map.remove(&k);
            return None;
        }
        entry.last_seen = now;
        Some(Session {
            csrf: entry.csrf.clone(),
        })
    }

    /// Sign out.
    pub fn remove(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_when_idle_and_at_its_maximum_age() {
        let s = Sessions::default();
        let id = s.create(0);
        assert!(s.get("someone-else", 1).is_none());
        assert!(s.get(&id, IDLE_MS - 1).is_some(), "activity extends it");
        assert!(s.get(&id, 2 * IDLE_MS - 2).is_some());
        assert!(s.get(&id, 3 * IDLE_MS).is_none(), "idle too long");
        assert!(s.get(&id, 1).is_none(), "an expired session is gone");

        let id = s.create(0);
        let mut t = 0;
        while t + IDLE_MS / 2 < MAX_AGE_MS {
            t += IDLE_MS / 2;
            assert!(s.get(&id, t).is_some(), "at {t}");
        }
        assert!(s.get(&id, MAX_AGE_MS).is_none(), "too old, however active");
    }

    #[test]
    fn csrf_tokens_are_per_session_and_sign_out_ends_it() {
        let s = Sessions::default();
        let (a, b) = (s.create(0), s.create(0));
        let (sa, sb) = (s.get(&a, 1).unwrap(), s.get(&b, 1).unwrap());
        assert!(sa.csrf_matches(&sa.csrf));
        assert!(!sa.csrf_matches(&sb.csrf));
        assert!(!sa.csrf_matches(""));
        s.remove(&a);
        assert!(s.get(&a, 2).is_none());
        assert!(s.get(&b, 2).is_some());
    }

    #[test]
    fn signing_in_beyond_the_cap_ends_the_oldest_session() {
        let s = Sessions::default();
        let first = s.create(0);
        for t in 1..MAX_SESSIONS as i64 {
            s.create(t);
        }
        let last = s.create(MAX_SESSIONS as i64);
        assert!(s.get(&first, MAX_SESSIONS as i64).is_none());
        assert!(s.get(&last, MAX_SESSIONS as i64).is_some());
    }
}
