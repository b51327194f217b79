//! The harness's peer: one UDP socket on loopback, in its own thread,
//! that echoes every datagram back to where it came from or sinks it
//! (recording one-way latency from the probe's send time). Batched with
//! recvmmsg/sendmmsg; nothing allocated per packet.
//!
//! With [`Batching::GsoGro`] (the default) the socket has `UDP_GRO`: a
//! receive may hold several datagrams of one flow, and each segment counts,
//! is timed and is echoed as the datagram it was; the echoes of one buffer
//! (equal sizes, one destination) leave as one GSO send, each segment
//! queued from where it lies in the receive slot. [`Batching::PerPacket`]:
//! one datagram per receive and per send.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use relay_io::gso::segments;
use relay_io::sys::{Epoll, empty_event};

use crate::batching::{self, BatchCounters, Batching};
use crate::payload::Probe;
use crate::procfs;
use crate::stats::{latency_histogram, record};

/// What the peer does with what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerMode {
    /// Send every datagram back to its sender.
    Echo,
    /// Count it and drop it (one-way measurement).
    Sink,
}

/// Receives per recvmmsg (each a datagram, or a GRO buffer of several).
const BATCH: usize = 64;
/// Largest datagram handled.
const SLOT: usize = 65_536;

/// Counters the peer thread returns.
#[derive(Debug)]
pub struct PeerStats {
    /// Datagrams received.
    pub received: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Datagrams sent back (echo).
    pub echoed: u64,
    /// Echoes the kernel refused (full buffer).
    pub echo_failed: u64,
    /// One-way latency client → relay → peer (sink mode), nanoseconds.
    pub one_way: Histogram<u64>,
    /// The peer thread's CPU time.
    pub cpu: Duration,
    /// What its socket batched.
    pub batching: BatchCounters,
}

impl PeerStats {
    /// Adds another peer's counters to these (the CPU times add up).
    pub fn add(&mut self, o: &PeerStats) -> io::Result<()> {
        self.received += o.received;
        self.bytes += o.bytes;
        self.echoed += o.echoed;
        self.echo_failed += o.echo_failed;
        self.one_way.add(&o.one_way).map_err(|e| io::Error::other(e.to_string()))?;
        self.cpu += o.cpu;
        self.batching.add(&o.batching);
        Ok(())
    }
}

/// A running peer.
#[derive(Debug)]
pub struct Peer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<PeerStats>>>,
}

impl Peer {
    /// Binds `ip:0` and starts the peer thread; probes' send times are read
    /// relative to `epoch`; `batching` says whether its socket uses GSO and
    /// GRO.
    pub fn start(ip: IpAddr, mode: PeerMode, epoch: Instant, batching: Batching) -> io::Result<Peer> {
        let sock = crate::net::data_socket(SocketAddr::new(ip, 0))?;
        // GRO before anything can arrive (the kernel coalesces at enqueue).
        batching::enable(sock.as_raw_fd(), batching);
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::Builder::new()
            .name("turn-bench-peer".into())
            .spawn(move || run(sock, mode, epoch, batching, &s, &r))?;
        Ok(Peer { addr, stop, received, thread: Some(thread) })
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the thread and returns its counters.
    pub fn stop(mut self) -> io::Result<PeerStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err(io::Error::other("peer thread panicked"))),
            None => Err(io::Error::other("peer already stopped")),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    sock: UdpSocket,
    mode: PeerMode,
    epoch: Instant,
    batching: Batching,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> io::Result<PeerStats> {
    let cpu0 = procfs::thread_cpu().unwrap_or_default();
    let fd = sock.as_raw_fd();
    let ep = Epoll::new()?;
    ep.add(fd, 0)?;
    let mut events = [empty_event(); 4];
    let mut batch = batching::batch(BATCH, SLOT, 0, batching, true);
    batching::allow_gso(fd, batching, &mut batch);
    let mut gro = relay_io::gso::GsoStats::default();
    let mut st = PeerStats {
        received: 0,
        bytes: 0,
        echoed: 0,
        echo_failed: 0,
        one_way: latency_histogram(),
        cpu: Duration::ZERO,
        batching: BatchCounters::default(),
    };
    while !stop.load(Ordering::Relaxed) {
        if ep.wait(&mut events, 5)? == 0 {
            continue;
        }
        // A bounded number of batches per wake-up, then check `stop`.
        for _ in 0..64 {
            let n = batch.recv(fd, 0)?;
            if n == 0 {
                break;
            }
            let now_ns = epoch.elapsed().as_nanos() as u64;
            let mut queued = 0;
            for i in 0..n {
                let r = batch.received(i);
                let Some(from) = r.from else { continue };
                // Each segment of a GRO buffer is a datagram of its own
                // (one segment, the whole buffer, without GRO).
                let mut k = 0;
                for seg in segments(r.len, r.segment) {
                    k += 1;
                    st.received += 1;
                    st.bytes += seg.len() as u64;
                    match mode {
                        PeerMode::Echo => {
                            batch.send_slot(fd, from, i, seg);
                            queued += 1;
                        }
                        PeerMode::Sink => {
                            let (slot, _) = batch.slot_and_reply(i);
                            if let Some(p) = Probe::read(&slot[seg]) {
                                record(&mut st.one_way, now_ns.saturating_sub(p.sent_ns));
                            }
                        }
                    }
                }
                gro.received(k);
            }
            if mode == PeerMode::Echo {
                let (sent, failed) = batching::flush(&mut batch, queued);
                st.echoed += sent as u64;
                st.echo_failed += failed as u64;
            }
            count.store(st.received, Ordering::Relaxed);
        }
    }
    st.cpu = procfs::thread_cpu().unwrap_or_default().saturating_sub(cpu0);
    let mut counters = batch.gso_stats();
    counters.add(&gro);
    st.batching = counters.into();
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GSO burst to a batching echo peer arrives as one GRO buffer; each
    /// segment is counted and echoed (as one GSO send) as its own datagram.
    #[test]
    fn a_batching_peer_echoes_every_segment_of_a_gro_buffer() {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !relay_io::gso::gso_supported(client.as_raw_fd()) {
            return test_kit::skip("a_batching_peer_echoes_every_segment_of_a_gro_buffer", "no UDP_SEGMENT");
        }
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        for batching in [Batching::GsoGro, Batching::PerPacket] {
            let peer = Peer::start(ip, PeerMode::Echo, Instant::now(), batching).unwrap();
            let mut b = relay_io::sys::Batch::new(8, 0, 64);
            b.set_gso(true);
            for j in 0..8 {
                let len = if j == 7 { 10 } else { 64 };
                b.slot_and_reply(j).1[..len].fill(j as u8);
                b.send_reply(client.as_raw_fd(), peer.addr(), j, len);
            }
            assert_eq!(b.flush(), (8, 0));
            let mut buf = [0u8; 256];
            for j in 0..8u8 {
                let n = client.recv(&mut buf).unwrap();
                assert_eq!((n, buf[0]), (if j == 7 { 10 } else { 64 }, j), "{batching:?}");
            }
            let st = peer.stop().unwrap();
            assert_eq!((st.received, st.echoed, st.echo_failed, st.bytes), (8, 8, 0, 7 * 64 + 10), "{batching:?}");
            let c = st.batching;
            match batching {
                Batching::GsoGro => {
                    assert_eq!((c.gro_buffers, c.gro_datagrams, c.gso_sends, c.gso_datagrams), (1, 8, 1, 8))
                }
                Batching::PerPacket => assert_eq!((c.gro_buffers, c.gso_sends, c.single_datagrams), (0, 0, 8)),
            }
        }
    }
}
