//! Long-term credentials and stateless nonces (RFC 8489 §9.2, RFC 8656 §5).
//!
//! [`Credentials`] finds the keys a request's USERNAME may have signed with:
//! static users (configured, or read from a coturn-style user file) and the
//! "TURN REST API" time-limited credentials that a web service derives from a
//! shared secret (draft-uberti-behave-turn-rest, as coturn's
//! `use-auth-secret` implements it).
//!
//! Cloning [`Credentials`] is cheap whatever their size: the user table
//! and secrets sit behind an `Arc`, so that a reload or a user database's
//! refresh hands every shard the same table instead of a copy each. A
//! second source's table (a user database's) joins the configured one with
//! [`Credentials::layered`], again without copying either.
//!
//! [`NonceIssuer`] makes nonces that need no server state: each one carries
//! its issue time and a MAC binding it to the client's transport address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::integrity::{Key, PasswordAlgorithm, PrepError};

/// The keys one static user may sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UserKeys {
    md5: Option<Key>,
    sha256: Option<Key>,
}

impl UserKeys {
    fn get(&self, algorithm: PasswordAlgorithm) -> Option<Key> {
        match algorithm {
            PasswordAlgorithm::Md5 => self.md5,
            PasswordAlgorithm::Sha256 => self.sha256,
        }
    }
}

/// A user file line the parser refused; shows as `file:line: user: message`.
/// Never holds a password.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct UserFileError {
    /// The file (or source name) read.
    pub file: String,
    /// The 1-based line number.
    pub line: usize,
    /// The user name on the line; empty when the line has none.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// The most TURN REST API secrets one request is checked against: the
/// configured ones first, then a user database's, in the order added. Each
/// costs an HMAC-SHA1 and a key derivation for every request whose user
/// name has the REST form, a bogus one's included, so the number is bounded;
/// secrets beyond it are never tried ([`Credentials::rest_secrets_untried`]
/// says how many, so that the caller can warn).
pub const MAX_REST_SECRETS: usize = 16;

/// The most keys [`Credentials::keys`] returns for one request: a static
/// user's key from each of the two tables and one per REST secret tried.
pub const MAX_KEY_CANDIDATES: usize = MAX_REST_SECRETS + 2;

/// The keys a request may have been signed with, best first: a small list on
/// the stack holding at most [`MAX_KEY_CANDIDATES`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyCandidates {
    keys: [Option<Key>; MAX_KEY_CANDIDATES],
    len: usize,
}

impl KeyCandidates {
    /// An empty list.
    pub fn new() -> Self {
        KeyCandidates::default()
    }

    /// Appends `key`; `false` (and nothing kept) when the list is full.
    pub fn push(&mut self, key: Key) -> bool {
        match self.keys.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(key);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The keys, in the order found.
    pub fn iter(&self) -> core::iter::Flatten<core::slice::Iter<'_, Option<Key>>> {
        self.keys[..self.len].iter().flatten()
    }

    /// How many keys the list holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the list.
    pub fn clear(&mut self) {
        *self = KeyCandidates::default();
    }
}

impl<'a> IntoIterator for &'a KeyCandidates {
    type Item = &'a Key;
    type IntoIter = core::iter::Flatten<core::slice::Iter<'a, Option<Key>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The expiry time of a TURN REST API user name: `expiry:user` or `expiry`,
/// `expiry` being decimal Unix seconds.
fn rest_expiry(username: &str) -> Option<u64> {
    let expiry = username.split_once(':').map_or(username, |(expiry, _)| expiry);
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    expiry.parse().ok()
}

/// One source's users and REST secrets.
#[derive(Clone, Default)]
struct Table {
    users: HashMap<String, UserKeys>,
    rest_secrets: Vec<Hmac<Sha1>>,
}

/// The long-term credentials a server accepts, for one realm.
///
/// Keys of static users are derived once, when added. A TURN REST API user
/// name `expiry:user` (or plain `expiry`) has password
/// `base64(HMAC-SHA1(secret, username))` for each configured secret; it is
/// accepted until `expiry` (Unix seconds, inclusive).
///
/// A clone shares the tables (an `Arc` each): cloning costs the same for
/// one user or a million. Adding to a shared value copies its own table
/// first (copy on write), so build a table before handing out clones.
#[derive(Clone)]
pub struct Credentials {
    realm: Arc<str>,
    own: Arc<Table>,
    /// Another source's table, searched after `own` ([`Credentials::layered`]).
    layer: Option<Arc<Table>>,
}

impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("users", &self.user_count())
            .field("rest_secrets", &self.rest_secret_count())
            .finish()
    }
}

impl Credentials {
    /// No users and no REST secrets, for `realm`.
    pub fn new(realm: &str) -> Self {
        Credentials { realm: realm.into(), own: Arc::default(), layer: None }
    }

    /// These credentials with `other`'s own users and secrets joined after
    /// them (a user database's beside the configured ones), sharing both
    /// tables: nothing is copied. A user in both has both keys, this one's
    /// first; REST secrets are tried this one's first. Any layer `self`
    /// already had is replaced, and `other`'s own layer is not carried.
    /// `other` must be for the same realm: its keys were derived with its
    /// realm (a mismatch gives no usable key and is refused in debug builds).
    pub fn layered(&self, other: &Credentials) -> Credentials {
        debug_assert_eq!(self.realm, other.realm, "credentials of one realm only");
        Credentials { realm: self.realm.clone(), own: self.own.clone(), layer: Some(other.own.clone()) }
    }

    /// These credentials without the table [`Credentials::layered`] joined.
    pub fn without_layer(&self) -> Credentials {
        Credentials { realm: self.realm.clone(), own: self.own.clone(), layer: None }
    }

    fn tables(&self) -> impl Iterator<Item = &Table> {
        core::iter::once(&*self.own).chain(self.layer.as_deref())
    }

    fn own_mut(&mut self) -> &mut Table {
        Arc::make_mut(&mut self.own)
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Adds (or replaces) a user with a password, deriving its MD5 and
    /// SHA-256 keys now. Fails when SASLprep refuses the password (the MD5
    /// key's preparation). A password SASLprep accepts but the OpaqueString
    /// profile refuses gets an MD5 key only, as no client could derive the
    /// SHA-256 one.
    pub fn add_user(&mut self, username: &str, password: &str) -> Result<(), PrepError> {
        let keys = self.derive(username, password)?;
        self.own_mut().users.insert(username.to_owned(), keys);
        Ok(())
    }

    fn derive(&self, username: &str, password: &str) -> Result<UserKeys, PrepError> {
        let md5 = Key::long_term(PasswordAlgorithm::Md5, username, &self.realm, password)?;
        let sha256 = Key::long_term(PasswordAlgorithm::Sha256, username, &self.realm, password).ok();
        Ok(UserKeys { md5: Some(md5), sha256 })
    }

    /// Adds (or replaces) a user given by key, as coturn's `user:0x<hex>`
    /// lines give the MD5 key. The user can sign only with the key's
    /// algorithm (an MD5 key: MD5 only).
    pub fn add_user_key(&mut self, username: &str, md5_key: Key) {
        let keys = match md5_key.algorithm() {
            PasswordAlgorithm::Md5 => UserKeys { md5: Some(md5_key), sha256: None },
            PasswordAlgorithm::Sha256 => UserKeys { md5: None, sha256: Some(md5_key) },
        };
        self.own_mut().users.insert(username.to_owned(), keys);
    }

    /// Whether `username` is a static user (of either table).
    pub fn has_user(&self, username: &str) -> bool {
        self.tables().any(|t| t.users.contains_key(username))
    }

    /// How many static users there are (a user in both tables counts twice).
    pub fn user_count(&self) -> usize {
        self.tables().map(|t| t.users.len()).sum()
    }

    /// How many REST API secrets there are (both tables).
    pub fn rest_secret_count(&self) -> usize {
        self.tables().map(|t| t.rest_secrets.len()).sum()
    }

    /// How many REST API secrets are never tried, being beyond the
    /// [`MAX_REST_SECRETS`] a request is checked against (0 normally).
    pub fn rest_secrets_untried(&self) -> usize {
        self.rest_secret_count().saturating_sub(MAX_REST_SECRETS)
    }

    /// Adds the users of a coturn-style user file, given as its text (the
    /// caller reads the file: nothing here touches the file system), named
    /// `source_name` in errors; returns how many lines held a user.
    ///
    /// Each line is `user:password` or `user:0x<32 hex digits>` (the MD5 key
    /// of `user:realm:password`); blank lines and lines starting with `#`
    /// are skipped, and lines are trimmed. The user name ends at the first
    /// `:` (and is trimmed); the password is the rest of the line as is.
    /// A later line for the same user replaces an earlier one. On the first
    /// bad line nothing is added and the error names the file, the line and
    /// the user — never the password.
    pub fn parse_user_file(&mut self, source_name: &str, text: &str) -> Result<usize, UserFileError> {
        let mut parsed = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |key: &str, message: String| UserFileError {
                file: source_name.to_owned(),
                line: index + 1,
                key: key.to_owned(),
                message,
            };
            let Some((user, secret)) = line.split_once(':') else {
                return Err(error("", "expected `user:password` or `user:0x<hex key>`".to_owned()));
            };
            let user = user.trim();
            if user.is_empty() {
                return Err(error(user, "empty user name".to_owned()));
            }
            let keys = if let Some(hex) = secret.strip_prefix("0x") {
                let key = Key::from_hex(PasswordAlgorithm::Md5, hex).map_err(|e| error(user, format!("key: {e}")))?;
                UserKeys { md5: Some(key), sha256: None }
            } else if secret.is_empty() {
                return Err(error(user, "empty password".to_owned()));
            } else {
                self.derive(user, secret).map_err(|e| error(user, format!("password: {e}")))?
            };
            parsed.push((user.to_owned(), keys));
        }
        let count = parsed.len();
        self.own_mut().users.extend(parsed);
        Ok(count)
    }

    /// Adds a TURN REST API shared secret. Several may be configured while
    /// secrets rotate: a user name is accepted with any of them, tried in
    /// the order added, this table's before a layer's (at most
    /// [`MAX_REST_SECRETS`] of them).
    pub fn add_rest_secret(&mut self, secret: &[u8]) {
        // HMAC accepts keys of every length.
        let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        self.own_mut().rest_secrets.push(mac);
    }

    /// Whether any REST API secret is configured.
    pub fn has_rest_secrets(&self) -> bool {
        self.tables().any(|t| !t.rest_secrets.is_empty())
    }

    /// The keys `username` may sign with under `alg` at Unix time
    /// `unix_now` (seconds), into `out` (cleared first): the static user's
    /// key if there is one (the own table's, then the layer's), then one key
    /// per REST secret (the first [`MAX_REST_SECRETS`]) if `username` is an
    /// unexpired REST user name (`expiry:user` or `expiry`, accepted while
    /// `unix_now <= expiry`).
    /// Nothing when the name is unknown.
    pub fn keys(&self, username: &str, alg: PasswordAlgorithm, unix_now: u64, out: &mut KeyCandidates) {
        out.clear();
        for table in self.tables() {
            if let Some(key) = table.users.get(username).and_then(|keys| keys.get(alg)) {
                out.push(key);
            }
        }
        if !self.has_rest_secrets() {
            return;
        }
        match rest_expiry(username) {
            Some(expiry) if unix_now <= expiry => {}
            _ => return,
        }
        for secret in self.tables().flat_map(|t| &t.rest_secrets).take(MAX_REST_SECRETS) {
            let digest = secret.clone().chain_update(username.as_bytes()).finalize().into_bytes();
            let mut password = [0u8; 28];
            let Ok(n) = BASE64.encode_slice(digest, &mut password) else { continue };
            let Ok(password) = core::str::from_utf8(&password[..n]) else { continue };
            if let Ok(key) = Key::long_term(alg, username, &self.realm, password)
                && !out.push(key)
            {
                break;
            }
        }
    }
}

/// The RFC 8489 §9.2 nonce cookie that announces STUN security features.
pub const SECURITY_FEATURE_COOKIE: &str = "obMatJos2";

/// The cookie with the security features this server announces: base64 of
/// the 24-bit feature set with only bit 0, "password algorithms", set. Bits
/// count from the right (RFC 8489 erratum 6290), so the set is `0x000001`.
const COOKIE_WITH_FEATURES: &[u8; 13] = b"obMatJos2AAAB";
/// The feature set `COOKIE_WITH_FEATURES` encodes.
const FEATURES: [u8; 3] = [0, 0, 1];

/// Length of a nonce without the security feature cookie: 16 hex digits of
/// issue time and 32 of MAC.
pub const NONCE_LEN: usize = 16 + 2 * MAC_LEN;
/// Length of a nonce with the security feature cookie and feature set.
pub const NONCE_LEN_MAX: usize = COOKIE_WITH_FEATURES.len() + NONCE_LEN;
// A NONCE holds fewer than 128 characters (RFC 8489 §14.10).
const _: () = assert!(NONCE_LEN_MAX < 128);
/// Bytes of HMAC-SHA256 a nonce keeps.
const MAC_LEN: usize = 16;
/// How far in the future a nonce's issue time may lie (clock steps).
const MAX_CLOCK_SKEW_SECS: u64 = 10;

/// A nonce: printable ASCII, [`NONCE_LEN`] or [`NONCE_LEN_MAX`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    bytes: [u8; NONCE_LEN_MAX],
    len: u8,
}

impl Nonce {
    /// The nonce text.
    pub fn as_str(&self) -> &str {
        // Always ASCII: a cookie and lowercase hexadecimal digits.
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The nonce bytes, as the NONCE attribute carries them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl core::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Nonce({})", self.as_str())
    }
}

/// The outcome of [`NonceIssuer::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by this server to this client, and not expired.
    Valid,
    /// Issued by this server to this client but expired: answer 438 (Stale Nonce).
    Stale,
    /// Not a nonce this server issued to this client (forged, altered,
    /// another client's, issued in the future, or garbage): answer 401 with
    /// a fresh nonce.
    Invalid,
}

/// Issues and checks stateless nonces.
///
/// A nonce is `[obMatJos2AAAB]` + 16 lowercase hex digits of the Unix issue
/// time + 32 lowercase hex digits of HMAC-SHA256(secret, cookie flag,
/// feature set, issue time, client IP, client port) truncated to 16 bytes.
/// The client's IPv4-mapped IPv6 address counts as its IPv4 address.
/// Issuing and checking allocate nothing; the MAC compare is constant-time.
#[derive(Clone)]
pub struct NonceIssuer {
    mac: Hmac<Sha256>,
    lifetime_secs: u64,
}

impl core::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NonceIssuer").field("lifetime_secs", &self.lifetime_secs).finish_non_exhaustive()
    }
}

impl NonceIssuer {
    /// Nonces keyed with `secret` (random, per server or shared by the
    /// servers of a cluster) that go stale `lifetime_secs` after issue.
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> Self {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).unwrap_or_else(|_| unreachable!());
        NonceIssuer { mac, lifetime_secs }
    }

    /// Nonces keyed with an operator's secret of any length, shared by the
    /// servers of a fleet: each accepts the nonces the others issue, so a
    /// client moved to another node after its challenge (an
    /// ALTERNATE-SERVER redirect, which libwebrtc follows with the first
    /// node's nonce) is not challenged again there. The key is derived
    /// from the secret under a label of its own, so a secret also used
    /// for something else (a REST secret, say) gives unrelated MACs.
    pub fn shared(secret: &[u8], lifetime_secs: u64) -> Self {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        mac.update(b"relay-core shared nonce key v1");
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac.finalize().into_bytes());
        NonceIssuer::new(key, lifetime_secs)
    }

    /// The lifetime in seconds.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    fn mac(&self, cookie: bool, issued: u64, client: SocketAddr) -> [u8; MAC_LEN] {
        let ip = match client.ip().to_canonical() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut mac = self.mac.clone();
        mac.update(b"relay-core nonce v1");
        mac.update(&[u8::from(cookie)]);
        mac.update(if cookie { &FEATURES } else { &[0; 3] });
        mac.update(&issued.to_be_bytes());
        mac.update(&ip);
        mac.update(&client.port().to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A nonce for `client` at Unix time `unix_now` (seconds). With `sha256`
    /// (the server offers PASSWORD-ALGORITHMS) it begins with the security
    /// feature cookie and feature set `obMatJos2AAAB` (RFC 8489 §9.2);
    /// without, it has no cookie.
    pub fn issue(&self, unix_now: u64, client: SocketAddr, sha256: bool) -> Nonce {
        let mut bytes = [0u8; NONCE_LEN_MAX];
        let mut at = 0;
        if sha256 {
            bytes[..COOKIE_WITH_FEATURES.len()].copy_from_slice(COOKIE_WITH_FEATURES);
            at = COOKIE_WITH_FEATURES.len();
        }
        at += write_hex(&unix_now.to_be_bytes(), &mut bytes[at..]);
        at += write_hex(&self.mac(sha256, unix_now, client), &mut bytes[at..]);
        Nonce { bytes, len: at as u8 }
    }

    /// Whether `nonce` was issued to `client` by this issuer (this secret),
    /// and whether it is stale at `unix_now`.
    pub fn check(&self, nonce: &[u8], unix_now: u64, client: SocketAddr) -> NonceCheck {
        let (cookie, body) = match nonce.strip_prefix(&COOKIE_WITH_FEATURES[..]) {
            Some(body) => (true, body),
            None => (false, nonce),
        };
        if body.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let mut issued = [0u8; 8];
        let mut mac = [0u8; MAC_LEN];
        if !read_hex(&body[..16], &mut issued) || !read_hex(&body[16..], &mut mac) {
            return NonceCheck::Invalid;
        }
        let issued = u64::from_be_bytes(issued);
        if !bool::from(self.mac(cookie, issued, client).ct_eq(&mac)) {
            return NonceCheck::Invalid;
        }
        if issued > unix_now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            NonceCheck::Invalid
        } else if unix_now > issued.saturating_add(self.lifetime_secs) {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    /// Whether `nonce` begins with the RFC 8489 §9.2 security feature cookie
    /// `obMatJos2`, i.e. the server announced security features.
    pub fn has_security_feature_cookie(nonce: &[u8]) -> bool {
        nonce.starts_with(SECURITY_FEATURE_COOKIE.as_bytes())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex at the start of `out`; returns the length.
fn write_hex(bytes: &[u8], out: &mut [u8]) -> usize {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    2 * bytes.len()
}

/// Reads lowercase hex (exactly `2 * out.len()` digits) into `out`.
fn read_hex(hex: &[u8], out: &mut [u8]) -> bool {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if hex.len() != 2 * out.len() {
        return false;
    }
    for (b, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => *b = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "example.org";

    fn hex(key: &Key) -> String {
        key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn keys(c: &Credentials, user: &str, alg: PasswordAlgorithm, now: u64) -> Vec<Key> {
        let mut out = KeyCandidates::new();
        c.keys(user, alg, now, &mut out);
        out.iter().copied().collect()
    }

    // Expected passwords computed independently, with Python:
    // base64.b64encode(hmac.new(secret, username, hashlib.sha1).digest()), and
    // the MD5 keys as hashlib.md5(f"{username}:example.org:{password}").
    const NORTH_ALICE_PASSWORD: &str = "g+jb180fcj+xlpA/2mP60OdIgU0=";
    const NORTH_ALICE_MD5: &str = "21b7a39e7ca72cc4359f0ec60528da8b";
    const SOUTH_ALICE_PASSWORD: &str = "vrczJ4LAk4Vli1P7hiL4bQgl7AE=";
    const SOUTH_ALICE_MD5: &str = "e869ca11d0b6b89e115750dcca8cd261";
    const NORTH_PLAIN_MD5: &str = "0fe4b9b78af8861e112f755296aac4a9";

    #[test]
    fn rest_credentials_known_example() {
        let mut c = Credentials::new(REALM);
        assert!(!c.has_rest_secrets());
        assert!(keys(&c, "1700000000:alice", PasswordAlgorithm::Md5, 0).is_empty());
        c.add_rest_secret(b"north-secret");
        assert!(c.has_rest_secrets());

        let md5 = keys(&c, "1700000000:alice", PasswordAlgorithm::Md5, 1_699_999_000);
        assert_eq!(md5.len(), 1);
        assert_eq!(hex(&md5[0]), NORTH_ALICE_MD5);
        let expected = Key::long_term(PasswordAlgorithm::Md5, "1700000000:alice", REALM, NORTH_ALICE_PASSWORD).unwrap();
        assert_eq!(md5[0], expected);

        let sha = keys(&c, "1700000000:alice", PasswordAlgorithm::Sha256, 1_699_999_000);
        let expected =
            Key::long_term(PasswordAlgorithm::Sha256, "1700000000:alice", REALM, NORTH_ALICE_PASSWORD).unwrap();
        assert_eq!(sha, [expected]);

        // A plain expiry with no user part.
        let plain = keys(&c, "1700000000", PasswordAlgorithm::Md5, 1_699_999_000);
        assert_eq!(plain.iter().map(hex).collect::<Vec<_>>(), [NORTH_PLAIN_MD5]);
    }

    #[test]
    fn rest_rotation_and_expiry() {
        let mut c = Credentials::new(REALM);
        c.add_rest_secret(b"north-secret");
        c.add_rest_secret(b"south-secret");
        let both = keys(&c, "1700000000:alice", PasswordAlgorithm::Md5, 1_700_000_000);
        assert_eq!(both.iter().map(hex).collect::<Vec<_>>(), [NORTH_ALICE_MD5, SOUTH_ALICE_MD5]);
        assert_eq!(
            both[1],
            Key::long_term(PasswordAlgorithm::Md5, "1700000000:alice", REALM, SOUTH_ALICE_PASSWORD).unwrap()
        );
        assert!(keys(&c, "1700000000:alice", PasswordAlgorithm::Md5, 1_700_000_001).is_empty(), "expired");
        for not_rest in ["alice", "", ":alice", "17x:alice", "-1:alice", "99999999999999999999999:a"] {
            assert!(keys(&c, not_rest, PasswordAlgorithm::Md5, 0).is_empty(), "{not_rest:?}");
        }
    }

    #[test]
    fn many_rest_secrets_are_all_tried_up_to_the_bound() {
        let user = "1700000000:alice";
        let key = |secret: &str| {
            let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(user.as_bytes());
            let password = BASE64.encode(mac.finalize().into_bytes());
            Key::long_term(PasswordAlgorithm::Md5, user, REALM, &password).unwrap()
        };
        // Configured secrets, then a database's (a layer): the last one a
        // rotation added is tried, however many came before it.
        let mut configured = Credentials::new(REALM);
        let mut database = Credentials::new(REALM);
        configured.add_rest_secret(b"configured");
        for i in 0..6 {
            database.add_rest_secret(format!("db-{i}").as_bytes());
        }
        let both = configured.layered(&database);
        assert_eq!(both.rest_secrets_untried(), 0);
        let got = keys(&both, user, PasswordAlgorithm::Md5, 0);
        let want: Vec<Key> = core::iter::once("configured".to_owned())
            .chain((0..6).map(|i| format!("db-{i}")))
            .map(|s| key(&s))
            .collect();
        assert_eq!(got, want, "every secret, configured first");

        // Past the bound: the first MAX_REST_SECRETS are tried, the rest
        // counted so that the caller can warn.
        for i in 6..MAX_REST_SECRETS + 3 {
            database.add_rest_secret(format!("db-{i}").as_bytes());
        }
        let both = configured.layered(&database);
        assert_eq!(both.rest_secrets_untried(), 4);
        let got = keys(&both, user, PasswordAlgorithm::Md5, 0);
        assert_eq!(got.len(), MAX_REST_SECRETS);
        assert_eq!(got[MAX_REST_SECRETS - 1], key(&format!("db-{}", MAX_REST_SECRETS - 2)));

        // A static user of that name in both tables keeps every REST slot.
        configured.add_user(user, "pw").unwrap();
        database.add_user(user, "pw2").unwrap();
        let got = keys(&configured.layered(&database), user, PasswordAlgorithm::Md5, 0);
        assert_eq!(got.len(), MAX_KEY_CANDIDATES);
        assert_eq!(got[2], key("configured"));
    }

    #[test]
    fn static_users() {
        let mut c = Credentials::new(REALM);
        c.add_user("bob", "pass word").unwrap();
        assert_eq!(
            keys(&c, "bob", PasswordAlgorithm::Md5, 0),
            [Key::long_term(PasswordAlgorithm::Md5, "bob", REALM, "pass word").unwrap()]
        );
        assert_eq!(
            keys(&c, "bob", PasswordAlgorithm::Sha256, 0),
            [Key::long_term(PasswordAlgorithm::Sha256, "bob", REALM, "pass word").unwrap()]
        );
        assert!(keys(&c, "bobby", PasswordAlgorithm::Md5, 0).is_empty());
        assert_eq!(c.add_user("eve", "\u{0007}"), Err(PrepError::SaslPrep));
        assert!(!c.has_user("eve"));

        let key = Key::from_hex(PasswordAlgorithm::Md5, "0x8493fbc53ba582fb4c044c456bdc40eb").unwrap();
        c.add_user_key("carol", key);
        assert_eq!(keys(&c, "carol", PasswordAlgorithm::Md5, 0), [key]);
        assert!(keys(&c, "carol", PasswordAlgorithm::Sha256, 0).is_empty(), "a hex key is MD5 only");
        assert_eq!(c.user_count(), 2);

        // A static user that looks like a REST name gets both kinds, static first.
        c.add_rest_secret(b"north-secret");
        c.add_user("1700000000:alice", "static").unwrap();
        let both = keys(&c, "1700000000:alice", PasswordAlgorithm::Md5, 0);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0], Key::long_term(PasswordAlgorithm::Md5, "1700000000:alice", REALM, "static").unwrap());
        assert_eq!(hex(&both[1]), NORTH_ALICE_MD5);
        assert!(!format!("{c:?}").contains("static"));
    }

    #[test]
    fn layered_tables_join_without_copying() {
        let mut configured = Credentials::new(REALM);
        configured.add_user("bob", "pass word").unwrap();
        configured.add_rest_secret(b"north-secret");
        let mut database = Credentials::new(REALM);
        let carol = Key::from_hex(PasswordAlgorithm::Md5, "8493fbc53ba582fb4c044c456bdc40eb").unwrap();
        database.add_user_key("carol", carol);
        database.add_user_key("bob", carol);
        database.add_rest_secret(b"south-secret");

        let both = configured.layered(&database);
        assert!(Arc::ptr_eq(&both.own, &configured.own), "the configured table is shared, not copied");
        assert!(Arc::ptr_eq(both.layer.as_ref().unwrap(), &database.own), "so is the database's");
        assert!(Arc::ptr_eq(&both.clone().own, &both.own), "a clone shares the tables");
        assert!(both.has_user("carol") && both.has_user("bob") && !configured.has_user("carol"));
        assert_eq!((both.user_count(), both.rest_secret_count()), (3, 2));
        assert_eq!(keys(&both, "carol", PasswordAlgorithm::Md5, 0), [carol]);
        // A user in both: the configured key first, then the database's.
        let bob = Key::long_term(PasswordAlgorithm::Md5, "bob", REALM, "pass word").unwrap();
        assert_eq!(keys(&both, "bob", PasswordAlgorithm::Md5, 0), [bob, carol]);
        // REST secrets of both, the configured one first.
        let rest = keys(&both, "1700000000:alice", PasswordAlgorithm::Md5, 0);
        assert_eq!(rest.iter().map(hex).collect::<Vec<_>>(), [NORTH_ALICE_MD5, SOUTH_ALICE_MD5]);
        // Layering again replaces the layer; without_layer drops it.
        let emptied = both.layered(&Credentials::new(REALM));
        assert!(!emptied.has_user("carol") && emptied.has_user("bob"));
        assert_eq!(keys(&both.without_layer(), "carol", PasswordAlgorithm::Md5, 0), []);

        // Adding to a shared value copies its own table first.
        let mut grown = both.clone();
        grown.add_user("dave", "pw").unwrap();
        assert!(grown.has_user("dave") && !both.has_user("dave") && !configured.has_user("dave"));
        assert!(Arc::ptr_eq(grown.layer.as_ref().unwrap(), &database.own));
        assert!(!format!("{both:?}").contains("pass word"));
    }

    #[test]
    fn user_file() {
        let mut c = Credentials::new(REALM);
        let text =
            "# coturn user file\n\n  alice:secret  \r\nbob:pa:ss\ncarol:0x8493fbc53ba582fb4c044c456bdc40eb\n\t# done\n";
        assert_eq!(c.parse_user_file("users.conf", text).unwrap(), 3);
        assert_eq!(
            keys(&c, "alice", PasswordAlgorithm::Sha256, 0),
            [Key::long_term(PasswordAlgorithm::Sha256, "alice", REALM, "secret").unwrap()]
        );
        assert_eq!(
            keys(&c, "bob", PasswordAlgorithm::Md5, 0),
            [Key::long_term(PasswordAlgorithm::Md5, "bob", REALM, "pa:ss").unwrap()]
        );
        assert_eq!(keys(&c, "carol", PasswordAlgorithm::Md5, 0)[0], {
            Key::from_hex(PasswordAlgorithm::Md5, "8493fbc53ba582fb4c044c456bdc40eb").unwrap()
        });
    }

    #[test]
    fn user_file_errors_name_file_line_and_user() {
        let cases = [
            ("ok:x\n\nno colon here\n", 3, "", "expected"),
            ("# c\n :pw\n", 2, "", "empty user name"),
            ("dave:0x1234\n", 1, "dave", "key: a key must be 16 bytes of hexadecimal"),
            ("a:b\nerin:0x8493fbc53ba582fb4c044c456bdc40eg\n", 2, "erin", "hexadecimal"),
            ("frank:\n", 1, "frank", "empty password"),
            ("x:y\ny:z\ngina:bell\u{0007}pw\n", 3, "gina", "password: string is not allowed by SASLprep"),
        ];
        for (text, line, key, message) in cases {
            let mut c = Credentials::new(REALM);
            let e = c.parse_user_file("users.conf", text).unwrap_err();
            assert_eq!((e.file.as_str(), e.line, e.key.as_str()), ("users.conf", line, key), "{text:?}");
            assert!(e.message.contains(message), "{e}");
            assert!(e.to_string().starts_with(&format!("users.conf:{line}: {key}: ")), "{e}");
            assert!(!e.to_string().contains("bell") && !e.to_string().contains("pw"), "no password in {e}");
            assert_eq!(c.user_count(), 0, "a bad file adds nobody");
        }
    }

    #[test]
    fn key_candidates() {
        let key = Key::from_bytes(PasswordAlgorithm::Md5, &[7; 16]).unwrap();
        let mut k = KeyCandidates::new();
        assert!(k.is_empty());
        for _ in 0..MAX_KEY_CANDIDATES {
            assert!(k.push(key));
        }
        assert!(!k.push(key));
        assert_eq!(k.len(), MAX_KEY_CANDIDATES);
        assert_eq!((&k).into_iter().count(), MAX_KEY_CANDIDATES);
        k.clear();
        assert!(k.is_empty() && k.iter().next().is_none());
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nonce_round_trip_and_cookie() {
        let n = NonceIssuer::new([42; 32], 600);
        let client = addr("198.51.100.7:40000");
        let plain = n.issue(1_000_000, client, false);
        assert_eq!(plain.as_bytes().len(), NONCE_LEN);
        assert!(!NonceIssuer::has_security_feature_cookie(plain.as_bytes()));
        assert!(plain.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(n.check(plain.as_bytes(), 1_000_000, client), NonceCheck::Valid);

        let cookie = n.issue(1_000_000, client, true);
        assert_eq!(cookie.as_bytes().len(), NONCE_LEN_MAX);
        assert!(cookie.as_str().starts_with("obMatJos2AAAB"));
        assert!(NonceIssuer::has_security_feature_cookie(cookie.as_bytes()));
        assert_eq!(n.check(cookie.as_bytes(), 1_000_600, client), NonceCheck::Valid);

        // The cookie is covered by the MAC: it can be neither stripped nor added.
        assert_eq!(n.check(&cookie.as_bytes()[13..], 1_000_000, client), NonceCheck::Invalid);
        let mut added = COOKIE_WITH_FEATURES.to_vec();
        added.extend_from_slice(plain.as_bytes());
        assert_eq!(n.check(&added, 1_000_000, client), NonceCheck::Invalid);
        // The same client through an IPv4-mapped socket address.
        assert_eq!(n.check(cookie.as_bytes(), 1_000_000, addr("[::ffff:198.51.100.7]:40000")), NonceCheck::Valid);
        assert!(format!("{n:?}").starts_with("NonceIssuer"));
    }

    #[test]
    fn nonce_stale_and_clock_skew() {
        let n = NonceIssuer::new([1; 32], 600);
        let client = addr("[2001:db8::5]:3478");
        let nonce = n.issue(5_000, client, true);
        assert_eq!(n.check(nonce.as_bytes(), 5_600, client), NonceCheck::Valid);
        assert_eq!(n.check(nonce.as_bytes(), 5_601, client), NonceCheck::Stale);
        assert_eq!(n.check(nonce.as_bytes(), u64::MAX, client), NonceCheck::Stale);
        assert_eq!(n.check(nonce.as_bytes(), 5_000 - MAX_CLOCK_SKEW_SECS, client), NonceCheck::Valid);
        assert_eq!(n.check(nonce.as_bytes(), 5_000 - MAX_CLOCK_SKEW_SECS - 1, client), NonceCheck::Invalid);
    }

    #[test]
    fn nonce_bound_to_client_and_secret() {
        let n = NonceIssuer::new([9; 32], 600);
        let client = addr("203.0.113.9:5000");
        let nonce = n.issue(77, client, false);
        assert_eq!(n.check(nonce.as_bytes(), 77, addr("203.0.113.9:5001")), NonceCheck::Invalid);
        assert_eq!(n.check(nonce.as_bytes(), 77, addr("203.0.113.8:5000")), NonceCheck::Invalid);
        assert_eq!(n.check(nonce.as_bytes(), 77, addr("[2001:db8::1]:5000")), NonceCheck::Invalid);
        let other = NonceIssuer::new([10; 32], 600);
        assert_eq!(other.check(nonce.as_bytes(), 77, client), NonceCheck::Invalid);
        assert_eq!(n.clone().check(nonce.as_bytes(), 77, client), NonceCheck::Valid);
    }

    #[test]
    fn shared_secret_nonces_cross_nodes() {
        let client: SocketAddr = "192.0.2.7:50000".parse().unwrap();
        let (a, b) = (NonceIssuer::shared(b"fleet nonce secret", 600), NonceIssuer::shared(b"fleet nonce secret", 600));
        let other = NonceIssuer::shared(b"another fleet's secret", 600);
        for sha256 in [false, true] {
            let n = a.issue(1_000, client, sha256);
            assert_eq!(b.check(n.as_bytes(), 1_001, client), NonceCheck::Valid);
            assert_eq!(other.check(n.as_bytes(), 1_001, client), NonceCheck::Invalid);
            // Still bound to the client's address on every node.
            assert_eq!(b.check(n.as_bytes(), 1_001, "192.0.2.7:50001".parse().unwrap()), NonceCheck::Invalid);
        }
        // The secret is not the key: a node keyed with the raw bytes
        // (padded to 32) does not accept them.
        let mut raw = [0u8; 32];
        raw[..18].copy_from_slice(b"fleet nonce secret");
        let n = a.issue(1_000, client, false);
        assert_eq!(NonceIssuer::new(raw, 600).check(n.as_bytes(), 1_001, client), NonceCheck::Invalid);
    }

    #[test]
    fn nonce_tampered_or_garbage() {
        let n = NonceIssuer::new([3; 32], 600);
        let client = addr("192.0.2.1:1234");
        for sha256 in [false, true] {
            let nonce = n.issue(1_000, client, sha256);
            for i in 0..nonce.as_bytes().len() {
                let mut t = nonce.as_bytes().to_vec();
                t[i] = if t[i] == b'0' { b'1' } else { b'0' };
                assert_eq!(n.check(&t, 1_000, client), NonceCheck::Invalid, "byte {i} of {nonce:?}");
            }
            let upper = nonce.as_str().to_ascii_uppercase().replace("OBMATJOS2AAAB", "obMatJos2AAAB");
            assert_eq!(n.check(upper.as_bytes(), 1_000, client), NonceCheck::Invalid);
            let mut longer = nonce.as_bytes().to_vec();
            longer.push(b'0');
            assert_eq!(n.check(&longer, 1_000, client), NonceCheck::Invalid);
            assert_eq!(n.check(&nonce.as_bytes()[1..], 1_000, client), NonceCheck::Invalid);
        }
        for garbage in [&b""[..], b"obMatJos2", b"obMatJos2AAAB", b"zzzz", &[0xff; NONCE_LEN], &[b'0'; NONCE_LEN]] {
            assert_eq!(n.check(garbage, 1_000, client), NonceCheck::Invalid);
        }
    }
}
