//! `relay-io`: the thread-per-core data plane of the TURN relay.
//!
//! Each shard is one thread, pinned to a core, owning a
//! [`relay_core::server::Server`], its own SO_REUSEPORT listeners and a
//! disjoint slice of the relay ports, and one event loop: io_uring where the
//! kernel allows it, epoll with recvmmsg/sendmmsg batching where it does
//! not. Only control messages (stats, drain, stop) cross threads, through a
//! channel and an eventfd; the packet path takes no lock and allocates
//! nothing.
//!
//! Steering: the kernel picks a SO_REUSEPORT socket by hashing the flow's
//! 4-tuple, so a client's 5-tuple reaches the same shard for as long as the
//! set of listeners is unchanged, which it is for the life of the process.
//! Peer traffic arrives on relay sockets, which belong to exactly one shard.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded, unbounded};
use relay_core::server::own::OwnAddresses;
use relay_core::server::{RelayId, Server};

pub mod egress;
pub mod event_loop;
pub mod fastpath;
pub mod gso;
pub mod portable;
pub mod shard;
pub mod socket;
pub mod stream;
pub mod sys;
pub mod tls;
pub mod uring;

pub use shard::{BackendKind, Batching, Control, PeerLists, ShardReport};
pub use socket::{RelayIp, RelayPorts};

use shard::{ShardState, Sock, SockKind, UdpSockets};
use sys::EventFd;

/// Descriptors kept free of relay sockets for everything else a process
/// holds (listeners, rings, eventfds, log files, metrics connections).
const FD_RESERVE: u64 = 256;

/// Which backend to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when the kernel offers what it needs, else portable.
    #[default]
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll + recvmmsg/sendmmsg.
    Portable,
}

/// Data plane settings.
#[derive(Clone, Debug)]
pub struct IoConfig {
    /// Number of shards (threads).
    pub shards: usize,
    /// Pin shard `k` to core `k` (modulo the cores there are).
    pub pin_cores: bool,
    /// Backend choice.
    pub backend: Backend,
    /// UDP addresses clients reach (port 0: picked by the kernel once and
    /// shared by every shard).
    pub udp_listen: Vec<SocketAddr>,
    /// TCP addresses clients reach (TURN over TCP).
    pub tcp_listen: Vec<SocketAddr>,
    /// TLS addresses clients reach (TURN over TLS); needs `tls`.
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate and key for the TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Limits of TCP connections.
    pub stream_limits: stream::StreamLimits,
    /// Trusted load balancers: TCP and TLS connections from these networks
    /// must begin with a PROXY header (v1 or v2), whose client address is
    /// used for them; empty (the default): no connection may carry one.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Relay IPs.
    pub relay_ips: Vec<RelayIp>,
    /// Relay ports.
    pub relay_ports: RelayPorts,
    /// Datagrams per receive batch: per `recvmmsg` on the portable
    /// backend; on io_uring, completions reaped and handled at a time.
    pub batch: usize,
    /// Largest datagram relayed; larger ones are dropped.
    pub max_datagram: usize,
    /// SO_RCVBUF/SO_SNDBUF of listeners.
    pub listener_buffer: usize,
    /// SO_RCVBUF/SO_SNDBUF of relay sockets.
    pub relay_buffer: usize,
    /// Join listeners another process holds on the same addresses (its
    /// SO_REUSEPORT group), on purpose: a zero-downtime restart starts the
    /// new process with it, then drains the old one. Without it, an
    /// address another process listens on is a start-up error.
    pub handover: bool,
    /// Send a loop turn's datagrams of one flow and size together, as one
    /// GSO send (`UDP_SEGMENT`); off: one datagram per message.
    pub gso: bool,
    /// Let the kernel coalesce received datagrams of a flow (`UDP_GRO`);
    /// each is still handled as the datagram it was.
    pub gro: bool,
    /// The kernel fast path (XDP) for UDP ChannelData.
    pub fast_path: fastpath::FastPathMode,
    /// Interfaces for the fast path; empty: those holding the UDP
    /// listeners' and relay addresses.
    pub fast_path_interfaces: Vec<String>,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            shards: 1,
            pin_cores: false,
            backend: Backend::Auto,
            udp_listen: vec![SocketAddr::from(([127, 0, 0, 1], 3478))],
            tcp_listen: Vec::new(),
            tls_listen: Vec::new(),
            tls: None,
            stream_limits: stream::StreamLimits::default(),
            proxy_protocol_from: Vec::new(),
            relay_ips: vec![RelayIp::same(IpAddr::from([127, 0, 0, 1]))],
            relay_ports: RelayPorts::Range(49152, 65535),
            batch: 32,
            max_datagram: 2048,
            listener_buffer: 8 << 20,
            relay_buffer: 256 << 10,
            handover: false,
            gso: true,
            gro: true,
            fast_path: fastpath::FastPathMode::Off,
            fast_path_interfaces: Vec::new(),
        }
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be created or bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// No relay socket could be bound on a relay IP for a shard: every
    /// Allocate of that family would fail.
    #[error("shard {shard}: no relay port could be bound on {ip}: {why}")]
    NoRelayPorts {
        /// The shard.
        shard: usize,
        /// The relay IP.
        ip: IpAddr,
        /// Why.
        why: String,
    },
    /// Another process already listens on a configured address.
    #[error(
        "another process already listens on {transport} {addr} (a second turn-relay?): stop it, or start with \
         --handover (listen.handover) to take over on purpose"
    )]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
        /// "UDP" or "TCP".
        transport: &'static str,
    },
    /// io_uring was required but is unavailable.
    #[error("io_uring unavailable: {0}")]
    IoUringUnavailable(String),
    /// TLS listeners were asked for without a certificate.
    #[error("TLS listeners need a certificate and key")]
    NoCertificate,
    /// A forced kernel fast path could not start.
    #[error("kernel fast path: {0}")]
    FastPath(#[from] fastpath::FastPathError),
    /// Spawning a shard thread failed.
    #[error("cannot start shard thread: {0}")]
    Spawn(io::Error),
}

/// A shard's sockets, bound before any shard starts: UDP listeners, the
/// stream listeners, and relay sockets (relay IP index, port, socket).
type BoundShard = (Vec<Sock>, stream::Streams, Vec<(usize, u16, std::net::UdpSocket)>);

/// What batched UDP the shards use: GSO where asked for and the kernel
/// knows `UDP_SEGMENT` (whether a device can do it is learnt per socket
/// from its first GSO send), GRO where asked for, turned on for every UDP
/// socket (one the kernel refuses simply receives datagram by datagram).
fn udp_batching(config: &IoConfig, bound: &[BoundShard], gro_allowed: bool) -> Batching {
    use std::os::fd::AsRawFd;
    let first = bound.iter().flat_map(|b| b.0.iter().map(|s| s.socket.as_raw_fd())).next();
    let gso = config.gso && first.is_some_and(gso::gso_supported);
    if config.gso && !gso {
        tracing::warn!("UDP GSO unavailable (the kernel lacks UDP_SEGMENT): datagrams are sent one by one");
    }
    let mut gro = config.gro && gro_allowed;
    if gro {
        let fds = bound
            .iter()
            .flat_map(|b| b.0.iter().map(|s| s.socket.as_raw_fd()).chain(b.2.iter().map(|(_, _, s)| s.as_raw_fd())));
        let mut refused = 0usize;
        for fd in fds {
            if gso::enable_gro(fd).is_err() {
                refused += 1;
            }
        }
        if refused > 0 {
            tracing::warn!(
                sockets = refused,
                "UDP GRO refused by the kernel on some sockets: they receive datagram by datagram"
            );
            gro = refused < bound.iter().map(|b| b.0.len() + b.2.len()).sum::<usize>();
        }
    }
    Batching { gso, gro }
}

struct ShardHandle {
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// A cheap, cloneable handle on the running shards for other threads (the
/// metrics and admin listener, a user database's refresher): it reaches the
/// shards through their control queues only, never their state.
#[derive(Clone)]
pub struct RelayHandle {
    shards: Arc<[(Sender<Control>, Arc<EventFd>)]>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl core::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RelayHandle").field("shards", &self.shards.len()).finish()
    }
}

impl RelayHandle {
    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends `make()` to every shard and wakes it.
    pub fn send(&self, make: impl Fn() -> Control) {
        for (control, wake) in self.shards.iter() {
            let _ = control.send(make());
            wake.notify();
        }
    }

    /// Sends one request per shard built by `make` with a reply sender and
    /// collects the answers that arrive within `timeout` (a shard that does
    /// not answer in time is left out).
    pub fn ask<T>(&self, timeout: Duration, make: impl Fn(Sender<T>) -> Control) -> Vec<T> {
        let (tx, rx) = bounded(self.shards.len());
        self.send(|| make(tx.clone()));
        drop(tx);
        let deadline = Instant::now() + timeout;
        (0..self.shards.len()).map_while(|_| rx.recv_deadline(deadline).ok()).collect()
    }

    /// Asks every shard for its counters; shards that do not answer within
    /// `timeout` are left out.
    pub fn stats(&self, timeout: Duration) -> Vec<ShardReport> {
        let mut v = self.ask(timeout, Control::Stats);
        v.sort_by_key(|r| r.shard);
        v
    }

    /// Gives every shard new credentials (a reload without dropping
    /// allocations).
    pub fn set_credentials(&self, credentials: &relay_core::server::auth::Credentials) {
        self.send(|| Control::SetCredentials(Box::new(credentials.clone())));
    }

    /// Gives every shard a new TLS certificate for new connections.
    pub fn set_tls_config(&self, config: &Arc<rustls::ServerConfig>) {
        self.send(|| Control::SetTls(config.clone()));
    }

    /// Gives every shard a new nonce issuer: nonces issued before are
    /// answered 438 Stale Nonce, and clients retry with a fresh one.
    pub fn set_nonces(&self, nonces: &relay_core::server::auth::NonceIssuer) {
        self.send(|| Control::SetNonces(Box::new(nonces.clone())));
    }

    /// Gives every shard new operator peer lists (one shared copy); new
    /// permissions and channels are checked against them.
    pub fn set_peer_lists(&self, lists: &Arc<PeerLists>) {
        self.send(|| Control::SetPeerLists(lists.clone()));
    }

    /// The allocations of every shard (of `user` only, when given), by
    /// user then relay address, and how many shards answered within
    /// `timeout` (the list lacks the others').
    pub fn allocations(
        &self,
        user: Option<&str>,
        timeout: Duration,
    ) -> (Vec<relay_core::server::AllocationInfo>, usize) {
        let user = user.map(str::to_owned);
        let answers = self.ask(timeout, |reply| Control::Allocations { user: user.clone(), reply });
        let answered = answers.len();
        let mut all: Vec<_> = answers.into_iter().flatten().collect();
        all.sort_by(|a, b| (&a.username, a.id).cmp(&(&b.username, b.id)));
        (all, answered)
    }

    /// Ends the allocation holding relay address `relay` (as a Refresh 0
    /// does): how many ended (0 or 1), and how many shards answered within
    /// `timeout`.
    pub fn end_allocation(&self, relay: SocketAddr, timeout: Duration) -> (usize, usize) {
        self.end(relay_core::server::Ending::Allocation(relay), timeout)
    }

    /// Ends every allocation of `user`: how many ended, and how many
    /// shards answered within `timeout`.
    pub fn end_user(&self, user: &str, timeout: Duration) -> (usize, usize) {
        self.end(relay_core::server::Ending::User(user.to_owned()), timeout)
    }

    fn end(&self, which: relay_core::server::Ending, timeout: Duration) -> (usize, usize) {
        let answers = self.ask(timeout, |reply| Control::End { which: which.clone(), reply });
        (answers.iter().sum(), answers.len())
    }

    /// True once a drain has been asked for.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops taking allocations; shards exit once their allocations are
    /// gone or `deadline` passes.
    pub fn drain(&self, deadline: Instant) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        self.send(|| Control::Drain(deadline));
    }
}

/// The running data plane.
pub struct Relay {
    shards: Vec<ShardHandle>,
    backend: BackendKind,
    backend_reason: String,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    relay_count: usize,
    handle: RelayHandle,
    /// The kernel fast path; dropped (detached) with the relay.
    fast: Option<fastpath::FastPath>,
    fast_path_why: String,
}

impl Relay {
    /// Binds every socket (so that errors surface here), builds one server
    /// per shard with `make_server(shard_index)`, and starts the shards.
    pub fn start(config: &IoConfig, mut make_server: impl FnMut(usize) -> Server) -> Result<Relay, StartError> {
        let (backend, backend_reason) = choose_backend(config.backend)?;
        let fd_limit = sys::raise_fd_limit().unwrap_or_else(|e| {
            tracing::warn!("cannot raise the open file limit: {e}");
            1024
        });
        let n = config.shards.max(1);
        if !config.tls_listen.is_empty() && config.tls.is_none() {
            return Err(StartError::NoCertificate);
        }
        if !config.handover {
            refuse_taken_addresses(config)?;
        }
        // Relay sockets may use the descriptors left after a reserve for
        // listeners, connections, rings and the process itself, split
        // evenly between shards and, within a shard, fairly between the
        // relay IPs; a port range larger than that is capped, loudly,
        // rather than starving the process of descriptors. (An eighth of
        // the limit is kept for TCP/TLS connections.)
        let reserve = FD_RESERVE + fd_limit / 8;
        let per_shard_fds = (fd_limit.saturating_sub(reserve) / n as u64) as usize;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut udp_addrs = config.udp_listen.clone();
        let mut tcp_addrs = config.tcp_listen.clone();
        let mut tls_addrs = config.tls_listen.clone();

        // First every shard's sockets, so that the set of the server's own
        // addresses (every relay address of every shard) is complete
        // before any shard serves.
        let mut own = OwnAddresses::new();
        let mut bound = Vec::with_capacity(n);
        let mut per_ip = vec![0usize; config.relay_ips.len()];
        let mut capped = false;
        for k in 0..n {
            let mut socks = Vec::new();
            for addr in udp_addrs.iter_mut() {
                let s = socket::udp_listener(*addr, config.listener_buffer)
                    .map_err(|source| StartError::Bind { addr: *addr, source })?;
                // Port 0: the first shard's choice is everyone's.
                *addr = s.local_addr().map_err(|source| StartError::Bind { addr: *addr, source })?;
                own.add_listener(*addr);
                socks.push(Sock { socket: s, kind: SockKind::Listener(*addr) });
            }
            let mut stream_listeners = [Vec::new(), Vec::new()];
            for (addrs, out) in [&mut tcp_addrs, &mut tls_addrs].into_iter().zip(stream_listeners.iter_mut()) {
                for addr in addrs.iter_mut() {
                    let l = socket::tcp_listener(*addr).map_err(|source| StartError::Bind { addr: *addr, source })?;
                    *addr = l.local_addr().map_err(|source| StartError::Bind { addr: *addr, source })?;
                    own.add_listener(*addr);
                    out.push(l);
                }
            }
            let [tcp, tls] = stream_listeners;
            let streams =
                stream::Streams::new(tcp, tls, config.tls.clone(), config.stream_limits).map_err(StartError::Spawn)?;
            let relays = bind_relays(config, k, n, per_shard_fds, &mut capped)?;
            for &(ip, port, _) in &relays {
                let rip = config.relay_ips[ip];
                own.add_relay(SocketAddr::new(rip.bind, port), rip.advertised);
                per_ip[ip] += 1;
            }
            bound.push((socks, streams, relays));
        }
        if capped {
            let got: Vec<String> =
                config.relay_ips.iter().zip(&per_ip).map(|(r, c)| format!("{}: {c} ports", r.bind)).collect();
            tracing::warn!(
                fd_limit,
                per_address = %got.join(", "),
                "relay port range capped: it needs more open files than RLIMIT_NOFILE allows (raise LimitNOFILE); \
                 the descriptors are shared equally between the relay addresses"
            );
        }
        own_forms(&mut own, config, &udp_addrs, &tcp_addrs, &tls_addrs);
        let own = Arc::new(own);

        // The kernel fast path, before any shard serves: relay-core emits
        // its events only when it is attached.
        let mut fast_ips: Vec<IpAddr> = udp_addrs.iter().map(|a| a.ip()).collect();
        fast_ips.extend(config.relay_ips.iter().map(|r| r.bind));
        fast_ips.dedup();
        let relay_total: usize = bound.iter().map(|b| b.2.len()).sum();
        let slots = u32::try_from(relay_total.max(1024)).unwrap_or(u32::MAX);
        let started = fastpath::FastPath::start(
            config.fast_path,
            &config.fast_path_interfaces,
            &fast_ips,
            slots,
            config.max_datagram,
            n,
        )?;
        let fast_path_why = started.why;
        let fast = started.fast;
        let mut fast_shards = started.shards.into_iter();
        // Generic XDP and TC run after GRO: coalesced bursts must not reach them.
        let batching = udp_batching(config, &bound, !started.after_gro);

        let mut shards = Vec::with_capacity(n);
        let mut controls = Vec::with_capacity(n);
        let mut relay_count = 0;
        for (k, (mut socks, mut streams, relays)) in bound.into_iter().enumerate() {
            streams.set_gso(batching.gso);
            streams.set_proxy_protocol_from(config.proxy_protocol_from.clone());
            let mut server = make_server(k);
            let mut relay_sock = Vec::with_capacity(relays.len());
            for (ip, port, s) in relays {
                let id = server.add_relay(SocketAddr::new(config.relay_ips[ip].advertised, port));
                debug_assert_eq!(id, RelayId(relay_sock.len() as u32));
                relay_sock.push(socks.len());
                socks.push(Sock { socket: s, kind: SockKind::Relay(id) });
            }
            server.set_own_addresses(own.clone());
            let fast_shard = fast_shards.next();
            server.set_fast_path(fast_shard.is_some());
            relay_count += relay_sock.len();
            let (tx, rx) = unbounded();
            let wake = Arc::new(EventFd::new().map_err(StartError::Spawn)?);
            let df = vec![false; relay_sock.len()];
            let state = ShardState {
                index: k,
                server,
                udp: UdpSockets { socks, relay_sock, max_datagram: config.max_datagram },
                control: rx,
                wake: wake.clone(),
                draining: None,
                stop: false,
                send_failures: 0,
                df,
                streams,
                last_housekeeping: Instant::now(),
                loop_turns: 0,
                batching,
                udp_stats: Default::default(),
                scratch: Vec::new(),
                fast: fast_shard,
            };
            let core = (config.pin_cores && !cores.is_empty()).then(|| cores[k % cores.len()]);
            let (batch, max_datagram) = (config.batch.max(1), config.max_datagram);
            let thread = std::thread::Builder::new()
                .name(format!("shard-{k}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let mut state = state;
                    match backend {
                        BackendKind::IoUring => uring::run(&mut state, batch, max_datagram),
                        BackendKind::Portable => portable::run(&mut state, batch, max_datagram),
                    }
                })
                .map_err(StartError::Spawn)?;
            shards.push(ShardHandle { thread: Some(thread) });
            controls.push((tx, wake));
        }
        tracing::info!(
            backend = backend.name(),
            reason = %backend_reason,
            shards = n,
            relays = relay_count,
            gso = batching.gso,
            gro = batching.gro,
            "data plane started"
        );
        tracing::info!(mode = config.fast_path.name(), "{fast_path_why}");
        Ok(Relay {
            shards,
            backend,
            backend_reason,
            udp_addrs,
            tcp_addrs,
            tls_addrs,
            relay_count,
            handle: RelayHandle { shards: controls.into(), draining: Default::default() },
            fast,
            fast_path_why,
        })
    }

    /// The kernel fast path, when one is attached.
    pub fn fast_path(&self) -> Option<&fastpath::FastPath> {
        self.fast.as_ref()
    }

    /// Which path relays UDP ChannelData, and why (as logged at start).
    pub fn fast_path_reason(&self) -> &str {
        &self.fast_path_why
    }

    /// The backend the shards run.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Why that backend was chosen.
    pub fn backend_reason(&self) -> &str {
        &self.backend_reason
    }

    /// The UDP listen addresses, with kernel-chosen ports resolved.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The TCP listen addresses, with kernel-chosen ports resolved.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The TLS listen addresses, with kernel-chosen ports resolved.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// Gives every shard a new TLS certificate for new connections.
    pub fn set_tls_config(&self, config: &Arc<rustls::ServerConfig>) {
        self.handle.set_tls_config(config);
    }

    /// Relay sockets bound across all shards.
    pub fn relay_count(&self) -> usize {
        self.relay_count
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// A cloneable handle on the shards for other threads.
    pub fn handle(&self) -> &RelayHandle {
        &self.handle
    }

    /// Asks every shard for its counters; shards that do not answer within
    /// `timeout` are left out.
    pub fn stats(&self, timeout: Duration) -> Vec<ShardReport> {
        self.handle.stats(timeout)
    }

    /// Gives every shard new credentials (a reload without dropping
    /// allocations).
    pub fn set_credentials(&self, credentials: &relay_core::server::auth::Credentials) {
        self.handle.set_credentials(credentials);
    }

    /// True once a drain has been asked for.
    pub fn is_draining(&self) -> bool {
        self.handle.is_draining()
    }

    /// Stops taking allocations; shards exit once their allocations are
    /// gone or `deadline` passes. Wait with [`Relay::join`].
    pub fn drain(&self, deadline: Instant) {
        self.handle.drain(deadline);
    }

    /// True once every shard thread has exited.
    pub fn is_finished(&self) -> bool {
        self.shards.iter().all(|s| s.thread.as_ref().is_none_or(|t| t.is_finished()))
    }

    /// Waits for every shard to exit; returns the first error a shard hit.
    pub fn join(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let r = t.join().unwrap_or_else(|_| Err(io::Error::other("shard thread panicked")));
                if result.is_ok() {
                    result = r;
                }
            }
        }
        result
    }

    /// Stops every shard now and waits for them.
    pub fn stop(self) -> io::Result<()> {
        self.handle.send(|| Control::Stop);
        self.join()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.shards.iter().any(|s| s.thread.is_some()) {
            self.handle.send(|| Control::Stop);
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Completes the set of own addresses beyond the sockets bound: every
/// address of the host's interfaces (a wildcard listener answers on all of
/// them, and a second address of the host is the host all the same), and
/// each listener under the advertised address of a relay IP it shares
/// (behind a 1:1 NAT a hairpinned datagram to the public address reaches
/// the listener).
fn own_forms(own: &mut OwnAddresses, config: &IoConfig, udp: &[SocketAddr], tcp: &[SocketAddr], tls: &[SocketAddr]) {
    match sys::host_addresses() {
        Ok(ips) => ips.into_iter().for_each(|ip| own.add_ip(ip)),
        Err(e) => tracing::warn!("cannot list the host's addresses ({e}): only the configured ones count as own"),
    }
    for l in udp.iter().chain(tcp).chain(tls) {
        for rip in &config.relay_ips {
            if rip.bind != rip.advertised && (l.ip() == rip.bind || l.ip().is_unspecified()) {
                own.add_listener(SocketAddr::new(rip.advertised, l.port()));
            }
        }
    }
}

/// Refuses to start when another process already listens on one of the
/// configured addresses (see [`socket::address_in_use`]).
fn refuse_taken_addresses(config: &IoConfig) -> Result<(), StartError> {
    let udp = config.udp_listen.iter().map(|a| (*a, false));
    let streams = config.tcp_listen.iter().chain(&config.tls_listen).map(|a| (*a, true));
    for (addr, tcp) in udp.chain(streams) {
        if socket::address_in_use(addr, tcp) {
            return Err(StartError::AddressInUse { addr, transport: if tcp { "TCP" } else { "UDP" } });
        }
    }
    Ok(())
}

/// Binds shard `k`'s relay sockets: its slice of the port range on every
/// relay IP, each IP getting a fair share of `budget` descriptors, bound
/// in turn (one port of each IP, then the next) so that running out of
/// descriptors also leaves every IP its share. Returns (relay IP index,
/// port, socket); a relay IP left without any port is an error (its
/// family's clients would all get 508).
fn bind_relays(
    config: &IoConfig,
    k: usize,
    n: usize,
    budget: usize,
    capped: &mut bool,
) -> Result<Vec<(usize, u16, std::net::UdpSocket)>, StartError> {
    let wanted: Vec<Vec<u16>> = config
        .relay_ips
        .iter()
        .map(|_| match &config.relay_ports {
            RelayPorts::Range(lo, hi) => socket::port_slice(*lo, *hi, k, n).collect(),
            RelayPorts::Ephemeral(count) => vec![0; *count],
        })
        .collect();
    let need: Vec<usize> = wanted.iter().map(Vec::len).collect();
    let shares = socket::fair_shares(&need, budget);
    *capped |= shares.iter().zip(&need).any(|(s, n)| s < n);
    let mut out = Vec::new();
    let mut got = vec![0usize; wanted.len()];
    let mut next = vec![0usize; wanted.len()];
    let mut last_error: Vec<Option<io::Error>> = (0..wanted.len()).map(|_| None).collect();
    let mut out_of_fds = false;
    let mut progress = true;
    while progress && !out_of_fds {
        progress = false;
        for (ip, ports) in wanted.iter().enumerate() {
            // Ports someone else holds are skipped (the next one is tried),
            // within the IP's share.
            while got[ip] < shares[ip] && next[ip] < ports.len() {
                let bind = SocketAddr::new(config.relay_ips[ip].bind, ports[next[ip]]);
                next[ip] += 1;
                match socket::relay_socket(bind, config.relay_buffer).and_then(|s| Ok((s.local_addr()?, s))) {
                    Ok((local, s)) => {
                        out.push((ip, local.port(), s));
                        got[ip] += 1;
                        progress = true;
                        break;
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        *capped = true;
                        out_of_fds = true;
                        break;
                    }
                    Err(e) => last_error[ip] = Some(e),
                }
            }
            if out_of_fds {
                break;
            }
        }
    }
    for (ip, &count) in got.iter().enumerate() {
        if count == 0 {
            let why = match last_error[ip].take() {
                Some(e) => e.to_string(),
                None if out_of_fds => "out of file descriptors (raise LimitNOFILE)".to_owned(),
                None => "the port range gives this shard no port".to_owned(),
            };
            return Err(StartError::NoRelayPorts { shard: k, ip: config.relay_ips[ip].bind, why });
        }
    }
    Ok(out)
}

fn choose_backend(want: Backend) -> Result<(BackendKind, String), StartError> {
    match want {
        Backend::Portable => Ok((BackendKind::Portable, "forced by configuration".into())),
        Backend::IoUring => match uring::probe() {
            Ok(()) => Ok((BackendKind::IoUring, "forced by configuration".into())),
            Err(why) => Err(StartError::IoUringUnavailable(why)),
        },
        Backend::Auto => match uring::probe() {
            Ok(()) => Ok((BackendKind::IoUring, "io_uring available".into())),
            Err(why) => Ok((BackendKind::Portable, format!("io_uring unavailable: {why}"))),
        },
    }
}
