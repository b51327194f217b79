//! A TURN client of the harness's own, built on relay-core's codec.
//!
//! - [`credentials`]: long-term and TURN REST API credentials;
//! - [`proto`]: [`ClientCore`], the sans-IO protocol state (challenge,
//!   stale nonce, RFC 8489 retransmissions);
//! - [`transport`]: the [`Transport`] trait and [`UdpTransport`];
//! - [`TurnClient`]: a blocking client over any transport (setup, tests,
//!   low-rate traffic). The measuring loops take the client's socket over
//!   once the allocation is set up.

pub mod credentials;
pub mod error;
pub mod proto;
pub mod transport;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use relay_core::wire::{Attribute, ChannelData, Class, Message, MessageBuilder, MessageType, Method, TransactionId};

pub use credentials::{Credentials, rest_credentials};
pub use error::ClientError;
pub use proto::{ClientConfig, ClientCore, Handled, Poll, Request, Success};
pub use transport::{TcpTransport, Transport, TransportKind, UdpTransport};

/// A TURN server to talk to: address, credentials and request timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnServer {
    /// Its UDP address.
    pub addr: SocketAddr,
    /// The credentials.
    pub credentials: Credentials,
    /// The realm (learnt from the first 401 when `None`).
    pub realm: Option<String>,
    /// Initial retransmission timeout of requests (RFC 8489: 500 ms).
    pub rto: Duration,
    /// Requests per transaction before giving up (RFC 8489: 7).
    pub max_tries: u32,
    /// The transport the data-plane scenarios reach it over.
    pub transport: TransportKind,
}

impl TurnServer {
    /// A server at `addr` with these credentials and RFC 8489 timers.
    pub fn new(addr: SocketAddr, credentials: Credentials) -> TurnServer {
        TurnServer {
            addr,
            credentials,
            realm: None,
            rto: Duration::from_millis(500),
            max_tries: 7,
            transport: TransportKind::Udp,
        }
    }

    /// The client settings for this server.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.credentials.clone());
        c.realm = self.realm.clone();
        c.rto = self.rto;
        c.max_tries = self.max_tries;
        c
    }
}

/// Application data the client received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A ChannelData message: its channel and where the payload lies in the
    /// buffer.
    Channel(u16, Range<usize>),
    /// A Data indication: the peer and where the payload lies in the buffer.
    Indication(SocketAddr, Range<usize>),
}

/// Writes a Send indication for `peer` carrying `data` into `out`; returns
/// its length. Indications carry no credentials (RFC 8656 §10.1).
pub fn encode_send_indication(
    out: &mut [u8],
    tid: TransactionId,
    peer: SocketAddr,
    data: &[u8],
) -> Result<usize, ClientError> {
    let mut b = MessageBuilder::new(out, MessageType::new(Class::Indication, Method::SEND), tid)?;
    b.add(&Attribute::XorPeerAddress(peer))?;
    b.add(&Attribute::Data(data))?;
    Ok(b.finish())
}

/// Reads application data out of a datagram from the server: ChannelData or
/// a Data indication. `None` for anything else.
pub fn parse_data(buf: &[u8]) -> Option<Received> {
    let first = *buf.first()?;
    if (0x40..=0x4F).contains(&first) {
        let cd = ChannelData::parse(buf).ok()?;
        let start = relay_core::wire::channel_data::CHANNEL_DATA_HEADER_LEN;
        return Some(Received::Channel(cd.channel, start..start + cd.payload.len()));
    }
    let m = Message::parse(buf).ok()?;
    if m.message_type() != MessageType::new(Class::Indication, Method::DATA) {
        return None;
    }
    let tid = m.transaction_id();
    let (mut peer, mut data) = (None, None);
    for a in m.attributes() {
        match a.decode(&tid) {
            Ok(Attribute::XorPeerAddress(p)) => peer = Some(p),
            Ok(Attribute::Data(d)) => data = Some(d),
            _ => {}
        }
    }
    let (peer, d) = (peer?, data?);
    let start = d.as_ptr() as usize - buf.as_ptr() as usize;
    Some(Received::Indication(peer, start..start + d.len()))
}

/// A blocking TURN client: one transaction at a time, every wait bounded by
/// the RFC 8489 timers of its [`ClientConfig`].
#[derive(Debug)]
pub struct TurnClient<T: Transport = UdpTransport> {
    core: ClientCore,
    transport: T,
    buf: Vec<u8>,
    /// Messages received while waiting for a response that were not it
    /// (application data, strays).
    pub ignored: u64,
    /// Requests retransmitted.
    pub retransmissions: u64,
}

impl TurnClient<UdpTransport> {
    /// A client on a fresh UDP socket connected to `server`.
    pub fn udp(server: SocketAddr, cfg: ClientConfig) -> Result<Self, ClientError> {
        TurnClient::new(UdpTransport::connect(server, None)?, cfg)
    }
}

impl<T: Transport> TurnClient<T> {
    /// A client over `transport`.
    pub fn new(transport: T, mut cfg: ClientConfig) -> Result<Self, ClientError> {
        cfg.reliable = transport.reliable();
        Ok(TurnClient {
            core: ClientCore::new(cfg)?,
            transport,
            buf: vec![0u8; 65_536],
            ignored: 0,
            retransmissions: 0,
        })
    }

    /// A client from a transport and the state of an earlier client on it
    /// (its realm and nonce are kept).
    pub fn from_parts(transport: T, core: ClientCore) -> Self {
        TurnClient { core, transport, buf: vec![0u8; 65_536], ignored: 0, retransmissions: 0 }
    }

    /// The protocol state.
    pub fn core(&self) -> &ClientCore {
        &self.core
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Gives up the client, keeping its transport and state.
    pub fn into_parts(self) -> (T, ClientCore) {
        (self.transport, self.core)
    }

    /// Runs one transaction to its end.
    pub fn request(&mut self, request: Request) -> Result<Success, ClientError> {
        let now = Instant::now();
        self.core.cancel();
        let bytes = self.core.start(request, now)?;
        self.transport.send(bytes)?;
        loop {
            let now = Instant::now();
            let wait = match self.core.poll(now) {
                Poll::Idle => return Err(ClientError::Malformed("transaction vanished".into())),
                Poll::Failed(e) => return Err(e),
                Poll::Transmit(bytes) => {
                    self.retransmissions += 1;
                    self.transport.send(bytes)?;
                    continue;
                }
                Poll::Wait(t) => t.saturating_duration_since(now),
            };
            let Some(n) = self.transport.recv(&mut self.buf, wait)? else { continue };
            match self.core.handle(&self.buf[..n], Instant::now()) {
                Handled::Ignored => self.ignored += 1,
                Handled::Transmit(bytes) => self.transport.send(bytes)?,
                Handled::Done(r) => return r,
            }
        }
    }

    /// Allocates a UDP relay; returns the relayed address.
    pub fn allocate(&mut self, lifetime: Option<u32>) -> Result<SocketAddr, ClientError> {
        let s = self.request(Request::Allocate { lifetime })?;
        s.relayed.ok_or_else(|| ClientError::Malformed("Allocate success without XOR-RELAYED-ADDRESS".into()))
    }

    /// Installs permissions for `peers`.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), ClientError> {
        self.request(Request::CreatePermission { peers: peers.to_vec() }).map(drop)
    }

    /// Binds `channel` to `peer`.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), ClientError> {
        self.request(Request::ChannelBind { channel, peer }).map(drop)
    }

    /// Refreshes the allocation (`0` releases it); returns the granted lifetime.
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32, ClientError> {
        self.request(Request::Refresh { lifetime }).map(|s| s.lifetime.unwrap_or(lifetime))
    }

    /// Sends `data` on a bound channel.
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> Result<(), ClientError> {
        let n = relay_core::wire::channel_data::encode(&mut self.buf, channel, data, self.transport.reliable())
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        self.transport.send(&self.buf[..n])?;
        Ok(())
    }

    /// Sends `data` to `peer` in a Send indication.
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), ClientError> {
        let n = encode_send_indication(&mut self.buf, TransactionId([0x5b; 12]), peer, data)?;
        self.transport.send(&self.buf[..n])?;
        Ok(())
    }

    /// Waits up to `timeout` for application data (ChannelData or a Data
    /// indication) and copies it into `out`; returns where it came from
    /// (channel number, or peer) and its length. Other messages are skipped.
    pub fn recv_data(&mut self, out: &mut [u8], timeout: Duration) -> Result<Option<(DataSource, usize)>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let Some(n) = self.transport.recv(&mut self.buf, deadline - now)? else { continue };
            let (source, range) = match parse_data(&self.buf[..n]) {
                Some(Received::Channel(c, r)) => (DataSource::Channel(c), r),
                Some(Received::Indication(p, r)) => (DataSource::Peer(p), r),
                None => {
                    self.ignored += 1;
                    continue;
                }
            };
            let len = range.len().min(out.len());
            out[..len].copy_from_slice(&self.buf[range.start..range.start + len]);
            return Ok(Some((source, len)));
        }
    }
}

/// Where application data came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A ChannelData message on this channel.
    Channel(u16),
    /// A Data indication from this peer.
    Peer(SocketAddr),
}
