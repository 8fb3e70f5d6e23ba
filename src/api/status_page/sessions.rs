//! Sessions of the status page: a login with an admin token gets a random session id, kept
//! in an HttpOnly cookie, so the token itself never travels again. Sessions live in this
//! replica's memory, expire after `SESSION_TTL`, and end when their token is revoked.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use rand::RngCore;

use crate::access::Principal;

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Above this many sessions, expired ones are dropped and, if still full, the oldest.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    principal: Principal,
    expires_at: DateTime<Utc>,
}

/// The logged-in sessions, by id.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session of `principal` from `now`; returns its id.
    pub fn start(&self, principal: Principal, now: DateTime<Utc>) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let expires_at = now + SESSION_TTL;
        let mut sessions = self.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, session| session.expires_at > now);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires_at)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                principal,
                expires_at,
            },
        );
        id
    }

    /// The principal of session `id`, if it is still valid at `now`.
    pub fn principal(&self, id: &str, now: DateTime<Utc>) -> Option<Principal> {
        let mut sessions = self.lock();
        match sessions.get(id) {
            Some(session) if session.expires_at > now => Some(session.principal.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::default();
        let now = Utc::now();
        let id = sessions.start(Principal::ServerAdmin, now);
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.principal(&id, now), Some(Principal::ServerAdmin));
        let later = now + SESSION_TTL;
        assert_eq!(sessions.principal(&id, later), None, "expired");
        let other = sessions.start(Principal::ServerAdmin, now);
        sessions.end(&other);
        assert_eq!(sessions.principal(&other, now), None, "logged out");
        assert_eq!(sessions.principal("forged", now), None);
    }
}
