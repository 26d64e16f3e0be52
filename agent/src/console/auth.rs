//! Who is signed in: sessions kept in memory (a cookie holds a random id), their roles,
//! and the CSRF token every state-changing request must carry.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ring::rand::{SecureRandom as _, SystemRandom};
use serde::Serialize;

use crate::config::RolesConfig;

/// The session cookie: host-only, HTTPS-only, not readable by scripts, never sent on
/// cross-site requests.
pub const SESSION_COOKIE: &str = "__Host-tollgate-session";
/// The sign-in flow's cookie (state of one authorization request): `Lax`, because the
/// provider's redirect back is a cross-site navigation.
pub const FLOW_COOKIE: &str = "__Host-tollgate-flow";
/// The header a state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a reviewer may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads sessions, jobs, approvals and the audit trail.
    Viewer,
    /// Also approves and denies requests.
    Approver,
    /// Also revokes grants.
    Admin,
}

impl Role {
    /// The highest role the claim's values give, if any.
    pub fn from_claim(roles: &RolesConfig, values: &[String]) -> Option<Self> {
        let has = |listed: &[String]| values.iter().any(|v| listed.contains(v));
        if has(&roles.admin) {
            Some(Self::Admin)
        } else if has(&roles.approver) {
            Some(Self::Approver)
        } else if has(&roles.viewer) {
            Some(Self::Viewer)
        } else {
            None
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Approver => "approver",
            Self::Admin => "admin",
        }
    }
}

/// A signed-in reviewer.
#[derive(Debug, Clone, Serialize)]
pub struct Reviewer {
    pub issuer: String,
    pub subject: String,
    /// The login claim (`preferred_username` by default): shown in records and compared
    /// with a job's actor.
    pub login: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub reviewer: Reviewer,
    pub csrf: String,
    expires: Instant,
}

/// Signed-in sessions, by the id their cookie holds.
pub struct Sessions {
    ttl: Duration,
    max: usize,
    rng: SystemRandom,
    by_id: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn random_token(rng: &SystemRandom) -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    // The system's random source does not fail on Linux (getrandom); if it ever did, an
    // all-zero token would be predictable, so give up rather than hand it out.
    if rng.fill(&mut bytes).is_err() {
        std::process::abort();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares secrets in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            rng: SystemRandom::new(),
            by_id: Mutex::new(HashMap::new()),
        }
    }

    pub fn token(&self) -> String {
        random_token(&self.rng)
    }

    /// Starts a session; returns its id (for the cookie).
    pub fn start(&self, reviewer: Reviewer) -> String {
        let id = self.token();
        let session = Session {
            reviewer,
            csrf: self.token(),
            expires: Instant::now() + self.ttl,
        };
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        by_id.retain(|_, s| s.expires > now);
        if by_id.len() >= self.max
            && let Some(oldest) = by_id
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
        {
            by_id.remove(&oldest);
        }
        by_id.insert(id.clone(), session);
        id
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        match by_id.get(id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                by_id.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// A `Set-Cookie` value: `__Host-` cookies are Secure, Path=/ and host-only.
pub fn set_cookie(name: &str, value: &str, same_site: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={}",
        max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewer(role: Role) -> Reviewer {
        Reviewer {
            issuer: "https://idp".to_owned(),
            subject: "1".to_owned(),
            login: "alice".to_owned(),
            name: None,
            email: None,
            role,
        }
    }

    #[test]
    fn roles_come_from_the_claim_and_the_highest_wins() {
        let roles = RolesConfig {
            claim: "groups".to_owned(),
            viewer: vec!["eng".to_owned()],
            approver: vec!["sre".to_owned()],
            admin: vec!["secops".to_owned()],
        };
        let of = |values: &[&str]| {
            let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            Role::from_claim(&roles, &values)
        };
        assert_eq!(of(&["eng"]), Some(Role::Viewer));
        assert_eq!(of(&["eng", "sre"]), Some(Role::Approver));
        assert_eq!(of(&["secops"]), Some(Role::Admin));
        assert_eq!(of(&["marketing"]), None);
        assert_eq!(of(&[]), None);
        assert!(Role::Admin > Role::Approver && Role::Approver > Role::Viewer);
    }

    #[test]
    fn sessions_expire_and_the_oldest_goes_when_full() {
        let sessions = Sessions::new(Duration::from_secs(3600), 2);
        let a = sessions.start(reviewer(Role::Viewer));
        let b = sessions.start(reviewer(Role::Approver));
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(sessions.get(&a).is_some());
        let c = sessions.start(reviewer(Role::Admin));
        assert!(sessions.get(&a).is_none(), "the oldest was dropped");
        assert!(sessions.get(&b).is_some() && sessions.get(&c).is_some());
        sessions.end(&b);
        assert!(sessions.get(&b).is_none());
        let short = Sessions::new(Duration::ZERO, 2);
        let d = short.start(reviewer(Role::Viewer));
        assert!(short.get(&d).is_none(), "expired");
    }

    #[test]
    fn cookies_and_secrets() {
        let header = "a=1; __Host-tollgate-session=abc; b=2";
        assert_eq!(cookie(header, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(header, "c"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        let set = set_cookie(SESSION_COOKIE, "v", "Strict", Duration::from_secs(60));
        assert!(
            set.contains("Secure; HttpOnly; SameSite=Strict; Max-Age=60"),
            "{set}"
        );
    }
}
