//! Who may use the dashboard: the operator token (a file in the state dir, 0600, made on the first
//! start), one-time login links, sessions (an HttpOnly, SameSite=Strict cookie and a CSRF token
//! each) and the login rate limit. Everything here is in memory: a restart logs everyone out.
//!
//! Never compares a secret with `==` on the secret itself (sha256 digests are compared), and never
//! puts a secret in a log line.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time login link stays valid.
pub const LINK_TTL: Duration = Duration::from_secs(10 * 60);
/// The most sessions kept at once; the oldest goes when a new one would pass it.
pub const MAX_SESSIONS: usize = 64;
/// The most one-time links outstanding at once.
pub const MAX_LINKS: usize = 64;
/// How long an alert's link to its item stays usable (once).
pub const ALERT_LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most unused alert links kept (the oldest go first).
pub const MAX_ALERT_LINKS: usize = 1024;
/// Failed logins allowed per [`FAILURE_WINDOW`]; past that every login is refused until the
/// window moves on (a right token too: guessing must not be able to race the limit).
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hive_session";
/// The login form's own CSRF cookie (a double-submit token: there is no session yet).
pub const LOGIN_COOKIE: &str = "hive_login";

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the kernel's random source");
    hex::encode(bytes)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Reads the operator token at `path`, or makes one (0600, never wider) when there is none.
/// A token file readable by group or others is refused: it is the operator's password.
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    use std::io::ErrorKind;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.is_file() {
                return Err(std::io::Error::other(format!(
                    "{} is not a regular file; remove it and start again to make a new token",
                    path.display()
                )));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} is readable by group or others; chmod 600 it",
                    path.display()
                )));
            }
            let token = std::fs::read_to_string(path)?.trim().to_owned();
            if token.len() < 16 {
                return Err(std::io::Error::other(format!(
                    "{} holds less than 16 characters; remove it to make a new token",
                    path.display()
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let token = random_token();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc_o_nofollow())
                .open(path)?;
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

struct Session {
    csrf: String,
    expires: Instant,
    created: Instant,
}

/// A logged-in browser: what a page needs to make its forms.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub csrf: String,
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefused {
    WrongToken,
    RateLimited,
}

pub struct Auth {
    token: [u8; 32],
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    links: Mutex<HashMap<[u8; 32], Instant>>,
    /// Alerts' one-time links: a dashboard path each (they open it; they do not log in).
    alert_links: Mutex<HashMap<[u8; 32], (Instant, String)>>,
    failures: Mutex<VecDeque<Instant>>,
}

impl Auth {
    pub fn new(operator_token: &str) -> Self {
        Self {
            token: digest(operator_token),
            sessions: Mutex::default(),
            links: Mutex::default(),
            alert_links: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Checks a login with the operator token; on success returns the new session's cookie value.
    pub fn login(&self, token: &str) -> Result<String, LoginRefused> {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("failures");
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
        {
            failures.pop_front();
        }
        if failures.len() >= MAX_FAILURES {
            return Err(LoginRefused::RateLimited);
        }
        if digest(token.trim()) != self.token {
            failures.push_back(now);
            return Err(LoginRefused::WrongToken);
        }
        drop(failures);
        Ok(self.new_session())
    }

    /// Mints a one-time login link's secret (for `hive dashboard`, over the admin socket).
    pub fn new_link(&self) -> String {
        let secret = random_token();
        let now = Instant::now();
        let mut links = self.links.lock().expect("links");
        links.retain(|_, expires| *expires > now);
        if links.len() >= MAX_LINKS
            && let Some(oldest) = links.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            links.remove(&oldest);
        }
        links.insert(digest(&secret), now + LINK_TTL);
        secret
    }

    /// Mints the secret of an alert's one-time link to `path` (a dashboard page). It only opens
    /// the page: without a session the operator logs in first, so a link read by others (an
    /// alert topic may be public) gives them nothing.
    pub fn new_alert_link(&self, path: &str) -> String {
        let secret = random_token();
        let now = Instant::now();
        let mut links = self.alert_links.lock().expect("alert links");
        links.retain(|_, (expires, _)| *expires > now);
        if links.len() >= MAX_ALERT_LINKS
            && let Some(oldest) = links.iter().min_by_key(|(_, (e, _))| *e).map(|(k, _)| *k)
        {
            links.remove(&oldest);
        }
        links.insert(digest(&secret), (now + ALERT_LINK_TTL, path.to_owned()));
        secret
    }

    /// Uses up an alert's link: its path when it was valid, else `None`.
    pub fn use_alert_link(&self, secret: &str) -> Option<String> {
        let (expires, path) = self
            .alert_links
            .lock()
            .expect("alert links")
            .remove(&digest(secret))?;
        (expires > Instant::now()).then_some(path)
    }

    /// Uses up a one-time link: a session cookie value when it was valid, else `None`.
    pub fn use_link(&self, secret: &str) -> Option<String> {
        let expires = self.links.lock().expect("links").remove(&digest(secret))?;
        (expires > Instant::now()).then(|| self.new_session())
    }

    fn new_session(&self) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions");
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            digest(&id),
            Session {
                csrf: random_token(),
                expires: now + SESSION_TTL,
                created: now,
            },
        );
        id
    }

    /// The live session with this cookie value.
    pub fn session(&self, cookie: &str) -> Option<SessionInfo> {
        let sessions = self.sessions.lock().expect("sessions");
        let s = sessions.get(&digest(cookie))?;
        (s.expires > Instant::now()).then(|| SessionInfo {
            csrf: s.csrf.clone(),
        })
    }

    pub fn logout(&self, cookie: &str) {
        self.sessions
            .lock()
            .expect("sessions")
            .remove(&digest(cookie));
    }

    /// How many sessions exist (tests assert a refused login made none).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("sessions").len()
    }
}

/// Whether two secrets are equal, without an early exit on the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    digest(a) == digest(b)
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, the whole site.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_works_once() {
        let auth = Auth::new("operator-token-0123456789");
        let link = auth.new_link();
        let cookie = auth.use_link(&link).expect("first use");
        assert!(auth.session(&cookie).is_some());
        assert!(auth.use_link(&link).is_none());
    }

    #[test]
    fn failures_past_the_limit_refuse_even_the_right_token() {
        let auth = Auth::new("operator-token-0123456789");
        for _ in 0..MAX_FAILURES {
            assert_eq!(auth.login("wrong"), Err(LoginRefused::WrongToken));
        }
        assert_eq!(
            auth.login("operator-token-0123456789"),
            Err(LoginRefused::RateLimited)
        );
        assert_eq!(auth.session_count(), 0);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; hive_session=abc".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
