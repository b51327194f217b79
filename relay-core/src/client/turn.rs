//! [`TurnProbe`]: the check an operator runs after deploying a TURN
//! server. Over UDP it allocates, creates a permission for a local peer,
//! binds a channel to it, sends ChannelData that the peer echoes back
//! through the relay, and releases the allocation (Refresh with LIFETIME
//! 0). The requests go through a [`TurnSession`]: RFC 8489's timers, the
//! 401 challenge answered with the long-term credential and a 438 with the
//! fresh nonce, responses checked for a MESSAGE-INTEGRITY that verifies.
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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::data::{Received, parse_data};
use super::session::{ClientConfig, Handled, Poll, Request, Success, TurnSession, error_code};
use super::stun::{BindingOutcome, BindingProbe, BindingRequest};
use super::{ClientError, Credentials, Probe, RetransmitPolicy, Rng, Transaction, Transmit};
use crate::wire::channel_data::{self, CHANNEL_DATA_HEADER_LEN};
use crate::wire::{Attribute, AttributeType, Message};

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
    /// The server that answered the Allocate with 300 (Try Alternate), when
    /// the probe followed one; the probe then went on with the alternate,
    /// [`TurnReport::server`].
    pub redirected_from: Option<SocketAddr>,
    /// The server the probe ended up talking to (where a redirect sent it);
    /// `None` before the first request.
    pub server: Option<SocketAddr>,
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

/// An echo in flight: the ChannelData frame, resent on the request timers.
struct Echo {
    tx: Transaction,
    frame: Vec<u8>,
}

/// The TURN probe state machine (see the module documentation).
pub struct TurnProbe {
    config: TurnProbeConfig,
    rng: Rng,
    session: TurnSession,
    stage: Stage,
    /// The Binding request for the peer's address (stage `PeerAddress`).
    binding: Option<BindingProbe>,
    /// The echo in flight (stage `Echo`).
    echo: Option<Echo>,
    /// Datagrams to send: (socket, destination, bytes).
    outbox: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    /// Why the last response to the request in flight was discarded.
    discarded: Option<&'static str>,
    allocated: bool,
    report: TurnReport,
}

impl TurnProbe {
    /// A probe whose first request is due at `now`; `seed` seeds
    /// transaction ids.
    pub fn new(config: TurnProbeConfig, now: Instant, seed: u64) -> TurnProbe {
        let mut rng = Rng(seed);
        let credentials = Credentials::long_term(&config.username, &config.password);
        let session_config =
            ClientConfig { policy: config.policy, server: Some(config.server), ..ClientConfig::new(credentials) };
        // Long-term credentials do not depend on the time of day.
        let session = TurnSession::new(session_config, 0, rng.next_u64());
        let mut p = TurnProbe {
            rng,
            session,
            stage: Stage::PeerAddress,
            binding: None,
            echo: None,
            outbox: VecDeque::new(),
            discarded: None,
            allocated: false,
            report: TurnReport { server: Some(config.server), ..TurnReport::default() },
            config,
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

    /// Starts the current stage: its request, Binding or echo.
    fn start(&mut self, now: Instant) {
        self.discarded = None;
        let peer = self.config.peer;
        let request = match self.stage {
            Stage::Done => return,
            Stage::PeerAddress => {
                let seed = self.rng.next_u64();
                let b = BindingProbe::new(self.config.server, BindingRequest::default(), self.config.policy, now, seed);
                self.binding = Some(b);
                return;
            }
            Stage::Echo(i) => {
                let mut payload = b"turn-relay probe echo ".to_vec();
                payload.extend_from_slice(&i.to_be_bytes());
                payload.extend_from_slice(&self.rng.next_u64().to_be_bytes());
                let mut frame = vec![0u8; CHANNEL_DATA_HEADER_LEN + payload.len() + 3];
                let n = channel_data::encode(&mut frame, self.config.channel, &payload, false).unwrap_or(0);
                frame.truncate(n);
                self.echo = Some(Echo { tx: Transaction::new(self.rng.tid(), self.config.policy, now), frame });
                return;
            }
            Stage::Allocate => Request::Allocate { lifetime: None },
            Stage::CreatePermission => Request::CreatePermission { peers: vec![peer] },
            Stage::ChannelBind => Request::ChannelBind { channel: self.config.channel, peer },
            Stage::Release => Request::Refresh { lifetime: 0 },
        };
        match self.session.start(request, now) {
            Ok(bytes) => self.outbox.push_back((0, self.config.server, bytes.to_vec())),
            Err(e) => self.on_error(now, e, None),
        }
    }

    fn record_step(&mut self, rtt: Option<Duration>, transmissions: u32, error: Option<String>) {
        self.report.steps.push(StepRecord { name: self.step_name(), rtt, transmissions, error });
    }

    /// Moves on after the current stage succeeded.
    fn advance(&mut self, now: Instant) {
        self.stage = match self.stage {
            Stage::PeerAddress => Stage::Allocate,
            Stage::Allocate => Stage::CreatePermission,
            Stage::CreatePermission => Stage::ChannelBind,
            Stage::ChannelBind if self.config.echoes > 0 => {
                // Open the peer's NAT (if any) to the relay.
                if let Some(relayed) = self.report.relayed {
                    self.outbox.push_back((1, relayed, b"turn-relay probe: opening the peer's NAT".to_vec()));
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
        self.binding = None;
        self.echo = None;
        self.start(now);
    }

    /// Gives up: records why, then releases the allocation if there is one.
    fn fail(&mut self, now: Instant, why: String) {
        if self.report.error.is_none() {
            self.report.error = Some(why);
        }
        self.session.cancel();
        self.binding = None;
        self.echo = None;
        self.stage = if self.allocated && self.stage != Stage::Release { Stage::Release } else { Stage::Done };
        self.start(now);
    }

    /// The current request failed: `answered` holds the round-trip time
    /// and requests sent when a response said so.
    fn on_error(&mut self, now: Instant, e: ClientError, answered: Option<(Duration, u32)>) {
        let step = self.step_name();
        let (rtt, sent) = match (answered, &e) {
            (Some((rtt, sent)), _) => (Some(rtt), sent),
            (None, ClientError::Timeout { tries, .. }) => (None, *tries),
            (None, _) => (None, 0),
        };
        let (record, why) = match &e {
            ClientError::Timeout { tries, .. } => {
                let discarded = self.discarded.map(|d| format!(" (a response was discarded: {d})")).unwrap_or_default();
                ("timed out".to_owned(), format!("{step}: no answer after {tries} requests{discarded}"))
            }
            // A 401 to a signed request: retrying will not help.
            ClientError::Rejected { code, reason, .. } if *code == 401 && self.session.nonce().is_some() => {
                let text = format!("{code} {reason}");
                (text.clone(), format!("{step}: {text} (wrong user name or password?)"))
            }
            ClientError::Rejected { code, reason, .. } => {
                let text = format!("{code} {reason}");
                (text.clone(), format!("{step}: {text}"))
            }
            e => (e.to_string(), format!("{step}: {e}")),
        };
        self.record_step(rtt, sent, Some(record));
        if self.stage == Stage::Release && matches!(e, ClientError::Timeout { .. }) {
            self.allocated = false;
        }
        self.fail(now, why);
    }

    /// The current request succeeded.
    fn on_success(&mut self, now: Instant, s: Success, rtt: Duration, sent: u32) {
        self.record_step(Some(rtt), sent, None);
        match self.stage {
            Stage::Allocate => {
                self.report.realm = self.session.realm().map(str::to_owned);
                self.report.relayed = s.relayed;
                self.report.mapped = s.mapped;
                self.report.lifetime = s.lifetime;
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

    /// A STUN message from the server on socket 0, for the session.
    fn on_response(&mut self, now: Instant, packet: &[u8]) {
        let Ok(msg) = Message::parse(packet) else { return };
        let answered = self.session.transaction().map(|t| (t.rtt(now), t.transmissions()));
        let done = match self.session.handle(packet, now) {
            Handled::Ignored => return,
            Handled::Discarded(why) => {
                self.discarded = Some(why);
                return;
            }
            Handled::Transmit(retry) => {
                self.outbox.push_back((0, self.config.server, retry.to_vec()));
                None
            }
            Handled::Redirect { server, request, .. } => {
                // Socket 0 is unconnected: the request simply goes there.
                self.report.redirected_from = Some(self.config.server);
                self.report.server = Some(server);
                self.config.server = server;
                self.outbox.push_back((0, server, request.to_vec()));
                None
            }
            Handled::Done(r) => Some(r),
        };
        if let Some(r) = self.session.realm() {
            self.report.realm = Some(r.to_owned());
        }
        if let Some(Ok(Attribute::Software(s))) =
            msg.get(AttributeType::SOFTWARE).map(|a| a.decode(&msg.transaction_id()))
        {
            self.report.software = Some(s.to_owned());
        }
        let (rtt, sent) = answered.unwrap_or_default();
        match done {
            // A challenge answered: the attempt is a step of its own.
            None => self.record_step(Some(rtt), sent, error_code(&msg).map(|(code, why)| format!("{code} {why}"))),
            Some(Ok(s)) => self.on_success(now, s, rtt, sent),
            Some(Err(e)) => self.on_error(now, e, Some((rtt, sent))),
        }
    }

    /// The Binding for the peer's address ended.
    fn on_peer_address(&mut self, now: Instant, outcome: BindingOutcome) {
        match outcome {
            BindingOutcome::Response { response, rtt, transmissions, .. } => {
                let err = response.error.as_ref().map(|e| e.to_string());
                self.record_step(Some(rtt), transmissions, err.clone());
                match response.reflexive() {
                    Some(a) if err.is_none() => {
                        self.config.peer = a;
                        self.report.peer = Some(a);
                        self.advance(now);
                    }
                    _ => {
                        let why = err.unwrap_or_else(|| "no mapped address".into());
                        self.fail(now, format!("Binding (peer): {why}"));
                    }
                }
            }
            BindingOutcome::Timeout { transmissions } => {
                self.record_step(None, transmissions, Some("timed out".into()));
                self.fail(now, format!("Binding (peer): no answer after {transmissions} requests"));
            }
        }
    }

    /// ChannelData (or a Data indication) on socket 0: the echo?
    fn on_client_data(&mut self, now: Instant, packet: &[u8]) {
        let Some(e) = &self.echo else { return };
        // Data indications count too (a server that has not yet made the
        // channel effective).
        let payload = match parse_data(packet) {
            Some(Received::Channel(channel, r)) if channel == self.config.channel => &packet[r],
            Some(Received::Indication(_, r)) => &packet[r],
            _ => return,
        };
        if payload != &e.frame[CHANNEL_DATA_HEADER_LEN..] {
            return;
        }
        self.report.echo_rtts.push(e.tx.rtt(now));
        self.advance(now);
    }

    /// Runs the timers of the current stage at `now`: what is due goes to
    /// the outbox, what timed out moves the probe on.
    fn drive(&mut self, now: Instant) {
        match self.stage {
            Stage::Done => {}
            Stage::PeerAddress => {
                let Some(b) = self.binding.as_mut() else { return };
                let mut buf = [0u8; 128];
                if let Some(t) = b.poll_transmit(now, &mut buf) {
                    self.outbox.push_back((1, t.to, buf[..t.len].to_vec()));
                }
                b.handle_timeout(now);
                if let Some(o) = b.outcome().cloned() {
                    self.on_peer_address(now, o);
                }
            }
            Stage::Echo(_) => {
                let Some(e) = self.echo.as_mut() else { return };
                if e.tx.poll_transmit(now) {
                    self.outbox.push_back((0, self.config.server, e.frame.clone()));
                } else if e.tx.is_timed_out(now) {
                    self.report.echoes_lost += 1;
                    self.advance(now);
                }
            }
            _ => match self.session.poll(now) {
                Poll::Transmit(bytes) => self.outbox.push_back((0, self.config.server, bytes.to_vec())),
                Poll::Failed(e) => self.on_error(now, e, None),
                Poll::Wait(_) | Poll::Idle => {}
            },
        }
    }
}

impl Probe for TurnProbe {
    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        if self.outbox.is_empty() {
            self.drive(now);
        }
        let (socket, to, data) = self.outbox.pop_front()?;
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        Some(Transmit { socket, to, len: n })
    }

    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, packet: &[u8]) {
        if packet.is_empty() {
            return;
        }
        if socket == 1 && self.stage != Stage::PeerAddress {
            // The peer: echo what the relay sends.
            if self.report.relayed.is_some() && self.outbox.len() < 16 {
                self.report.peer_saw = Some(from);
                self.outbox.push_back((1, from, packet.to_vec()));
            }
            return;
        }
        if from != self.config.server || (socket == 1) != (self.stage == Stage::PeerAddress) {
            return;
        }
        match self.stage {
            Stage::PeerAddress => {
                let Some(b) = self.binding.as_mut() else { return };
                b.handle_input(now, 0, from, packet);
                if let Some(o) = b.outcome().cloned() {
                    self.on_peer_address(now, o);
                }
            }
            Stage::Echo(_) => self.on_client_data(now, packet),
            Stage::Done => {}
            _ => self.on_response(now, packet),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // What waits in the outbox leaves at the next poll_transmit, which a
        // driver calls after every input.
        match self.stage {
            Stage::Done => None,
            Stage::PeerAddress => self.binding.as_ref().and_then(BindingProbe::poll_timeout),
            Stage::Echo(_) => self.echo.as_ref().map(|e| e.tx.poll_timeout()),
            _ => self.session.transaction().map(Transaction::poll_timeout),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    fn is_done(&self) -> bool {
        self.stage == Stage::Done && self.outbox.is_empty()
    }
}
