//! Requests: one [`Request`] context carries what every handler needs (the
//! time, the client, the message, its method label, how the answer is
//! sealed, where it is written), so the preamble — RFC 8489's checks,
//! long-term authentication, the allocation of the 5-tuple — is written
//! once here and each request kind lives in a file of its own:
//! [`binding`], [`allocate`], [`refresh`], [`permission`]
//! (CreatePermission), [`channel`] (ChannelBind).

mod allocate;
mod binding;
mod channel;
mod permission;
mod refresh;

use std::time::{Duration, Instant};

use super::response::Seal;
use super::{ClientAction, Server};
use crate::server::auth::{KeyCandidates, NonceCheck, NonceIssuer};
use crate::server::error::StunError;
use crate::server::stats::{AuthFailure, Drop, MethodLabel};
use crate::server::table::Client;
use crate::wire::attr::password_algorithm;
use crate::wire::integrity::PasswordAlgorithm;
use crate::wire::{Attribute, AttributeType, Class, Message, Method};

/// The PASSWORD-ALGORITHMS value the server offers: SHA-256, then MD5.
const OFFERED_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// One request being answered.
pub(in crate::server::shard) struct Request<'a, 'm> {
    /// When it arrived.
    pub(in crate::server::shard) now: Instant,
    /// Who sent it.
    pub(in crate::server::shard) client: &'a Client,
    /// The request.
    pub(in crate::server::shard) msg: &'a Message<'m>,
    /// Its method, as counted.
    pub(in crate::server::shard) label: MethodLabel,
    /// How the answer is sealed: the key is set once the request
    /// authenticated.
    pub(in crate::server::shard) seal: Seal,
    /// Where the answer is written.
    pub(in crate::server::shard) out: &'a mut [u8],
}

impl Server {
    /// A STUN message from a client: FINGERPRINT, class, RFC 8489 §6.3.1's
    /// unknown attributes, then the handler of its method.
    pub(in crate::server::shard) fn client_stun(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> ClientAction {
        if msg.fingerprint_offset().is_some() && msg.verify_fingerprint().is_err() {
            self.stats.drop(Drop::BadFingerprint);
            return ClientAction::None;
        }
        match msg.class() {
            Class::Request => {}
            Class::Indication if msg.method() == Method::SEND => return self.send_indication(now, client, msg),
            _ => {
                self.stats.drop(Drop::Unexpected);
                return ClientAction::None;
            }
        }
        let seal = Seal { key: None, fingerprint: msg.fingerprint_offset().is_some() };
        let rq = &mut Request { now, client, msg, label: MethodLabel::of(msg.method()), seal, out };

        // RFC 8489 §6.3.1: unknown comprehension-required attributes → 420.
        let mut unknown = [0u8; 32];
        let mut n = 0;
        for ty in msg.unknown_comprehension_required() {
            if n + 2 <= unknown.len() {
                unknown[n..n + 2].copy_from_slice(&ty.0.to_be_bytes());
                n += 2;
            }
        }
        if n > 0 {
            let unknown = &unknown[..n];
            return self.error_with(rq, StunError::UnknownAttribute, |b| {
                b.add_raw(AttributeType::UNKNOWN_ATTRIBUTES, unknown)?;
                Ok(())
            });
        }

        match msg.method() {
            Method::BINDING => self.binding(rq),
            Method::ALLOCATE => self.allocate(rq),
            Method::REFRESH => self.refresh(rq),
            Method::CREATE_PERMISSION => self.create_permission(rq),
            Method::CHANNEL_BIND => self.channel_bind(rq),
            // RFC 8489 §6.3.1: a request for a method the server does not
            // know is answered 400 Bad Request.
            _ => self.error(rq, StunError::BadRequest),
        }
    }

    /// Long-term credential check (RFC 8489 §9.2.4). `alloc` is the
    /// allocation of this 5-tuple, whose username later requests must use.
    /// On success the request's seal carries the key, and the username is
    /// returned; otherwise the answer to send.
    fn authenticate<'m>(&mut self, rq: &mut Request<'_, 'm>, alloc: Option<u32>) -> Result<&'m str, ClientAction> {
        let msg = rq.msg;
        let tid = msg.transaction_id();
        if !msg.has_integrity() {
            self.stats.auth_failure(AuthFailure::Challenge);
            return Err(self.challenge(rq, StunError::Unauthenticated));
        }
        let text = |ty| match msg.get(ty).map(|a| a.decode(&tid)) {
            Some(Ok(Attribute::Username(s) | Attribute::Realm(s) | Attribute::Nonce(s))) => Some(s),
            _ => None,
        };
        let (Some(username), Some(realm), Some(nonce)) =
            (text(AttributeType::USERNAME), text(AttributeType::REALM), text(AttributeType::NONCE))
        else {
            self.stats.auth_failure(AuthFailure::MissingAttribute);
            return Err(self.error(rq, StunError::BadRequest));
        };
        if realm != self.credentials.realm() {
            self.stats.auth_failure(AuthFailure::WrongRealm);
            return Err(self.challenge(rq, StunError::Unauthenticated));
        }
        let unix_now = self.unix_at(rq.now);
        let nonce_state = self.nonces.check(nonce.as_bytes(), unix_now, rq.client.remote);

        // Password algorithm negotiation (RFC 8489 §9.2.4 step 3): only
        // with a nonce that carries the security feature cookie.
        let mut algorithm = PasswordAlgorithm::Md5;
        if NonceIssuer::has_security_feature_cookie(nonce.as_bytes()) {
            let offered = msg.get(AttributeType::PASSWORD_ALGORITHMS);
            let chosen = msg.get(AttributeType::PASSWORD_ALGORITHM);
            match (offered, chosen) {
                (None, None) => {}
                (Some(offered), Some(chosen)) => {
                    let code = match chosen.decode(&tid) {
                        Ok(Attribute::PasswordAlgorithm(e)) if e.params.is_empty() => e.algorithm,
                        _ => 0,
                    };
                    let ok_code =
                        code == password_algorithm::MD5 || (code == password_algorithm::SHA256 && self.config.sha256);
                    if offered.value != OFFERED_ALGORITHMS || !ok_code {
                        self.stats.auth_failure(AuthFailure::BadAlgorithm);
                        return Err(self.error(rq, StunError::BadRequest));
                    }
                    algorithm = PasswordAlgorithm::from_code(code).unwrap_or(PasswordAlgorithm::Md5);
                }
                _ => {
                    self.stats.auth_failure(AuthFailure::BadAlgorithm);
                    return Err(self.error(rq, StunError::BadRequest));
                }
            }
        }

        // Within an allocation, the username is fixed and its key known.
        let mut candidates = KeyCandidates::default();
        if let Some(a) = alloc.and_then(|id| self.table.get(id)) {
            if *a.username != *username {
                self.stats.auth_failure(AuthFailure::WrongUsername);
                return Err(self.error(rq, StunError::WrongCredentials));
            }
            if a.key.algorithm() == algorithm {
                candidates.push(a.key);
            }
        }
        if candidates.is_empty() {
            self.credentials.keys(username, algorithm, unix_now, &mut candidates);
        }
        if candidates.is_empty() {
            self.stats.auth_failure(AuthFailure::UnknownUser);
            return Err(self.challenge(rq, StunError::Unauthenticated));
        }
        let verified = candidates.iter().find_map(|k| msg.verify_integrity(k.as_bytes()).ok().map(|i| (*k, i)));
        let Some((key, integrity)) = verified else {
            self.stats.auth_failure(AuthFailure::BadIntegrity);
            return Err(self.challenge(rq, StunError::Unauthenticated));
        };
        if nonce_state != NonceCheck::Valid {
            self.stats.auth_failure(AuthFailure::StaleNonce);
            return Err(self.challenge(rq, StunError::StaleNonce));
        }
        rq.seal.key = Some((key, integrity));
        Ok(username)
    }

    /// Authenticates a request that needs this 5-tuple's allocation (437
    /// when there is none); returns its id.
    fn authenticate_existing(&mut self, rq: &mut Request<'_, '_>) -> Result<u32, ClientAction> {
        let existing = self.table.lookup(rq.client);
        self.authenticate(rq, existing)?;
        existing.ok_or_else(|| self.error(rq, StunError::AllocationMismatch))
    }

    /// 401 or 438 with REALM and a fresh NONCE (and PASSWORD-ALGORITHMS
    /// when SHA-256 is offered).
    fn challenge(&mut self, rq: &mut Request<'_, '_>, e: StunError) -> ClientAction {
        let sha256 = self.config.sha256;
        let nonce = self.nonces.issue(self.unix_at(rq.now), rq.client.remote, sha256);
        let realm = self.credentials.realm().to_owned();
        self.error_with(rq, e, |b| {
            b.add(&Attribute::Realm(&realm))?;
            b.add(&Attribute::Nonce(nonce.as_str()))?;
            if sha256 {
                b.add_raw(AttributeType::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS)?;
            }
            Ok(())
        })
    }

    /// The lifetime granted for a requested one: at least the default, at
    /// most the maximum.
    fn granted_lifetime(&self, requested: Option<u32>) -> Duration {
        let max = self.config.max_lifetime;
        let default = self.config.default_lifetime.min(max);
        match requested {
            Some(s) => Duration::from_secs(u64::from(s)).min(max).max(default),
            None => default,
        }
    }
}
