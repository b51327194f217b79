//! Responses: success and error answers to a [`Request`], sealed with the
//! key the request authenticated with (MESSAGE-INTEGRITY or
//! MESSAGE-INTEGRITY-SHA256) and a FINGERPRINT when the request had one,
//! counted, and held to the reflection budget when unauthenticated.

use super::request::Request;
use super::{ClientAction, Server};
use crate::server::error::StunError;
use crate::server::stats::{Drop, Outcome};
use crate::wire::integrity::Key;
use crate::wire::{Attribute, Class, EncodeError, ErrorCode, IntegrityAlgorithm, MessageBuilder, MessageType};

/// How a request's response is sealed.
#[derive(Clone, Copy)]
pub(super) struct Seal {
    /// The key and integrity algorithm, once the request authenticated.
    pub(super) key: Option<(Key, IntegrityAlgorithm)>,
    /// Add a FINGERPRINT (the request had one).
    pub(super) fingerprint: bool,
}

impl Server {
    /// A success response with `body`'s attributes.
    pub(super) fn success(
        &mut self,
        rq: &mut Request<'_, '_>,
        body: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> ClientAction {
        self.respond(rq, Outcome::Success, Class::Success, body)
    }

    /// An error response with no other attributes.
    pub(super) fn error(&mut self, rq: &mut Request<'_, '_>, e: StunError) -> ClientAction {
        self.error_with(rq, e, |_| Ok(()))
    }

    /// An error response with `body`'s attributes after ERROR-CODE.
    ///
    /// Errors found before authentication (400, 401, 420, 438) go without
    /// MESSAGE-INTEGRITY: `rq.seal.key` is only set once the client's key
    /// has verified (RFC 8489 §9.2.4).
    pub(super) fn error_with(
        &mut self,
        rq: &mut Request<'_, '_>,
        e: StunError,
        body: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> ClientAction {
        self.respond(rq, Outcome::Error(e), Class::Error, |b| {
            b.add(&Attribute::ErrorCode(ErrorCode { code: e.code(), reason: e.reason() }))?;
            body(b)
        })
    }

    fn respond(
        &mut self,
        rq: &mut Request<'_, '_>,
        outcome: Outcome,
        class: Class,
        body: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> ClientAction {
        let ty = MessageType::new(class, rq.msg.method());
        let software = self.config.software.as_deref();
        let (seal, tid) = (rq.seal, rq.msg.transaction_id());
        let out = &mut *rq.out;
        let written = (|| {
            let mut b = MessageBuilder::new(out, ty, tid)?;
            body(&mut b)?;
            if let Some(s) = software {
                b.add(&Attribute::Software(s))?;
            }
            match seal.key {
                Some((k, IntegrityAlgorithm::Sha1)) => {
                    b.add_message_integrity(k.as_bytes())?;
                }
                Some((k, IntegrityAlgorithm::Sha256)) => {
                    b.add_message_integrity_sha256(k.as_bytes())?;
                }
                None => {}
            }
            if seal.fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        // Answers that did not authenticate draw on the source's budget.
        if seal.key.is_none()
            && let Some((ip, secs)) = self.answering
            && !self.reflection.allow(ip, secs)
        {
            self.stats.drop(Drop::RateLimited);
            return ClientAction::None;
        }
        self.stats.request(rq.label, outcome);
        match written {
            Ok(len) => ClientAction::Reply { len },
            Err(_) => {
                self.stats.drop(Drop::TooLarge);
                ClientAction::None
            }
        }
    }
}
