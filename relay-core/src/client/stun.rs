//! Binding requests and responses on the client side, and
//! [`BindingProbe`]: one Binding transaction with RFC 8489 retransmissions,
//! for the server-reflexive address and the round-trip time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Probe, RetransmitPolicy, Rng, Transaction, Transmit};
use crate::wire::attr::ChangeRequest;
use crate::wire::{Attribute, Class, EncodeError, Message, MessageBuilder, MessageType, Method, TransactionId};

/// What a Binding request asks for beyond the reflexive address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingRequest {
    /// CHANGE-REQUEST (RFC 5780 §7.2): answer from the other IP and/or port.
    pub change: Option<ChangeRequest>,
    /// PADDING bytes (RFC 5780 §7.6); 0 for none.
    pub padding: usize,
    /// RESPONSE-PORT (RFC 5780 §7.5): answer to this port of our IP.
    pub response_port: Option<u16>,
}

/// Zero bytes for PADDING.
static ZEROS: [u8; 1500] = [0; 1500];

/// Writes a Binding request into `out`, ending with FINGERPRINT.
pub fn encode_binding_request(out: &mut [u8], tid: TransactionId, req: &BindingRequest) -> Result<usize, EncodeError> {
    let mut b = MessageBuilder::new(out, MessageType::new(Class::Request, Method::BINDING), tid)?;
    if let Some(c) = req.change {
        b.add(&Attribute::ChangeRequest(c))?;
    }
    if let Some(p) = req.response_port {
        b.add(&Attribute::ResponsePort(p))?;
    }
    if req.padding > 0 {
        b.add(&Attribute::Padding(&ZEROS[..req.padding.min(ZEROS.len())]))?;
    }
    b.add_fingerprint()?;
    Ok(b.finish())
}

/// An ERROR-CODE as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The code (300–699).
    pub code: u16,
    /// The reason phrase.
    pub reason: String,
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// A Binding response, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindingResponse {
    /// The error, for an error response.
    pub error: Option<ErrorReply>,
    /// XOR-MAPPED-ADDRESS.
    pub xor_mapped: Option<SocketAddr>,
    /// MAPPED-ADDRESS.
    pub mapped: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780), or RFC 3489's CHANGED-ADDRESS (same number).
    pub other_address: Option<SocketAddr>,
    /// SOFTWARE.
    pub software: Option<String>,
    /// PADDING length, when present.
    pub padding: Option<usize>,
}

impl BindingResponse {
    /// The server-reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.xor_mapped.or(self.mapped)
    }

    /// True when MAPPED-ADDRESS and XOR-MAPPED-ADDRESS are both present and
    /// differ: a "generic ALG" rewrote the plain one (RFC 5780 §3.6).
    pub fn alg_detected(&self) -> bool {
        matches!((self.mapped, self.xor_mapped), (Some(m), Some(x)) if m != x)
    }
}

/// Decodes a Binding success or error response; `None` for anything else
/// (including a response whose FINGERPRINT is wrong).
pub fn parse_binding_response(msg: &Message<'_>) -> Option<BindingResponse> {
    if msg.method() != Method::BINDING || !msg.class().is_response() {
        return None;
    }
    if msg.fingerprint_offset().is_some() && msg.verify_fingerprint().is_err() {
        return None;
    }
    let tid = msg.transaction_id();
    let mut r = BindingResponse::default();
    for attr in msg.attributes() {
        match attr.decode(&tid) {
            Ok(Attribute::XorMappedAddress(a)) => r.xor_mapped = Some(a),
            Ok(Attribute::MappedAddress(a)) => r.mapped = Some(a),
            Ok(Attribute::ResponseOrigin(a)) => r.response_origin = Some(a),
            Ok(Attribute::OtherAddress(a)) => r.other_address = Some(a),
            Ok(Attribute::Software(s)) => r.software = Some(s.to_owned()),
            Ok(Attribute::Padding(p)) => r.padding = Some(p.len()),
            Ok(Attribute::ErrorCode(e)) => r.error = Some(ErrorReply { code: e.code, reason: e.reason.to_owned() }),
            _ => {}
        }
    }
    if msg.class() == Class::Error && r.error.is_none() {
        r.error = Some(ErrorReply { code: 0, reason: "error response without ERROR-CODE".into() });
    }
    Some(r)
}

/// True when `packet` is a STUN request of method Binding with id `tid`
/// (the hairpinning test receives its own request).
pub fn is_binding_request(packet: &[u8], tid: TransactionId) -> bool {
    Message::parse(packet)
        .is_ok_and(|m| m.class() == Class::Request && m.method() == Method::BINDING && m.transaction_id() == tid)
}

/// How a Binding transaction ended.
#[allow(clippy::large_enum_variant)] // one per test, never on a hot path
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingOutcome {
    /// An answer (success or error) arrived.
    Response {
        /// Where it came from.
        from: SocketAddr,
        /// The socket it arrived on.
        socket: usize,
        /// Its contents.
        response: BindingResponse,
        /// Round-trip time from the latest transmission.
        rtt: Duration,
        /// Requests sent.
        transmissions: u32,
    },
    /// No answer after every retransmission.
    Timeout {
        /// Requests sent.
        transmissions: u32,
    },
}

impl BindingOutcome {
    /// The response, if one came.
    pub fn response(&self) -> Option<&BindingResponse> {
        match self {
            BindingOutcome::Response { response, .. } => Some(response),
            BindingOutcome::Timeout { .. } => None,
        }
    }
}

/// One Binding transaction from socket 0 to a server. Answers are accepted
/// on any socket the driver has (with RESPONSE-PORT, they arrive on
/// another) and from any source (with CHANGE-REQUEST, they come from
/// another address), matched by transaction id.
#[derive(Clone, Debug)]
pub struct BindingProbe {
    server: SocketAddr,
    request: BindingRequest,
    tx: Transaction,
    outcome: Option<BindingOutcome>,
}

impl BindingProbe {
    /// A probe whose first request leaves at `now`; `seed` seeds its
    /// transaction id (take it from the OS).
    pub fn new(
        server: SocketAddr,
        request: BindingRequest,
        policy: RetransmitPolicy,
        now: Instant,
        seed: u64,
    ) -> BindingProbe {
        let tid = Rng(seed).tid();
        BindingProbe { server, request, tx: Transaction::new(tid, policy, now), outcome: None }
    }

    /// The server asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The result, once done.
    pub fn outcome(&self) -> Option<&BindingOutcome> {
        self.outcome.as_ref()
    }
}

impl Probe for BindingProbe {
    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        if self.outcome.is_some() || !self.tx.poll_transmit(now) {
            return None;
        }
        let len = encode_binding_request(out, self.tx.tid(), &self.request).ok()?;
        Some(Transmit { socket: 0, to: self.server, len })
    }

    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, packet: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        let Ok(msg) = Message::parse(packet) else { return };
        if msg.transaction_id() != self.tx.tid() {
            return;
        }
        if let Some(response) = parse_binding_response(&msg) {
            self.outcome = Some(BindingOutcome::Response {
                from,
                socket,
                response,
                rtt: self.tx.rtt(now),
                transmissions: self.tx.transmissions(),
            });
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.outcome.is_none().then(|| self.tx.poll_timeout())
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_none() && self.tx.is_timed_out(now) {
            self.outcome = Some(BindingOutcome::Timeout { transmissions: self.tx.transmissions() });
        }
    }

    fn is_done(&self) -> bool {
        self.outcome.is_some()
    }
}
