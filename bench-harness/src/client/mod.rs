//! The harness's TURN client: the I/O around relay-core's sans-IO
//! [`TurnSession`] (the protocol: RFC 8489 timers, 401/438, MD5 and
//! SHA-256 keys, REST credentials, response integrity).
//!
//! - [`transport`]: the [`Transport`] trait, [`UdpTransport`],
//!   [`TcpTransport`] and [`TlsTransport`] (with [`TlsOptions`]);
//! - [`session`]: a [`TurnSession`] with the wall clock's REST time and
//!   transaction ids from this thread's generator;
//! - [`TurnClient`]: a blocking client over any transport (setup, tests,
//!   low-rate traffic). The measuring loops take the client's socket over
//!   once the allocation is set up; the scenarios on epoll drive sessions
//!   themselves.

pub(crate) mod conn;
pub mod transport;

use std::cell::Cell;
use std::hash::{BuildHasher as _, RandomState};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay_core::rng::SplitMix64;
use relay_core::wire::TransactionId;

pub use relay_core::client::credentials::{Credentials, rest_credentials};
pub use relay_core::client::data::{Received, encode_send_indication, parse_data};
pub use relay_core::client::{
    ClientConfig, ClientError, Handled, Poll, Request, RetransmitPolicy, Success, TurnSession,
};
pub use relay_core::wire::integrity::{IntegrityAlgorithm, PasswordAlgorithm};
pub use transport::{TcpTransport, TlsConnector, TlsOptions, TlsTransport, Transport, TransportKind, UdpTransport};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

thread_local! {
    /// This thread's generator of session seeds, seeded once from the
    /// OS's randomness (through the standard library's hasher keys).
    static SEEDS: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()));
}

/// A session for `cfg`: REST credentials resolved now, transaction ids
/// seeded from this thread's generator (no lock, no clock per id).
pub fn session(cfg: ClientConfig) -> TurnSession {
    let seed = SEEDS.with(|s| {
        let mut g = SplitMix64(s.get());
        let seed = g.next_u64();
        s.set(g.0);
        seed
    });
    TurnSession::new(cfg, unix_now(), seed)
}

/// A TURN server to talk to: address, transport, credentials and request
/// timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnServer {
    /// Its address (UDP, TCP or TLS listener, as `transport` says).
    pub addr: SocketAddr,
    /// The transport to reach it over (UDP unless asked otherwise). Each
    /// scenario reads it; those that support only UDP refuse the others.
    pub transport: TransportKind,
    /// How to trust and name the server over TLS (with
    /// [`TransportKind::Tls`]).
    pub tls: Option<TlsOptions>,
    /// The long-term credential password algorithm (RFC 8489 §9.2):
    /// MD5, or SHA-256 when the server offers it.
    pub password_algorithm: PasswordAlgorithm,
    /// The credentials.
    pub credentials: Credentials,
    /// The realm (learnt from the first 401 when `None`).
    pub realm: Option<String>,
    /// Initial retransmission timeout of requests (RFC 8489: 500 ms).
    pub rto: Duration,
    /// Requests per transaction before giving up (RFC 8489: 7).
    pub max_tries: u32,
}

impl TurnServer {
    /// A server at `addr` with these credentials and RFC 8489 timers.
    pub fn new(addr: SocketAddr, credentials: Credentials) -> TurnServer {
        TurnServer {
            addr,
            transport: TransportKind::Udp,
            tls: None,
            password_algorithm: PasswordAlgorithm::Md5,
            credentials,
            realm: None,
            rto: Duration::from_millis(500),
            max_tries: 7,
        }
    }

    /// The TLS connector for this server (its [`TlsOptions`], or none:
    /// an error asking for a CA or `insecure`).
    pub fn tls_connector(&self) -> std::io::Result<TlsConnector> {
        self.tls.clone().unwrap_or_default().connector(self.addr)
    }

    /// The client settings for this server (SOFTWARE `turn-bench VERSION`).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.credentials.clone());
        c.realm = self.realm.clone();
        c.software = Some(concat!("turn-bench ", env!("CARGO_PKG_VERSION")).to_owned());
        c.policy = RetransmitPolicy { rto: self.rto, rc: self.max_tries, ..RetransmitPolicy::default() };
        c.password_algorithm = self.password_algorithm;
        c.reliable = self.transport != TransportKind::Udp;
        c.server = Some(self.addr);
        c
    }
}

/// A blocking TURN client: one transaction at a time, every wait bounded by
/// the RFC 8489 timers of its [`ClientConfig`].
#[derive(Debug)]
pub struct TurnClient<T: Transport = UdpTransport> {
    core: TurnSession,
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
    /// A client over `transport` (whose reliability decides the timers).
    pub fn new(transport: T, mut cfg: ClientConfig) -> Result<Self, ClientError> {
        cfg.reliable = transport.reliable();
        Ok(TurnClient::from_parts(transport, session(cfg)))
    }

    /// A client from a transport and the state of an earlier client on it
    /// (its realm and nonce are kept).
    pub fn from_parts(transport: T, core: TurnSession) -> Self {
        TurnClient { core, transport, buf: vec![0u8; 65_536], ignored: 0, retransmissions: 0 }
    }

    /// The protocol state.
    pub fn core(&self) -> &TurnSession {
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
    pub fn into_parts(self) -> (T, TurnSession) {
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
                Handled::Ignored | Handled::Discarded(_) => self.ignored += 1,
                Handled::Transmit(bytes) => self.transport.send(bytes)?,
                Handled::Redirect { server, domain, request } => {
                    // RFC 8489 §10: the same request, transport and
                    // credentials, to the alternate.
                    self.transport.redirect(server, domain.as_deref())?;
                    self.transport.send(request)?;
                }
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
