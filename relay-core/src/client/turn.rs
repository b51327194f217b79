//! [`TurnProbe`]: the check an operator runs after deploying a TURN
//! server. Over UDP it allocates (answering the 401 challenge with the
//! long-term credential, and a 438 with the fresh nonce), creates a
//! permission for a local peer, binds a channel to it, sends ChannelData
//! that the peer echoes back through the relay, and releases the
//! allocation (Refresh with LIFETIME 0). Every request follows RFC 8489's
//! retransmission timers; every success response must carry a
//! MESSAGE-INTEGRITY that verifies.
//!
//! Socket 0 talks to the server; socket 1 is the peer, whose address the
//! relay must be allowed to reach. The machine plays the peer too: what
//! socket 1 receives from the relayed address it sends straight back.
//!
//! Behind a NAT the peer's local address means nothing to the relay (and
//! a private one is refused by its policy), so with
//! [`TurnProbeConfig::discover_peer`] the probe first asks the server for
//! socket 1's reflexive address with a Binding request and uses that as the
//! peer; and before the echoes, the peer sends one datagram to the relayed
//! address, which opens its NAT's filter to the relay (it reaches the client
//! as ChannelData and is ignored there).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stun::{BindingRequest, encode_binding_request, parse_binding_response};
use super::{Probe, RetransmitPolicy, Rng, Transaction, Transmit};
use crate::wire::attr::transport;
use crate::wire::channel_data::{self, ChannelData};
use crate::wire::integrity::{Key, PasswordAlgorithm};
use crate::wire::{
    Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, PacketKind, classify,
};

/// Settings of a TURN probe.
#[derive(Clone, Debug)]
pub struct TurnProbeConfig {
    /// The TURN server.
    pub server: SocketAddr,
    /// Long-term credential user name.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Socket 1's address as the relay will send to it (with
    /// `discover_peer`, only its port is a starting point).
    pub peer: SocketAddr,
    /// Learn the peer's address from the server (a Binding request from
    /// socket 1) instead of taking `peer` as it is.
    pub discover_peer: bool,
    /// The channel number to bind (0x4000–0x4FFF).
    pub channel: u16,
    /// ChannelData round trips to time.
    pub echoes: u32,
    /// Retransmission timers for requests and echoes.
    pub policy: RetransmitPolicy,
}

/// One request of the probe as it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    /// "Allocate", "CreatePermission", "ChannelBind", "Refresh".
    pub name: &'static str,
    /// The round-trip time of the answer, when one came.
    pub rtt: Option<Duration>,
    /// Requests sent (for this attempt).
    pub transmissions: u32,
    /// The error, if the step failed: an error response, or a timeout.
    pub error: Option<String>,
}

/// The probe's findings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnReport {
    /// The realm the server challenged with.
    pub realm: Option<String>,
    /// The server's SOFTWARE.
    pub software: Option<String>,
    /// XOR-MAPPED-ADDRESS of the Allocate response.
    pub mapped: Option<SocketAddr>,
    /// XOR-RELAYED-ADDRESS.
    pub relayed: Option<SocketAddr>,
    /// LIFETIME granted, seconds.
    pub lifetime: Option<u32>,
    /// The peer address given to the server (socket 1's reflexive address
    /// with `discover_peer`).
    pub peer: Option<SocketAddr>,
    /// Where the peer saw the relayed packets come from (should be
    /// `relayed`).
    pub peer_saw: Option<SocketAddr>,
    /// Every request, in order (retries after 401/438 included).
    pub steps: Vec<StepRecord>,
    /// Round-trip times of the ChannelData echoes that came back.
    pub echo_rtts: Vec<Duration>,
    /// Echoes that never came back.
    pub echoes_lost: u32,
    /// The allocation was released.
    pub released: bool,
    /// Why the probe failed, if it did.
    pub error: Option<String>,
}

impl TurnReport {
    /// True when every step worked and every echo came back.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.echoes_lost == 0 && !self.echo_rtts.is_empty() && self.released
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    PeerAddress,
    Allocate,
    CreatePermission,
    ChannelBind,
    Echo(u32),
    Release,
    Done,
}

struct Active {
    tx: Transaction,
    bytes: Vec<u8>,
}

/// The TURN probe state machine (see the module documentation).
pub struct TurnProbe {
    config: TurnProbeConfig,
    rng: Rng,
    stage: Stage,
    active: Option<Active>,
    /// Authenticated attempts left at the current step (401/438 retries).
    retries: u32,
    key: Option<Key>,
    nonce: Option<String>,
    echo_payload: Vec<u8>,
    /// Datagrams socket 1 is to send: the punch, and echoes.
    peer_out: std::collections::VecDeque<(SocketAddr, Vec<u8>)>,
    allocated: bool,
    report: TurnReport,
}

/// Attempts per step after a 401 or 438 before giving up.
const AUTH_RETRIES: u32 = 3;

impl TurnProbe {
    /// A probe whose first request is due at `now`; `seed` seeds
    /// transaction ids.
    pub fn new(config: TurnProbeConfig, now: Instant, seed: u64) -> TurnProbe {
        let mut p = TurnProbe {
            config,
            rng: Rng(seed),
            stage: Stage::PeerAddress,
            active: None,
            retries: AUTH_RETRIES,
            key: None,
            nonce: None,
            echo_payload: Vec::new(),
            peer_out: Default::default(),
            allocated: false,
            report: TurnReport::default(),
        };
        if !p.config.discover_peer {
            p.stage = Stage::Allocate;
            p.report.peer = Some(p.config.peer);
        }
        p.start(now);
        p
    }

    /// The findings so far (final once [`Probe::is_done`]).
    pub fn report(&self) -> &TurnReport {
        &self.report
    }

    fn step_name(&self) -> &'static str {
        match self.stage {
            Stage::PeerAddress => "Binding (peer)",
            Stage::Allocate => "Allocate",
            Stage::CreatePermission => "CreatePermission",
            Stage::ChannelBind => "ChannelBind",
            Stage::Echo(_) => "ChannelData echo",
            Stage::Release => "Refresh",
            Stage::Done => "",
        }
    }

    /// Encodes the current stage's request (or echo) and starts its timer.
    fn start(&mut self, now: Instant) {
        let tid = self.rng.tid();
        let bytes = match self.stage {
            Stage::Echo(i) => {
                let mut payload = b"turn-relay probe echo ".to_vec();
                payload.extend_from_slice(&i.to_be_bytes());
                payload.extend_from_slice(&self.rng.next_u64().to_be_bytes());
                let mut out = vec![0u8; 4 + payload.len() + 3];
                let n = channel_data::encode(&mut out, self.config.channel, &payload, false).unwrap_or(0);
                out.truncate(n);
                self.echo_payload = payload;
                out
            }
            Stage::Done => return,
            Stage::PeerAddress => {
                let mut out = vec![0u8; 64];
                let n = encode_binding_request(&mut out, tid, &BindingRequest::default()).unwrap_or(0);
                out.truncate(n);
                out
            }
            stage => {
                let peer = self.config.peer;
                let mut attrs: Vec<Attribute<'_>> = Vec::new();
                let method = match stage {
                    Stage::Allocate => {
                        attrs.push(Attribute::RequestedTransport(transport::UDP));
                        Method::ALLOCATE
                    }
                    Stage::CreatePermission => {
                        attrs.push(Attribute::XorPeerAddress(peer));
                        Method::CREATE_PERMISSION
                    }
                    Stage::ChannelBind => {
                        attrs.push(Attribute::ChannelNumber(self.config.channel));
                        attrs.push(Attribute::XorPeerAddress(peer));
                        Method::CHANNEL_BIND
                    }
                    _ => {
                        attrs.push(Attribute::Lifetime(0));
                        Method::REFRESH
                    }
                };
                self.encode_request(method, tid, &attrs)
            }
        };
        self.active = Some(Active { tx: Transaction::new(tid, self.config.policy, now), bytes });
    }

    fn encode_request(&self, method: Method, tid: crate::wire::TransactionId, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let n = (|| {
            let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, method), tid)?;
            for a in attrs {
                b.add(a)?;
            }
            if let (Some(key), Some(nonce), Some(realm)) = (&self.key, &self.nonce, &self.report.realm) {
                b.add(&Attribute::Username(&self.config.username))?;
                b.add(&Attribute::Realm(realm))?;
                b.add(&Attribute::Nonce(nonce))?;
                b.add_message_integrity(key.as_bytes())?;
            }
            b.add_fingerprint()?;
            Ok::<usize, crate::wire::EncodeError>(b.finish())
        })()
        .unwrap_or(0);
        buf.truncate(n);
        buf
    }

    fn record_step(&mut self, now: Instant, error: Option<String>, answered: bool) {
        let Some(a) = &self.active else { return };
        let rtt = answered.then(|| a.tx.rtt(now));
        self.report.steps.push(StepRecord { name: self.step_name(), rtt, transmissions: a.tx.transmissions(), error });
    }

    /// Moves on after the current stage succeeded.
    fn advance(&mut self, now: Instant) {
        self.retries = AUTH_RETRIES;
        self.stage = match self.stage {
            Stage::PeerAddress => Stage::Allocate,
            Stage::Allocate => Stage::CreatePermission,
            Stage::CreatePermission => Stage::ChannelBind,
            Stage::ChannelBind if self.config.echoes > 0 => {
                // Open the peer's NAT (if any) to the relay.
                if let Some(relayed) = self.report.relayed {
                    self.peer_out.push_back((relayed, b"turn-relay probe: opening the peer's NAT".to_vec()));
                }
                Stage::Echo(0)
            }
            Stage::ChannelBind => Stage::Release,
            Stage::Echo(i) if i + 1 < self.config.echoes => Stage::Echo(i + 1),
            Stage::Echo(_) => Stage::Release,
            Stage::Release | Stage::Done => Stage::Done,
        };
        if self.stage == Stage::Release && !self.allocated {
            self.stage = Stage::Done;
        }
        self.active = None;
        self.start(now);
    }

    /// Gives up: records why, then releases the allocation if there is one.
    fn fail(&mut self, now: Instant, why: String) {
        if self.report.error.is_none() {
            self.report.error = Some(why);
        }
        self.active = None;
        self.retries = AUTH_RETRIES;
        self.stage = if self.allocated && self.stage != Stage::Release { Stage::Release } else { Stage::Done };
        self.start(now);
    }

    fn on_response(&mut self, now: Instant, msg: &Message<'_>) {
        if self.stage == Stage::PeerAddress {
            let r = parse_binding_response(msg);
            let err = r.as_ref().and_then(|r| r.error.as_ref().map(|e| e.to_string()));
            self.record_step(now, err.clone(), true);
            match r.as_ref().and_then(|r| r.reflexive()) {
                Some(a) if err.is_none() => {
                    self.config.peer = a;
                    self.report.peer = Some(a);
                    return self.advance(now);
                }
                _ => {
                    let why = err.unwrap_or_else(|| "no mapped address".into());
                    return self.fail(now, format!("Binding (peer): {why}"));
                }
            }
        }
        let tid = msg.transaction_id();
        let mut error = None;
        let (mut realm, mut nonce) = (None, None);
        for attr in msg.attributes() {
            match attr.decode(&tid) {
                Ok(Attribute::ErrorCode(e)) => error = Some((e.code, e.reason.to_owned())),
                Ok(Attribute::Realm(r)) => realm = Some(r.to_owned()),
                Ok(Attribute::Nonce(n)) => nonce = Some(n.to_owned()),
                Ok(Attribute::Software(s)) => self.report.software = Some(s.to_owned()),
                _ => {}
            }
        }
        if msg.class() == Class::Error {
            let (code, reason) = error.unwrap_or((0, "error response without ERROR-CODE".into()));
            let text = format!("{code} {reason}");
            self.record_step(now, Some(text.clone()), true);
            // 401 with a realm and nonce: (re)try with credentials; 438:
            // the nonce went stale, retry with the fresh one.
            // A 401 to a request signed with the nonce it hands out again:
            // the credentials are wrong, retrying will not help.
            if code == 401 && self.key.is_some() && nonce.is_some() && nonce == self.nonce {
                return self.fail(now, format!("{}: {text} (wrong user name or password?)", self.step_name()));
            }
            let challenge = (code == 401 && realm.is_some() && nonce.is_some()) || (code == 438 && nonce.is_some());
            if challenge && self.retries > 0 {
                self.retries -= 1;
                if let Some(r) = realm {
                    if self.report.realm.as_deref() != Some(&r) || self.key.is_none() {
                        match Key::long_term(PasswordAlgorithm::Md5, &self.config.username, &r, &self.config.password) {
                            Ok(k) => self.key = Some(k),
                            Err(e) => return self.fail(now, format!("cannot derive the key: {e}")),
                        }
                    }
                    self.report.realm = Some(r);
                }
                self.nonce = nonce;
                if self.report.realm.is_none() {
                    return self.fail(now, format!("{}: {text} without a realm", self.step_name()));
                }
                self.active = None;
                return self.start(now);
            }
            return self.fail(now, format!("{}: {text}", self.step_name()));
        }
        if let Some(key) = &self.key {
            if !msg.has_integrity() {
                self.record_step(now, Some("no MESSAGE-INTEGRITY".into()), true);
                return self.fail(now, format!("{}: response without MESSAGE-INTEGRITY", self.step_name()));
            }
            if msg.verify_integrity(key.as_bytes()).is_err() {
                self.record_step(now, Some("MESSAGE-INTEGRITY does not verify".into()), true);
                return self.fail(now, format!("{}: response MESSAGE-INTEGRITY does not verify", self.step_name()));
            }
        }
        self.record_step(now, None, true);
        match self.stage {
            Stage::Allocate => {
                for attr in msg.attributes() {
                    match attr.decode(&tid) {
                        Ok(Attribute::XorRelayedAddress(a)) if self.report.relayed.is_none() => {
                            self.report.relayed = Some(a)
                        }
                        Ok(Attribute::XorMappedAddress(a)) => self.report.mapped = Some(a),
                        Ok(Attribute::Lifetime(l)) => self.report.lifetime = Some(l),
                        _ => {}
                    }
                }
                self.allocated = true;
                if self.report.relayed.is_none() {
                    return self.fail(now, "Allocate: success without XOR-RELAYED-ADDRESS".into());
                }
            }
            Stage::Release => self.report.released = true,
            _ => {}
        }
        self.advance(now);
    }

    fn on_client_data(&mut self, now: Instant, packet: &[u8]) {
        let Stage::Echo(_) = self.stage else { return };
        let payload = match classify(packet[0]) {
            PacketKind::ChannelData => match ChannelData::parse(packet) {
                Ok(cd) if cd.channel == self.config.channel => cd.payload,
                _ => return,
            },
            // Data indications count too (a server that has not yet made
            // the channel effective).
            PacketKind::Stun => {
                let Ok(m) = Message::parse(packet) else { return };
                if m.class() != Class::Indication || m.method() != Method::DATA {
                    return;
                }
                match m.get(AttributeType::DATA) {
                    Some(d) => d.value,
                    None => return,
                }
            }
            _ => return,
        };
        if payload != self.echo_payload.as_slice() {
            return;
        }
        if let Some(a) = &self.active {
            self.report.echo_rtts.push(a.tx.rtt(now));
        }
        self.advance(now);
    }
}

impl Probe for TurnProbe {
    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        if let Some((to, data)) = self.peer_out.pop_front() {
            let n = data.len().min(out.len());
            out[..n].copy_from_slice(&data[..n]);
            return Some(Transmit { socket: 1, to, len: n });
        }
        if self.stage == Stage::Done {
            return None;
        }
        let a = self.active.as_mut()?;
        if !a.tx.poll_transmit(now) {
            return None;
        }
        let n = a.bytes.len().min(out.len());
        out[..n].copy_from_slice(&a.bytes[..n]);
        let socket = if self.stage == Stage::PeerAddress { 1 } else { 0 };
        Some(Transmit { socket, to: self.config.server, len: n })
    }

    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, packet: &[u8]) {
        if packet.is_empty() {
            return;
        }
        if socket == 1 && self.stage != Stage::PeerAddress {
            // The peer: echo what the relay sends.
            if self.report.relayed.is_some() && self.peer_out.len() < 16 {
                self.report.peer_saw = Some(from);
                self.peer_out.push_back((from, packet.to_vec()));
            }
            return;
        }
        if from != self.config.server || (socket == 1) != (self.stage == Stage::PeerAddress) {
            return;
        }
        if classify(packet[0]) == PacketKind::Stun
            && let Ok(msg) = Message::parse(packet)
            && msg.class().is_response()
        {
            if self.active.as_ref().is_some_and(|a| a.tx.tid() == msg.transaction_id()) {
                self.on_response(now, &msg);
            }
            return;
        }
        self.on_client_data(now, packet);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // A pending echo leaves at the next poll_transmit, which a driver
        // calls after every input.
        match self.stage {
            Stage::Done => None,
            _ => self.active.as_ref().map(|a| a.tx.poll_timeout()),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(a) = &self.active else { return };
        if !a.tx.is_timed_out(now) {
            return;
        }
        let sent = a.tx.transmissions();
        match self.stage {
            Stage::Echo(_) => {
                self.report.echoes_lost += 1;
                self.advance(now);
            }
            Stage::Done => {}
            _ => {
                self.record_step(now, Some("timed out".into()), false);
                let why = format!("{}: no answer after {sent} requests", self.step_name());
                if self.stage == Stage::Release {
                    self.allocated = false;
                }
                self.fail(now, why);
            }
        }
    }

    fn is_done(&self) -> bool {
        self.stage == Stage::Done && self.peer_out.is_empty()
    }
}
