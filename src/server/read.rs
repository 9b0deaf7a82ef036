//! Private catalogs: every read is authenticated (HTTP basic auth, as `https://USER:TOKEN@HOST`
//! makes Incus and LXD send, or a bearer token) against the users file, which is read again
//! when it changes. Failed attempts are logged without the credential and limited per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::access::{UsersError, UsersFile, Visibility};
use crate::tree::FileSig;

/// Failed attempts an address may make within [`WINDOW`] before it is refused for [`WINDOW`].
const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses (IPv4, IPv6 /64 networks) whose failures are counted at once.
const MAX_TRACKED: usize = 4096;

/// Where failures are counted: an IPv4 address, or the /64 network of an IPv6 one (one host
/// has a whole /64 to pick addresses from).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// How often the users file is looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

struct Loaded {
    file: Arc<UsersFile>,
    sig: Option<FileSig>,
    checked: Instant,
}

/// The readers of a private server.
pub(crate) struct ReadAccess {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Who the request is, or the answer that refuses it.
pub(crate) enum Decision {
    /// Go on, showing what this visibility sees.
    Allow(Visibility),
    /// Refused.
    Deny(Response),
}

impl ReadAccess {
    /// Reads the users file; a bad one stops the server from starting.
    pub(crate) fn load(path: PathBuf) -> Result<Self, UsersError> {
        let file = UsersFile::load(&path)?;
        let sig = FileSig::read(&path).ok();
        Ok(Self {
            path,
            loaded: RwLock::new(Loaded {
                file: Arc::new(file),
                sig,
                checked: Instant::now(),
            }),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The users file as it is now: read again when it changed (looked at once a second); a
    /// broken edit keeps the last good one, with a warning.
    fn current(&self) -> Arc<UsersFile> {
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if loaded.checked.elapsed() < RELOAD_CHECK {
                return Arc::clone(&loaded.file);
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        loaded.checked = Instant::now();
        let sig = FileSig::read(&self.path).ok();
        if sig != loaded.sig {
            match UsersFile::load(&self.path) {
                Ok(file) => {
                    tracing::info!("read users reloaded from {}", self.path.display());
                    loaded.file = Arc::new(file);
                    loaded.sig = sig;
                }
                Err(e) => {
                    tracing::warn!("{e}; the previous users file stays in force");
                    loaded.sig = sig;
                }
            }
        }
        Arc::clone(&loaded.file)
    }

    /// Authenticates a read.
    pub(crate) fn check(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Decision {
        if let Some(ip) = peer
            && self.blocked(ip)
        {
            return Decision::Deny(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, WINDOW.as_secs().to_string())],
                    "too many failed logins from this address; try again later\n",
                )
                    .into_response(),
            );
        }
        let users = self.current();
        let credentials = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_authorization);
        match credentials {
            None => {
                let anonymous = Visibility::of(&users, None);
                if anonymous.is_empty() {
                    Decision::Deny(unauthorized())
                } else {
                    Decision::Allow(anonymous)
                }
            }
            Some((name, token)) => match users.authenticate(name.as_deref(), &token) {
                Some(user) => Decision::Allow(Visibility::of(&users, Some(user))),
                None => {
                    // Never the token: the name, if one was sent, and the address.
                    tracing::warn!(
                        "failed read login{} from {}",
                        name.map(|n| format!(" as `{}`", n.escape_debug()))
                            .unwrap_or_default(),
                        peer.map_or_else(|| "?".to_owned(), |p| p.to_string())
                    );
                    if let Some(ip) = peer {
                        self.failed(ip);
                    }
                    Decision::Deny(unauthorized())
                }
            },
        }
    }

    fn blocked(&self, ip: IpAddr) -> bool {
        let ip = bucket(ip);
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < WINDOW)
    }

    fn failed(&self, ip: IpAddr) {
        let ip = bucket(ip);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Forget addresses whose window is over, when the table grows, so it stays small.
        if failures.len() >= MAX_TRACKED / 2 {
            failures.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        if failures.len() >= MAX_TRACKED {
            // Under a spray from more addresses than that, keep the worst offenders.
            let mut worst: Vec<(IpAddr, (u32, Instant))> = failures.drain().collect();
            worst.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
            worst.truncate(MAX_TRACKED / 2);
            failures.extend(worst);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        entry.0 += 1;
        if entry.0 == MAX_FAILURES {
            tracing::warn!(
                "{ip}: {MAX_FAILURES} failed read logins within {}s; refused for {}s",
                WINDOW.as_secs(),
                WINDOW.as_secs()
            );
            entry.1 = Instant::now();
        }
    }
}

fn unauthorized() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "this image server needs a login: https://USER:TOKEN@HOST\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"images\", charset=\"UTF-8\""),
    );
    r
}

/// (user, token) of `Basic base64(user:token)`, or (none, token) of `Bearer token`.
fn parse_authorization(value: &str) -> Option<(Option<String>, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| (None, rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, token) = text.split_once(':')?;
    Some((Some(user.to_owned()), token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_both_schemes() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
        );
        assert_eq!(
            parse_authorization(&basic),
            Some((Some("alice".into()), "s3cret".into()))
        );
        assert_eq!(
            parse_authorization("Bearer abc"),
            Some((None, "abc".into()))
        );
        assert_eq!(parse_authorization("Basic !!!"), None);
        assert_eq!(parse_authorization("Digest x"), None);
    }

    #[test]
    fn an_address_is_refused_after_too_many_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yml");
        let mut users = UsersFile::default();
        let token = users.add("alice", vec![]).unwrap();
        users.save(&path).unwrap();
        let access = ReadAccess::load(path).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut bad = HeaderMap::new();
        bad.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        let mut good = HeaderMap::new();
        good.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert!(matches!(access.check(&good, Some(ip)), Decision::Allow(v) if v.is_all()));
        for _ in 0..MAX_FAILURES {
            let Decision::Deny(r) = access.check(&bad, Some(ip)) else {
                panic!("a wrong token passed");
            };
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        let Decision::Deny(r) = access.check(&good, Some(ip)) else {
            panic!("a blocked address passed");
        };
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(matches!(
            access.check(&good, Some(other)),
            Decision::Allow(_)
        ));
        let Decision::Deny(r) = access.check(&HeaderMap::new(), Some(other)) else {
            panic!("anonymous passed with no public products");
        };
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
