//! What a TURN client authenticates with: a long-term user name and
//! password, or TURN REST API (time-limited) credentials derived from a
//! secret shared with the server. The time REST credentials depend on is
//! passed in.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// How the client authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A long-term user name and password (RFC 8489 §9.2).
    LongTerm {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// TURN REST API credentials (draft-uberti-behave-turn-rest, coturn's
    /// `use-auth-secret`): user name `expiry:user`, password
    /// `base64(HMAC-SHA1(secret, username))`.
    Rest {
        /// The secret shared with the server.
        secret: String,
        /// The user part of the name (may be empty: the name is then just
        /// the expiry time).
        user: String,
        /// How long the credentials stay valid from the moment they are made.
        ttl: Duration,
    },
}

impl Credentials {
    /// Long-term credentials.
    pub fn long_term(username: &str, password: &str) -> Credentials {
        Credentials::LongTerm { username: username.to_owned(), password: password.to_owned() }
    }

    /// REST API credentials valid for a day from when they are resolved.
    pub fn rest(secret: &str, user: &str) -> Credentials {
        Credentials::Rest { secret: secret.to_owned(), user: user.to_owned(), ttl: Duration::from_secs(86_400) }
    }

    /// The user name and password to use now (`unix_now`: seconds since
    /// the epoch; only REST credentials depend on it).
    pub fn resolve(&self, unix_now: u64) -> (String, String) {
        match self {
            Credentials::LongTerm { username, password } => (username.clone(), password.clone()),
            Credentials::Rest { secret, user, ttl } => {
                rest_credentials(secret.as_bytes(), user, unix_now.saturating_add(ttl.as_secs()))
            }
        }
    }

    /// The user name as a report shows it (REST: the user part).
    pub fn display_user(&self) -> &str {
        match self {
            Credentials::LongTerm { username, .. } => username,
            Credentials::Rest { user, .. } => user,
        }
    }
}

/// TURN REST API credentials expiring at `expiry_unix`: user name
/// `expiry:user` (or just `expiry` when `user` is empty) and password
/// `base64(HMAC-SHA1(secret, username))`.
pub fn rest_credentials(secret: &[u8], user: &str, expiry_unix: u64) -> (String, String) {
    let username = if user.is_empty() { expiry_unix.to_string() } else { format!("{expiry_unix}:{user}") };
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    let password = BASE64.encode(mac.finalize().into_bytes());
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_the_reference_formula() {
        // python3: base64.b64encode(hmac.new(b"north", b"1700000000:alice",
        // hashlib.sha1).digest())
        let (u, p) = rest_credentials(b"north", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(p, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
        let (u, _) = rest_credentials(b"north", "", 5);
        assert_eq!(u, "5");
    }

    #[test]
    fn resolve() {
        let c = Credentials::long_term("u", "p");
        assert_eq!(c.resolve(0), ("u".into(), "p".into()));
        let r = Credentials::Rest { secret: "s".into(), user: "bob".into(), ttl: Duration::from_secs(10) };
        assert_eq!(r.resolve(100).0, "110:bob");
        assert_eq!(r.display_user(), "bob");
    }
}
