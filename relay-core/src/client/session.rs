//! [`TurnSession`]: the client side of one TURN 5-tuple, sans IO. One
//! request in flight at a time (Allocate, Refresh, CreatePermission,
//! ChannelBind), with
//!
//! - RFC 8489 §6.2 timers ([`Transaction`]): retransmissions over UDP, one
//!   request and Ti over TCP and TLS;
//! - the long-term credential exchange (RFC 8489 §9.2): the 401 challenge
//!   answered with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY, a 438
//!   (stale nonce) with the fresh nonce, a 401 to a signed request taken as
//!   wrong credentials; MD5 keys, or SHA-256 keys only when the server
//!   offers them (no downgrade);
//! - responses to signed requests checked: MESSAGE-INTEGRITY(-SHA256) must
//!   verify with the key, and a success must carry it (RFC 8489 §9.2.5);
//! - static long-term or TURN REST API [`Credentials`];
//! - a 300 (Try Alternate) to an Allocate followed once per Allocate
//!   (RFC 8489 §10; [`ClientConfig::max_redirects`]):
//!   [`Handled::Redirect`] names the ALTERNATE-SERVER (and
//!   ALTERNATE-DOMAIN), never the server it came from nor one that Allocate
//!   tried already, of the same family; the caller moves its transport there (the
//!   same kind) and sends the request that comes with it, with the same
//!   credentials. An authenticated 300 must carry a MESSAGE-INTEGRITY that
//!   verifies, as a success must.
//!
//! Bytes and time go in; bytes to send and outcomes come out. The caller
//! owns the socket: `turn-bench` drives thousands of sessions over epoll,
//! [`super::turn::TurnProbe`] one over the probe's UDP socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::credentials::Credentials;
use super::error::ClientError;
use super::{RetransmitPolicy, Rng, Transaction};
use crate::server::auth::SECURITY_FEATURE_COOKIE;
use crate::wire::attr::transport;
use crate::wire::attr::{PasswordAlgorithmEntry, password_algorithm};
use crate::wire::integrity::{IntegrityAlgorithm, Key, PasswordAlgorithm};
use crate::wire::{
    Attribute, AttributeType, Class, HEADER_LEN, Message, MessageBuilder, MessageType, Method, TransactionId,
};

/// Largest request the client writes.
pub const MAX_REQUEST: usize = 1500;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Credentials.
    pub credentials: Credentials,
    /// The realm; learnt from the first 401 when `None`.
    pub realm: Option<String>,
    /// SOFTWARE attribute sent with requests (`None`: none).
    pub software: Option<String>,
    /// The request timers (RFC 8489: RTO 500 ms, Rc 7, Rm 16).
    pub policy: RetransmitPolicy,
    /// Over a reliable transport (TCP, TLS) nothing is retransmitted and a
    /// transaction times out after Ti, the same total as over UDP
    /// (RFC 8489: 39.5 s).
    pub reliable: bool,
    /// Authentication rounds (401/438 answered with a new request) allowed
    /// per request.
    pub max_auth_rounds: u32,
    /// Add FINGERPRINT to requests.
    pub fingerprint: bool,
    /// The long-term key's password algorithm (RFC 8489 §9.2). MD5: the
    /// RFC 5389 exchange. SHA-256: only when the server's challenge offers
    /// it (a nonce with the security feature cookie and the password
    /// algorithms bit, and SHA-256 in PASSWORD-ALGORITHMS); requests then
    /// carry PASSWORD-ALGORITHMS (the server's list echoed),
    /// PASSWORD-ALGORITHM and MESSAGE-INTEGRITY-SHA256. A server that does
    /// not offer it fails the request ([`ClientError::PasswordAlgorithm`]).
    pub password_algorithm: PasswordAlgorithm,
    /// The server the session talks to first, when the caller says: a 300
    /// pointing back to it is not followed.
    pub server: Option<SocketAddr>,
    /// 300 (Try Alternate) answers followed per Allocate (RFC 8489 §10;
    /// default 1, 0 makes a 300 the end of the request). Counted for each
    /// Allocate on its own, across its authentication rounds: a later
    /// Allocate of the session may be redirected again.
    pub max_redirects: u32,
}

impl ClientConfig {
    /// RFC 8489 defaults for `credentials`: MD5 keys, FINGERPRINT, no
    /// SOFTWARE, three authentication rounds per request.
    pub fn new(credentials: Credentials) -> ClientConfig {
        ClientConfig {
            credentials,
            realm: None,
            software: None,
            policy: RetransmitPolicy::default(),
            reliable: false,
            max_auth_rounds: 3,
            fingerprint: true,
            password_algorithm: PasswordAlgorithm::Md5,
            server: None,
            max_redirects: 1,
        }
    }

    /// The longest a transaction can take before it times out.
    pub fn transaction_timeout(&self) -> Duration {
        self.policy.timeout()
    }
}

/// A TURN request, kept so that it can be written again after a challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Allocate a UDP relay, optionally asking for a lifetime (seconds).
    Allocate {
        /// LIFETIME to ask for.
        lifetime: Option<u32>,
    },
    /// Refresh the allocation (0 releases it).
    Refresh {
        /// LIFETIME to ask for.
        lifetime: u32,
    },
    /// Install or refresh permissions for these peers' IP addresses.
    CreatePermission {
        /// The peers.
        peers: Vec<SocketAddr>,
    },
    /// Bind `channel` to `peer` (or refresh the binding).
    ChannelBind {
        /// Channel number, 0x4000–0x4FFF.
        channel: u16,
        /// The peer.
        peer: SocketAddr,
    },
}

impl Request {
    /// The STUN method.
    pub fn method(&self) -> Method {
        match self {
            Request::Allocate { .. } => Method::ALLOCATE,
            Request::Refresh { .. } => Method::REFRESH,
            Request::CreatePermission { .. } => Method::CREATE_PERMISSION,
            Request::ChannelBind { .. } => Method::CHANNEL_BIND,
        }
    }
}

/// What a successful response carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Success {
    /// XOR-RELAYED-ADDRESS (Allocate).
    pub relayed: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS (Allocate).
    pub mapped: Option<SocketAddr>,
    /// LIFETIME (Allocate, Refresh).
    pub lifetime: Option<u32>,
}

/// What [`TurnSession::handle`] made of a received message.
#[derive(Debug)]
pub enum Handled<'a> {
    /// Not a response to the request in flight (another transaction, a
    /// stray message, ChannelData, a Data indication).
    Ignored,
    /// A response to the request in flight that failed the integrity check
    /// (the reason), dropped as if never received: the transaction goes on
    /// (RFC 8489 §9.2.5, over UDP).
    Discarded(&'static str),
    /// A challenge was answered: transmit this new request.
    Transmit(&'a [u8]),
    /// A 300 (Try Alternate) to an Allocate, followed: the request goes to
    /// `server` now. The caller moves its transport there (the same kind:
    /// UDP from the same socket, or a new TCP or TLS connection, which over
    /// TLS checks the certificate for `domain` when given, else for the
    /// name it used so far), then transmits `request`; the transaction
    /// timers start again with it.
    Redirect {
        /// The ALTERNATE-SERVER.
        server: SocketAddr,
        /// The ALTERNATE-DOMAIN, over TLS.
        domain: Option<String>,
        /// The request to transmit there.
        request: &'a [u8],
    },
    /// The transaction ended.
    Done(Result<Success, ClientError>),
}

/// What the timers ask for.
#[derive(Debug)]
pub enum Poll<'a> {
    /// No transaction in flight.
    Idle,
    /// Nothing to do before this instant.
    Wait(Instant),
    /// Retransmit this request now.
    Transmit(&'a [u8]),
    /// The transaction timed out.
    Failed(ClientError),
}

#[derive(Debug)]
struct Pending {
    request: Request,
    tx: Transaction,
    auth_rounds: u32,
    /// Sent with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
    authenticated: bool,
    /// Sent to a server that has not challenged this session yet (after a
    /// redirect): its 401 is a challenge, not a verdict on the password.
    new_server: bool,
    /// The redirects this request followed.
    hops: Hops,
}

/// The redirects one request followed: how many, and where in
/// `TurnSession::redirected_from` the servers it left begin.
#[derive(Clone, Copy, Debug)]
struct Hops {
    count: u32,
    since: usize,
}

/// One client's protocol state. See the module documentation.
#[derive(Debug)]
pub struct TurnSession {
    cfg: ClientConfig,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<Key>,
    /// PASSWORD-ALGORITHMS of the last challenge, as sent (SHA-256 only).
    offered_algorithms: Vec<u8>,
    /// The integrity the last success response was verified with.
    response_integrity: Option<IntegrityAlgorithm>,
    rng: Rng,
    pending: Option<Pending>,
    /// The server requests go to, when known (`ClientConfig::server`, then
    /// where a redirect sent the session).
    server: Option<SocketAddr>,
    /// Servers that redirected this session, in order (those known).
    redirected_from: Vec<SocketAddr>,
    /// Redirects followed, all requests together.
    redirects: u32,
    buf: Box<[u8; MAX_REQUEST]>,
    len: usize,
}

/// The error code of a STUN error response, and its reason.
pub fn error_code<'a>(m: &Message<'a>) -> Option<(u16, &'a str)> {
    match m.get(AttributeType::ERROR_CODE)?.decode(&m.transaction_id()) {
        Ok(Attribute::ErrorCode(e)) => Some((e.code, e.reason)),
        _ => None,
    }
}

/// Whether `nonce` announces the "password algorithms" security feature
/// (RFC 8489 §9.2): the cookie, then a feature set with that bit set. The
/// bit is counted from the right (erratum 6290, as relay-core's server and
/// most servers do) or, as the RFC's original text reads, from the left;
/// either is accepted.
pub fn nonce_offers_password_algorithms(nonce: &str) -> bool {
    let Some(features) = nonce.strip_prefix(SECURITY_FEATURE_COOKIE).and_then(|r| r.get(..4)) else {
        return false;
    };
    match BASE64.decode(features) {
        Ok(set) if set.len() == 3 => set[2] & 1 != 0 || set[0] & 0x80 != 0,
        _ => false,
    }
}

/// Checks that a challenge offers SHA-256 (RFC 8489 §9.2.3: the nonce's
/// feature set and PASSWORD-ALGORITHMS); returns PASSWORD-ALGORITHMS as
/// sent, for the client to echo.
fn offered_sha256<'a>(m: &Message<'a>, nonce: &str) -> Result<&'a [u8], String> {
    if !nonce_offers_password_algorithms(nonce) {
        return Err(format!(
            "SHA-256 asked for, but the server's nonce does not announce password algorithms \
             (no {SECURITY_FEATURE_COOKIE} cookie with that feature)"
        ));
    }
    let list = match m.get(AttributeType::PASSWORD_ALGORITHMS).map(|a| a.decode(&m.transaction_id())) {
        Some(Ok(Attribute::PasswordAlgorithms(list))) => list,
        Some(_) => return Err("malformed PASSWORD-ALGORITHMS in the challenge".into()),
        None => return Err("SHA-256 asked for, but the challenge has no PASSWORD-ALGORITHMS".into()),
    };
    if !list.iter().any(|e| e.algorithm == password_algorithm::SHA256) {
        let codes: Vec<String> = list.iter().map(|e| e.algorithm.to_string()).collect();
        return Err(format!("SHA-256 asked for, but the server offers only [{}]", codes.join(", ")));
    }
    Ok(list.as_bytes())
}

fn text_attr<'a>(m: &Message<'a>, ty: AttributeType) -> Option<&'a str> {
    match m.get(ty)?.decode(&m.transaction_id()) {
        Ok(Attribute::Realm(s) | Attribute::Nonce(s)) => Some(s),
        _ => None,
    }
}

impl TurnSession {
    /// A session with no transaction in flight. REST credentials are
    /// resolved for `unix_now` (seconds since the epoch; long-term
    /// credentials ignore it); `seed` seeds the transaction ids (take it
    /// from the OS, or from a generator that was). The key for a configured
    /// realm is derived with the first request (credentials it cannot use
    /// fail that request).
    pub fn new(cfg: ClientConfig, unix_now: u64, seed: u64) -> TurnSession {
        let (username, password) = cfg.credentials.resolve(unix_now);
        let realm = cfg.realm.clone();
        let server = cfg.server;
        TurnSession {
            cfg,
            username,
            password,
            realm,
            nonce: None,
            key: None,
            offered_algorithms: Vec::new(),
            response_integrity: None,
            rng: Rng(seed),
            pending: None,
            server,
            redirected_from: Vec::new(),
            redirects: 0,
            buf: Box::new([0u8; MAX_REQUEST]),
            len: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The user name sent (REST: `expiry:user`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The realm in use (configured or learnt).
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// The current nonce.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// The integrity attribute the last success response carried and that
    /// verified with the client's key (`None`: it had none).
    pub fn response_integrity(&self) -> Option<IntegrityAlgorithm> {
        self.response_integrity
    }

    /// The server requests go to now, when known: where the session
    /// landed after a redirect, else [`ClientConfig::server`].
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
    }

    /// The servers that redirected this session with a 300 it followed,
    /// the first one first (those known: the first is
    /// [`ClientConfig::server`] when the caller gave it).
    pub fn redirected_from(&self) -> &[SocketAddr] {
        &self.redirected_from
    }

    /// How many 300s this session followed.
    pub fn redirects(&self) -> u32 {
        self.redirects
    }

    /// Whether a transaction is in flight.
    pub fn is_busy(&self) -> bool {
        self.pending.is_some()
    }

    /// The timers of the transaction in flight (its deadline, requests
    /// sent, round-trip time).
    pub fn transaction(&self) -> Option<&Transaction> {
        self.pending.as_ref().map(|p| &p.tx)
    }

    /// Abandons the transaction in flight, if any.
    pub fn cancel(&mut self) {
        self.pending = None;
    }

    fn derive_key(&mut self, realm: &str) -> Result<(), ClientError> {
        let key = Key::long_term(self.cfg.password_algorithm, &self.username, realm, &self.password)
            .map_err(|e| ClientError::Credentials(e.to_string()))?;
        self.key = Some(key);
        Ok(())
    }

    /// Starts `request` at `now`; returns the bytes to transmit. Fails when
    /// another transaction is in flight.
    pub fn start(&mut self, request: Request, now: Instant) -> Result<&[u8], ClientError> {
        if self.pending.is_some() {
            return Err(ClientError::Busy);
        }
        let hops = Hops { count: 0, since: self.redirected_from.len() };
        self.begin(request, now, 0, false, hops)?;
        Ok(&self.buf[..self.len])
    }

    fn begin(
        &mut self,
        request: Request,
        now: Instant,
        auth_rounds: u32,
        new_server: bool,
        hops: Hops,
    ) -> Result<(), ClientError> {
        if self.key.is_none()
            && let Some(realm) = self.realm.clone()
        {
            self.derive_key(&realm)?;
        }
        let tid = self.rng.tid();
        self.len = self.encode(&request, tid)?;
        let policy = self.cfg.policy;
        let mut tx = if self.cfg.reliable {
            Transaction::reliable(tid, policy, now)
        } else {
            Transaction::new(tid, policy, now)
        };
        // The first request leaves now, with what this returns.
        tx.poll_transmit(now);
        let authenticated = self.nonce.is_some() && self.key.is_some() && self.realm.is_some();
        self.pending = Some(Pending { request, tx, auth_rounds, authenticated, new_server, hops });
        Ok(())
    }

    fn encode(&mut self, request: &Request, tid: TransactionId) -> Result<usize, ClientError> {
        let TurnSession { cfg, username, realm, nonce, key, buf, offered_algorithms, .. } = self;
        let ty = MessageType::new(Class::Request, request.method());
        let mut b = MessageBuilder::new(&mut buf[..], ty, tid)?;
        match request {
            Request::Allocate { lifetime } => {
                b.add(&Attribute::RequestedTransport(transport::UDP))?;
                if let Some(l) = lifetime {
                    b.add(&Attribute::Lifetime(*l))?;
                }
            }
            Request::Refresh { lifetime } => {
                b.add(&Attribute::Lifetime(*lifetime))?;
            }
            Request::CreatePermission { peers } => {
                for p in peers {
                    b.add(&Attribute::XorPeerAddress(*p))?;
                }
            }
            Request::ChannelBind { channel, peer } => {
                b.add(&Attribute::ChannelNumber(*channel))?;
                b.add(&Attribute::XorPeerAddress(*peer))?;
            }
        }
        if let Some(s) = &cfg.software {
            b.add(&Attribute::Software(s))?;
        }
        if let (Some(realm), Some(nonce), Some(key)) = (realm.as_deref(), nonce.as_deref(), key.as_ref()) {
            let sha256 = key.algorithm() == PasswordAlgorithm::Sha256;
            if sha256 {
                // RFC 8489 §9.2.4: the server's list echoed, and the choice.
                b.add_raw(AttributeType::PASSWORD_ALGORITHMS, offered_algorithms)?;
                let chosen = PasswordAlgorithmEntry { algorithm: password_algorithm::SHA256, params: &[] };
                b.add(&Attribute::PasswordAlgorithm(chosen))?;
            }
            b.add(&Attribute::Username(username))?;
            b.add(&Attribute::Realm(realm))?;
            b.add(&Attribute::Nonce(nonce))?;
            if sha256 {
                b.add_message_integrity_sha256(key.as_bytes())?;
            } else {
                b.add_message_integrity(key.as_bytes())?;
            }
        }
        if cfg.fingerprint {
            b.add_fingerprint()?;
        }
        Ok(b.finish())
    }

    /// A response to a signed request that does not authenticate: dropped
    /// over UDP, the end of the transaction over a reliable transport.
    fn unauthenticated(&mut self, why: &'static str) -> Handled<'_> {
        if !self.cfg.reliable {
            return Handled::Discarded(why);
        }
        self.pending = None;
        Handled::Done(Err(ClientError::Unauthenticated(why)))
    }

    /// Feeds a message received at `now`; see [`Handled`].
    pub fn handle(&mut self, msg: &[u8], now: Instant) -> Handled<'_> {
        let Some(p) = &self.pending else { return Handled::Ignored };
        if msg.len() < HEADER_LEN || msg[0] & 0xC0 != 0 {
            return Handled::Ignored;
        }
        let Ok(m) = Message::parse(msg) else { return Handled::Ignored };
        if m.transaction_id() != p.tx.tid() || !m.class().is_response() || m.method() != p.request.method() {
            return Handled::Ignored;
        }
        // A response to a signed request counts only if its integrity
        // verifies with our key (MESSAGE-INTEGRITY-SHA256 when it carries
        // that); a success must carry it. An error may go without: the
        // server answers 400, 401 and 438 before it has authenticated.
        let mut integrity = None;
        if p.authenticated
            && let Some(key) = &self.key
        {
            if m.has_integrity() {
                match m.verify_integrity(key.as_bytes()) {
                    Ok(i) => integrity = Some(i),
                    Err(_) => return self.unauthenticated("MESSAGE-INTEGRITY does not verify"),
                }
            } else if m.class() == Class::Success {
                return self.unauthenticated("success without MESSAGE-INTEGRITY");
            }
        }
        let method = p.request.method().name();
        if m.class() == Class::Success {
            self.response_integrity = integrity;
            let tid = m.transaction_id();
            let mut s = Success::default();
            for a in m.attributes() {
                match a.decode(&tid) {
                    Ok(Attribute::XorRelayedAddress(x)) if s.relayed.is_none() => s.relayed = Some(x),
                    Ok(Attribute::XorMappedAddress(x)) => s.mapped = Some(x),
                    Ok(Attribute::Lifetime(l)) => s.lifetime = Some(l),
                    _ => {}
                }
            }
            self.pending = None;
            return Handled::Done(Ok(s));
        }
        let (code, reason) = error_code(&m).unwrap_or((0, ""));
        if matches!(code, 401 | 438)
            && p.auth_rounds < self.cfg.max_auth_rounds
            && let Some(nonce) = text_attr(&m, AttributeType::NONCE)
        {
            let server_realm = text_attr(&m, AttributeType::REALM);
            // A 401 to an authenticated request means wrong credentials,
            // unless we guessed the realm and the server names another.
            let realm_changed = self.cfg.realm.is_none() && server_realm.is_some() && server_realm != self.realm();
            if code == 438 || !p.authenticated || p.new_server || realm_changed {
                let (nonce, auth_rounds) = (nonce.to_owned(), p.auth_rounds);
                if realm_changed && let Some(r) = server_realm {
                    let r = r.to_owned();
                    if let Err(e) = self.derive_key(&r) {
                        self.pending = None;
                        return Handled::Done(Err(e));
                    }
                    self.realm = Some(r);
                }
                if self.realm.is_none() || self.key.is_none() {
                    self.pending = None;
                    return Handled::Done(Err(ClientError::Malformed(format!("{code} without REALM"))));
                }
                if self.cfg.password_algorithm == PasswordAlgorithm::Sha256 {
                    match offered_sha256(&m, &nonce) {
                        Ok(list) => self.offered_algorithms = list.to_vec(),
                        Err(why) => {
                            self.pending = None;
                            return Handled::Done(Err(ClientError::PasswordAlgorithm(why)));
                        }
                    }
                }
                self.nonce = Some(nonce);
                let (request, hops) = match self.pending.take() {
                    Some(p) => (p.request, p.hops),
                    None => return Handled::Ignored,
                };
                return match self.begin(request, now, auth_rounds + 1, false, hops) {
                    Ok(()) => Handled::Transmit(&self.buf[..self.len]),
                    Err(e) => Handled::Done(Err(e)),
                };
            }
        }
        if code == 300 && p.request.method() == Method::ALLOCATE {
            return self.try_alternate(&m, integrity.is_some(), now, reason);
        }
        self.pending = None;
        Handled::Done(Err(ClientError::Rejected { method, code, reason: reason.to_owned() }))
    }

    /// A 300 (Try Alternate) to the Allocate in flight (RFC 8489 §10):
    /// followed when it names an ALTERNATE-SERVER of the current server's
    /// family that is neither it nor one that redirected this Allocate
    /// already, within `max_redirects` for this Allocate; otherwise the
    /// request fails with the 300.
    fn try_alternate(&mut self, m: &Message<'_>, sealed: bool, now: Instant, reason: &str) -> Handled<'_> {
        let Some(p) = &self.pending else { return Handled::Ignored };
        // A redirect of an authenticated request must be the server's: a
        // forged one would send our credentials' integrity elsewhere.
        if p.authenticated && !sealed {
            return self.unauthenticated("300 without MESSAGE-INTEGRITY");
        }
        let tid = m.transaction_id();
        let alternate = match m.get(AttributeType::ALTERNATE_SERVER).map(|a| a.decode(&tid)) {
            Some(Ok(Attribute::AlternateServer(a))) => Some(a),
            _ => None,
        };
        let domain = match m.get(AttributeType::ALTERNATE_DOMAIN).map(|a| a.decode(&tid)) {
            Some(Ok(Attribute::AlternateDomain(d))) => Some(d.to_owned()),
            _ => None,
        };
        let hops = p.hops;
        let tried = self.redirected_from.get(hops.since..).unwrap_or_default();
        let refused = match alternate {
            None => Some("no ALTERNATE-SERVER".to_owned()),
            Some(_) if hops.count >= self.cfg.max_redirects => Some(format!(
                "{} redirect(s) followed already by this Allocate, at most {}",
                hops.count, self.cfg.max_redirects
            )),
            Some(a) if Some(a) == self.server || tried.contains(&a) => Some(format!("{a} was tried already")),
            Some(a) if self.server.is_some_and(|s| s.is_ipv4() != a.is_ipv4()) => {
                Some(format!("{a} is of another address family"))
            }
            Some(a) if a.ip().is_unspecified() || a.port() == 0 => Some(format!("{a} cannot be reached")),
            Some(_) => None,
        };
        let (Some(to), None) = (alternate, &refused) else {
            self.pending = None;
            let why = refused.unwrap_or_default();
            let reason = format!("{reason} (not followed: {why})");
            return Handled::Done(Err(ClientError::Rejected { method: "Allocate", code: 300, reason }));
        };
        // The NONCE of the 300, when given (libwebrtc takes its REALM and
        // NONCE; a realm stays the one the key was derived for here).
        if let Some(nonce) = text_attr(m, AttributeType::NONCE) {
            self.nonce = Some(nonce.to_owned());
        }
        let request = match self.pending.take() {
            Some(p) => p.request,
            None => return Handled::Ignored,
        };
        if let Some(from) = self.server {
            self.redirected_from.push(from);
        }
        self.redirects += 1;
        self.server = Some(to);
        let hops = Hops { count: hops.count + 1, since: hops.since };
        match self.begin(request, now, 0, true, hops) {
            Ok(()) => Handled::Redirect { server: to, domain, request: &self.buf[..self.len] },
            Err(e) => Handled::Done(Err(e)),
        }
    }

    /// Runs the timers at `now`; see [`Poll`].
    pub fn poll(&mut self, now: Instant) -> Poll<'_> {
        let Some(p) = &mut self.pending else { return Poll::Idle };
        if p.tx.poll_transmit(now) {
            return Poll::Transmit(&self.buf[..self.len]);
        }
        if p.tx.is_timed_out(now) {
            let (method, tries) = (p.request.method().name(), p.tx.transmissions());
            self.pending = None;
            return Poll::Failed(ClientError::Timeout { method, tries });
        }
        Poll::Wait(p.tx.poll_timeout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    const USER: &str = "alice";
    const PASS: &str = "secret";
    const REALM: &str = "bench.test";
    /// relay-core's nonce shape: cookie, feature set 0x000001, then hex.
    const NONCE_SHA: &str = "obMatJos2AAAB0000000065000000aabbccddeeff00112233445566778899";
    const NONCE_PLAIN: &str = "0000000065000000aabbccddeeff00112233445566778899";
    /// PASSWORD-ALGORITHMS: SHA-256 then MD5, no parameters.
    const OFFERED: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

    fn session_with(alg: PasswordAlgorithm, reliable: bool) -> TurnSession {
        let mut cfg = ClientConfig::new(Credentials::long_term(USER, PASS));
        cfg.password_algorithm = alg;
        cfg.reliable = reliable;
        TurnSession::new(cfg, 0, 7)
    }

    fn session(alg: PasswordAlgorithm) -> TurnSession {
        session_with(alg, false)
    }

    fn tid_of(msg: &[u8]) -> TransactionId {
        Message::parse(msg).unwrap().transaction_id()
    }

    /// A 401 to `tid` with REALM, NONCE and, when given, PASSWORD-ALGORITHMS.
    fn challenge(tid: TransactionId, nonce: &str, offered: Option<&[u8]>) -> Vec<u8> {
        let mut out = vec![0u8; 512];
        let mut b = MessageBuilder::new(&mut out, MessageType::new(Class::Error, Method::ALLOCATE), tid).unwrap();
        b.add(&Attribute::ErrorCode(ErrorCode { code: 401, reason: "Unauthenticated" })).unwrap();
        b.add(&Attribute::Realm(REALM)).unwrap();
        b.add(&Attribute::Nonce(nonce)).unwrap();
        if let Some(o) = offered {
            b.add_raw(AttributeType::PASSWORD_ALGORITHMS, o).unwrap();
        }
        let n = b.finish();
        out.truncate(n);
        out
    }

    /// An Allocate success to `tid`, sealed with `key` by SHA-256 or SHA-1,
    /// or not at all.
    fn success(tid: TransactionId, key: Option<&Key>, sha256: bool) -> Vec<u8> {
        let mut out = vec![0u8; 512];
        let mut b = MessageBuilder::new(&mut out, MessageType::new(Class::Success, Method::ALLOCATE), tid).unwrap();
        b.add(&Attribute::Lifetime(600)).unwrap();
        match key {
            Some(k) if sha256 => drop(b.add_message_integrity_sha256(k.as_bytes()).unwrap()),
            Some(k) => drop(b.add_message_integrity(k.as_bytes()).unwrap()),
            None => {}
        }
        let n = b.finish();
        out.truncate(n);
        out
    }

    fn sha_key() -> Key {
        Key::long_term(PasswordAlgorithm::Sha256, USER, REALM, PASS).unwrap()
    }

    fn md5_key() -> Key {
        Key::long_term(PasswordAlgorithm::Md5, USER, REALM, PASS).unwrap()
    }

    /// Starts an Allocate and answers the 401: the authenticated request.
    fn challenged(c: &mut TurnSession, nonce: &str, offered: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
        let now = Instant::now();
        let first = c.start(Request::Allocate { lifetime: None }, now).unwrap().to_vec();
        assert!(Message::parse(&first).unwrap().get(AttributeType::PASSWORD_ALGORITHM).is_none());
        match c.handle(&challenge(tid_of(&first), nonce, offered), now) {
            Handled::Transmit(bytes) => Ok(bytes.to_vec()),
            Handled::Done(Err(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn sha256_request_carries_the_algorithms_and_integrity_sha256() {
        let mut c = session(PasswordAlgorithm::Sha256);
        let req = challenged(&mut c, NONCE_SHA, Some(&OFFERED)).unwrap();
        let m = Message::parse(&req).unwrap();
        let tid = m.transaction_id();
        // PASSWORD-ALGORITHMS echoed byte for byte, PASSWORD-ALGORITHM SHA-256.
        assert_eq!(m.get(AttributeType::PASSWORD_ALGORITHMS).unwrap().value, OFFERED);
        match m.get(AttributeType::PASSWORD_ALGORITHM).unwrap().decode(&tid) {
            Ok(Attribute::PasswordAlgorithm(e)) => {
                assert_eq!((e.algorithm, e.params), (password_algorithm::SHA256, &[][..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(text_attr(&m, AttributeType::NONCE), Some(NONCE_SHA));
        assert_eq!(text_attr(&m, AttributeType::REALM), Some(REALM));
        // Only MESSAGE-INTEGRITY-SHA256, with the SHA-256 long-term key.
        assert!(m.get(AttributeType::MESSAGE_INTEGRITY).is_none());
        assert!(m.get(AttributeType::MESSAGE_INTEGRITY_SHA256).is_some());
        m.verify_message_integrity_sha256(sha_key().as_bytes()).unwrap();
        assert!(m.verify_message_integrity_sha256(md5_key().as_bytes()).is_err());
        m.verify_fingerprint().unwrap();
    }

    #[test]
    fn sha256_responses_are_verified() {
        let mut c = session(PasswordAlgorithm::Sha256);
        let req = challenged(&mut c, NONCE_SHA, Some(&OFFERED)).unwrap();
        let tid = tid_of(&req);
        let now = Instant::now();
        // Sealed with another key: not the server's answer.
        let wrong = Key::long_term(PasswordAlgorithm::Sha256, USER, REALM, "other").unwrap();
        assert!(matches!(c.handle(&success(tid, Some(&wrong), true), now), Handled::Discarded(_)));
        assert!(c.is_busy());
        match c.handle(&success(tid, Some(&sha_key()), true), now) {
            Handled::Done(Ok(s)) => assert_eq!(s.lifetime, Some(600)),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.response_integrity(), Some(IntegrityAlgorithm::Sha256));
    }

    #[test]
    fn a_success_to_a_signed_request_must_carry_integrity() {
        // Over UDP it is dropped and the retransmissions go on.
        let mut c = session(PasswordAlgorithm::Md5);
        let tid = tid_of(&challenged(&mut c, NONCE_PLAIN, None).unwrap());
        let now = Instant::now();
        match c.handle(&success(tid, None, false), now) {
            Handled::Discarded(why) => assert!(why.contains("without MESSAGE-INTEGRITY"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(c.is_busy());
        // Over a reliable transport it ends the transaction.
        let mut c = session_with(PasswordAlgorithm::Md5, true);
        let tid = tid_of(&challenged(&mut c, NONCE_PLAIN, None).unwrap());
        match c.handle(&success(tid, None, false), now) {
            Handled::Done(Err(ClientError::Unauthenticated(_))) => {}
            other => panic!("{other:?}"),
        }
        assert!(!c.is_busy());
        // Before the challenge nothing is signed, so nothing is checked.
        let mut c = session(PasswordAlgorithm::Md5);
        let first = c.start(Request::Allocate { lifetime: None }, now).unwrap().to_vec();
        assert!(matches!(c.handle(&success(tid_of(&first), None, false), now), Handled::Done(Ok(_))));
    }

    #[test]
    fn sha256_is_not_downgraded() {
        // No PASSWORD-ALGORITHMS in the challenge.
        let e = challenged(&mut session(PasswordAlgorithm::Sha256), NONCE_SHA, None).unwrap_err();
        assert!(matches!(e, ClientError::PasswordAlgorithm(_)), "{e}");
        assert!(e.to_string().contains("no PASSWORD-ALGORITHMS"), "{e}");
        // A nonce without the security feature cookie.
        let e = challenged(&mut session(PasswordAlgorithm::Sha256), NONCE_PLAIN, Some(&OFFERED)).unwrap_err();
        assert!(e.to_string().contains("obMatJos2"), "{e}");
        // The cookie without the password algorithms bit.
        let no_bit = NONCE_SHA.replace("AAAB", "AAAA");
        let e = challenged(&mut session(PasswordAlgorithm::Sha256), &no_bit, Some(&OFFERED)).unwrap_err();
        assert!(matches!(e, ClientError::PasswordAlgorithm(_)), "{e}");
        // Only MD5 offered.
        let md5_only = [0x00, 0x01, 0x00, 0x00];
        let mut c = session(PasswordAlgorithm::Sha256);
        let e = challenged(&mut c, NONCE_SHA, Some(&md5_only)).unwrap_err();
        assert!(e.to_string().contains("offers only [1]"), "{e}");
        assert!(!c.is_busy());
    }

    #[test]
    fn md5_requests_are_unchanged() {
        let mut c = session(PasswordAlgorithm::Md5);
        let req = challenged(&mut c, NONCE_SHA, Some(&OFFERED)).unwrap();
        let m = Message::parse(&req).unwrap();
        assert!(m.get(AttributeType::PASSWORD_ALGORITHMS).is_none());
        assert!(m.get(AttributeType::PASSWORD_ALGORITHM).is_none());
        assert!(m.get(AttributeType::MESSAGE_INTEGRITY_SHA256).is_none());
        m.verify_message_integrity(md5_key().as_bytes()).unwrap();
        match c.handle(&success(m.transaction_id(), Some(&md5_key()), false), Instant::now()) {
            Handled::Done(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(c.response_integrity(), Some(IntegrityAlgorithm::Sha1));
    }

    #[test]
    fn a_401_to_a_signed_request_is_final() {
        let mut c = session(PasswordAlgorithm::Md5);
        let req = challenged(&mut c, NONCE_PLAIN, None).unwrap();
        match c.handle(&challenge(tid_of(&req), NONCE_PLAIN, None), Instant::now()) {
            Handled::Done(Err(e)) => assert_eq!(e.code(), Some(401), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timers_retransmit_over_udp_only() {
        let t0 = Instant::now();
        let rto = Duration::from_millis(10);
        for (reliable, sends) in [(false, 3), (true, 1)] {
            let mut cfg = ClientConfig::new(Credentials::long_term(USER, PASS));
            cfg.policy = RetransmitPolicy { rto, rc: 3, rm: 2 };
            cfg.reliable = reliable;
            assert_eq!(cfg.transaction_timeout(), Duration::from_millis(50));
            let mut c = TurnSession::new(cfg, 0, 1);
            c.start(Request::Refresh { lifetime: 0 }, t0).unwrap();
            let (mut sent, mut now) = (1, t0);
            let end = loop {
                match c.poll(now) {
                    Poll::Transmit(_) => sent += 1,
                    Poll::Wait(t) => now = t,
                    Poll::Failed(e) => break (e, now - t0),
                    Poll::Idle => panic!("idle"),
                }
            };
            assert!(matches!(end.0, ClientError::Timeout { tries, .. } if tries == sends), "{:?}", end.0);
            assert_eq!((sent, end.1), (sends, Duration::from_millis(50)));
            assert!(matches!(c.poll(now), Poll::Idle));
        }
    }

    const A: &str = "192.0.2.1:3478";
    const B: &str = "192.0.2.2:3478";

    /// A 300 to `tid` naming `to` (and `domain`), sealed with `key`.
    fn try_alternate(tid: TransactionId, to: SocketAddr, domain: Option<&str>, key: Option<&Key>) -> Vec<u8> {
        let mut out = vec![0u8; 512];
        let mut b = MessageBuilder::new(&mut out, MessageType::new(Class::Error, Method::ALLOCATE), tid).unwrap();
        b.add(&Attribute::ErrorCode(ErrorCode { code: 300, reason: "Try Alternate" })).unwrap();
        b.add(&Attribute::AlternateServer(to)).unwrap();
        if let Some(d) = domain {
            b.add(&Attribute::AlternateDomain(d)).unwrap();
        }
        if let Some(k) = key {
            b.add_message_integrity(k.as_bytes()).unwrap();
        }
        let n = b.finish();
        out.truncate(n);
        out
    }

    fn session_at(server: &str) -> TurnSession {
        let mut cfg = ClientConfig::new(Credentials::long_term(USER, PASS));
        cfg.server = Some(server.parse().unwrap());
        TurnSession::new(cfg, 0, 9)
    }

    #[test]
    fn a_sealed_300_is_followed_once_with_the_same_credentials() {
        let mut c = session_at(A);
        let req = challenged(&mut c, NONCE_PLAIN, None).unwrap();
        let now = Instant::now();
        let b: SocketAddr = B.parse().unwrap();
        let redirected = match c.handle(&try_alternate(tid_of(&req), b, Some("b.example"), Some(&md5_key())), now) {
            Handled::Redirect { server, domain, request } => {
                assert_eq!((server, domain.as_deref()), (b, Some("b.example")));
                request.to_vec()
            }
            other => panic!("{other:?}"),
        };
        // A new transaction, the same request and credentials.
        let m = Message::parse(&redirected).unwrap();
        assert_ne!(m.transaction_id(), tid_of(&req));
        assert_eq!(m.method(), Method::ALLOCATE);
        m.verify_message_integrity(md5_key().as_bytes()).unwrap();
        assert_eq!((c.server(), c.redirected_from(), c.redirects()), (Some(b), &[A.parse().unwrap()][..], 1));
        // The new server challenges: that is a challenge, not a verdict.
        let retry = match c.handle(&challenge(m.transaction_id(), "fresh-nonce-of-b", None), now) {
            Handled::Transmit(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(text_attr(&Message::parse(&retry).unwrap(), AttributeType::NONCE), Some("fresh-nonce-of-b"));
        match c.handle(&success(tid_of(&retry), Some(&md5_key()), false), now) {
            Handled::Done(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
        // A later Allocate (this one's allocation gone) is an Allocate of
        // its own: its 300 is followed, once, and may send it back to A.
        let c_addr: SocketAddr = "192.0.2.3:3478".parse().unwrap();
        for (from, to) in [(b, c_addr), (c_addr, A.parse().unwrap())] {
            c.start(Request::Allocate { lifetime: None }, now).unwrap();
            let tid = c.transaction().unwrap().tid();
            match c.handle(&try_alternate(tid, to, None, Some(&md5_key())), now) {
                Handled::Redirect { server, .. } => assert_eq!(server, to),
                other => panic!("{other:?}"),
            }
            assert_eq!((c.server(), c.redirected_from().last()), (Some(to), Some(&from)));
            c.cancel();
        }
        assert_eq!(c.redirects(), 3, "the session's total");
    }

    #[test]
    fn one_allocate_follows_one_300_across_its_challenges() {
        // A 300 from A, B's 401, then B's 300 to C: the same Allocate,
        // redirected once already: not followed.
        let mut c = session_at(A);
        let req = challenged(&mut c, NONCE_PLAIN, None).unwrap();
        let now = Instant::now();
        let b: SocketAddr = B.parse().unwrap();
        let at_b = match c.handle(&try_alternate(tid_of(&req), b, None, Some(&md5_key())), now) {
            Handled::Redirect { request, .. } => request.to_vec(),
            other => panic!("{other:?}"),
        };
        let retry = match c.handle(&challenge(tid_of(&at_b), "nonce-of-b", None), now) {
            Handled::Transmit(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        let to_c: SocketAddr = "192.0.2.3:3478".parse().unwrap();
        match c.handle(&try_alternate(tid_of(&retry), to_c, None, Some(&md5_key())), now) {
            Handled::Done(Err(e)) => {
                assert_eq!(e.code(), Some(300));
                assert!(e.to_string().contains("1 redirect(s) followed already by this Allocate"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // With two allowed, the second is followed, but never back to a
        // server this Allocate left.
        let mut cfg = ClientConfig::new(Credentials::long_term(USER, PASS));
        (cfg.server, cfg.max_redirects) = (Some(A.parse().unwrap()), 2);
        let mut c = TurnSession::new(cfg, 0, 5);
        let first = c.start(Request::Allocate { lifetime: None }, now).unwrap().to_vec();
        let at_b = match c.handle(&try_alternate(tid_of(&first), b, None, None), now) {
            Handled::Redirect { request, .. } => request.to_vec(),
            other => panic!("{other:?}"),
        };
        match c.handle(&try_alternate(tid_of(&at_b), A.parse().unwrap(), None, None), now) {
            Handled::Done(Err(e)) => assert!(e.to_string().contains("tried already"), "{e}"),
            other => panic!("{other:?}"),
        }
        let first = c.start(Request::Allocate { lifetime: None }, now).unwrap().to_vec();
        let at_c = match c.handle(&try_alternate(tid_of(&first), to_c, None, None), now) {
            Handled::Redirect { request, .. } => request.to_vec(),
            other => panic!("{other:?}"),
        };
        let d: SocketAddr = "192.0.2.4:3478".parse().unwrap();
        assert!(matches!(c.handle(&try_alternate(tid_of(&at_c), d, None, None), now), Handled::Redirect { .. }));
        assert_eq!(c.redirected_from(), &[A.parse().unwrap(), b, to_c][..]);
    }

    #[test]
    fn a_300_is_refused_back_home_to_another_family_or_unsealed() {
        let now = Instant::now();
        let a: SocketAddr = A.parse().unwrap();
        for (to, why) in [(a, "tried already"), ("[2001:db8::2]:3478".parse().unwrap(), "another address family")] {
            let mut c = session_at(A);
            let req = challenged(&mut c, NONCE_PLAIN, None).unwrap();
            match c.handle(&try_alternate(tid_of(&req), to, None, Some(&md5_key())), now) {
                Handled::Done(Err(e)) => assert!(e.to_string().contains(why), "{e}"),
                other => panic!("{other:?}"),
            }
        }
        // Unsealed, to a signed request: dropped over UDP.
        let mut c = session_at(A);
        let req = challenged(&mut c, NONCE_PLAIN, None).unwrap();
        let b: SocketAddr = B.parse().unwrap();
        assert!(matches!(c.handle(&try_alternate(tid_of(&req), b, None, None), now), Handled::Discarded(_)));
        // Sealed with another key: dropped too.
        let wrong = Key::long_term(PasswordAlgorithm::Md5, USER, REALM, "other").unwrap();
        assert!(matches!(c.handle(&try_alternate(tid_of(&req), b, None, Some(&wrong)), now), Handled::Discarded(_)));
        assert!(c.is_busy() && c.redirects() == 0);
        // Before any challenge nothing is signed: an unsealed 300 is followed.
        let mut c = session_at(A);
        let first = c.start(Request::Allocate { lifetime: None }, now).unwrap().to_vec();
        assert!(matches!(c.handle(&try_alternate(tid_of(&first), b, None, None), now), Handled::Redirect { .. }));
        // max_redirects 0: the 300 ends the request.
        let mut cfg = ClientConfig::new(Credentials::long_term(USER, PASS));
        cfg.max_redirects = 0;
        let mut c = TurnSession::new(cfg, 0, 3);
        let first = c.start(Request::Allocate { lifetime: None }, now).unwrap().to_vec();
        assert!(matches!(c.handle(&try_alternate(tid_of(&first), b, None, None), now), Handled::Done(Err(_))));
    }

    #[test]
    fn feature_cookie() {
        assert!(nonce_offers_password_algorithms("obMatJos2AAAB123"));
        // The bit read from the left, as RFC 8489's original text has it.
        assert!(nonce_offers_password_algorithms("obMatJos2gAAA123"));
        assert!(!nonce_offers_password_algorithms("obMatJos2AAAA123"));
        assert!(!nonce_offers_password_algorithms("obMatJos2AA"));
        assert!(!nonce_offers_password_algorithms("obMatJos2!!!!123"));
        assert!(!nonce_offers_password_algorithms("abcdef"));
    }
}
