//! The baseline: a trivial UDP forwarder with the relay's hops and framing
//! and none of its protocol, so that the same traffic through it measures
//! what the kernel alone costs per packet.
//!
//! It listens on one socket, as a TURN server does, and owns one "relay"
//! socket per client. A client's first ChannelData datagram assigns it the
//! next free relay socket (no handshake); after that, ChannelData from the
//! client leaves without its 4-byte header from that relay socket to the
//! peer, and whatever the peer sends to the relay socket goes back to the
//! client with a ChannelData header in front, from the listening socket:
//! client → forwarder → peer → forwarder → client, like the relay. One
//! thread, epoll and recvmmsg/sendmmsg batches; a lookup in a hash map per
//! client datagram, as the relay does.
//!
//! Two modes ([`Batching`]): per packet (compare target `baseline`: one
//! datagram per receive and per message sent, as before batching), and
//! GSO/GRO (`baseline-gso`): `UDP_GRO` on the listener and every relay
//! socket, each segment of a coalesced receive forwarded as the datagram it
//! was, and the forwarded datagrams of one flow leave as one GSO send. Both
//! stay zero-copy: towards the peer each segment is queued as the iovec of
//! its payload inside the receive buffer (its 4-byte header skipped), so a
//! GSO send's iovecs skip every header; towards the client the first
//! segment's header is written into the headroom before it, as per packet,
//! and the later segments' into the batch's side header areas
//! ([`Batch::send_segment`]), each followed by its payload where it lies.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use relay_core::wire::channel_data::{CHANNEL_DATA_HEADER_LEN, parse_header, write_header};
use relay_io::gso::{GsoStats, MAX_SEGMENTS, segments};
use relay_io::sys::{Batch, Epoll, SIDE_HEAD, empty_event};

use crate::batching::{self, BatchCounters, Batching};
use crate::procfs;

/// The channel number the forwarder puts on what it sends back.
pub const BASELINE_CHANNEL: u16 = 0x4000;

/// Receives per recvmmsg (each a datagram, or with GRO a buffer of several).
const BATCH: usize = 32;
/// Room for a whole GRO buffer.
const SLOT: usize = 65_536;
/// Batches read from one ready socket per wake-up.
const ROUNDS: usize = 8;

/// What the forwarder did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ForwarderStats {
    /// Datagrams forwarded client → peer.
    pub to_peer: u64,
    /// Datagrams forwarded peer → client.
    pub to_client: u64,
    /// Datagrams dropped (not ChannelData, no free relay socket, unknown
    /// sender, send failure).
    pub dropped: u64,
    /// Clients that were assigned a relay socket.
    pub clients: u64,
    /// The forwarder thread's CPU time, microseconds.
    pub cpu_us: u64,
    /// Its mode.
    pub batching: Batching,
    /// What it batched (GSO sends, GRO receives).
    pub batch: BatchCounters,
}

/// A running forwarder.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<ForwarderStats>>>,
}

impl Forwarder {
    /// Binds a listening socket and `clients` relay sockets on `ip`, and
    /// starts forwarding to and from `peer` per packet or with GSO/GRO;
    /// `cpu` pins the thread.
    pub fn start(
        ip: IpAddr,
        peer: SocketAddr,
        clients: usize,
        cpu: Option<usize>,
        batching: Batching,
    ) -> io::Result<Forwarder> {
        let listener = crate::net::data_socket(SocketAddr::new(ip, 0))?;
        let addr = listener.local_addr()?;
        let relays = (0..clients.max(1))
            .map(|_| crate::net::data_socket(SocketAddr::new(ip, 0)))
            .collect::<io::Result<Vec<_>>>()?;
        // GRO before anything can arrive (the kernel coalesces at enqueue).
        for s in std::iter::once(&listener).chain(&relays) {
            batching::enable(s.as_raw_fd(), batching);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("turn-bench-forwarder".into()).spawn(move || {
            if let Some(c) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: c });
            }
            run(listener, relays, peer, batching, &s)
        })?;
        Ok(Forwarder { addr, stop, thread: Some(thread) })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and returns its counters.
    pub fn stop(mut self) -> io::Result<ForwarderStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err(io::Error::other("forwarder thread panicked"))),
            None => Err(io::Error::other("forwarder already stopped")),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    listener: UdpSocket,
    relays: Vec<UdpSocket>,
    peer: SocketAddr,
    batching: Batching,
    stop: &AtomicBool,
) -> io::Result<ForwarderStats> {
    let cpu0 = procfs::thread_cpu().unwrap_or_default();
    let lfd = listener.as_raw_fd();
    let rfds: Vec<RawFd> = relays.iter().map(|s| s.as_raw_fd()).collect();
    let mut batch = batching::batch(BATCH, SLOT, 0, batching, true);
    for fd in std::iter::once(lfd).chain(rfds.iter().copied()) {
        batching::allow_gso(fd, batching, &mut batch);
    }
    let ep = Epoll::new()?;
    let listen_token = rfds.len() as u64;
    ep.add(lfd, listen_token)?;
    for (i, fd) in rfds.iter().enumerate() {
        ep.add(*fd, i as u64)?;
    }
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::with_capacity(rfds.len());
    let mut client_of: Vec<Option<SocketAddr>> = vec![None; rfds.len()];
    let mut events = vec![empty_event(); 256];
    let mut st = ForwarderStats { batching, ..ForwarderStats::default() };
    let mut gro = GsoStats::default();
    while !stop.load(Ordering::Relaxed) {
        let n = ep.wait(&mut events, 5)?;
        for ev in &events[..n] {
            let token = ev.u64;
            for _ in 0..ROUNDS {
                let got = if token == listen_token {
                    from_clients(lfd, &rfds, peer, &mut by_client, &mut client_of, &mut batch, &mut st, &mut gro)?
                } else {
                    let i = token as usize;
                    from_peer(rfds[i], lfd, peer, client_of[i], &mut batch, &mut st, &mut gro)?
                };
                if got < BATCH {
                    break;
                }
            }
        }
    }
    st.cpu_us = procfs::thread_cpu().unwrap_or_default().saturating_sub(cpu0).as_micros() as u64;
    let mut counters = batch.gso_stats();
    counters.add(&gro);
    st.batch = counters.into();
    Ok(st)
}

#[allow(clippy::too_many_arguments)]
fn from_clients(
    lfd: RawFd,
    rfds: &[RawFd],
    peer: SocketAddr,
    by_client: &mut HashMap<SocketAddr, usize>,
    client_of: &mut [Option<SocketAddr>],
    batch: &mut Batch,
    st: &mut ForwarderStats,
    gro: &mut GsoStats,
) -> io::Result<usize> {
    let n = batch.recv(lfd, 0)?;
    let mut queued = 0;
    for i in 0..n {
        let r = batch.received(i);
        let Some(from) = r.from else { continue };
        // Every segment of a GRO buffer is a ChannelData datagram of its own.
        let mut k = 0;
        for seg in segments(r.len, r.segment) {
            k += 1;
            let (slot, _) = batch.slot_and_reply(i);
            let frame = &slot[seg.clone()];
            let len = match parse_header(frame) {
                Ok((_, len)) if usize::from(len) + CHANNEL_DATA_HEADER_LEN <= frame.len() => usize::from(len),
                _ => {
                    st.dropped += 1;
                    continue;
                }
            };
            let next = by_client.len();
            let idx = match by_client.get(&from) {
                Some(&i) => i,
                None if next < rfds.len() => {
                    by_client.insert(from, next);
                    client_of[next] = Some(from);
                    st.clients += 1;
                    next
                }
                None => {
                    st.dropped += 1;
                    continue;
                }
            };
            // The payload where it lies, without its header: with GSO the
            // segments of one buffer leave as one send whose iovecs skip
            // the headers.
            let payload = seg.start + CHANNEL_DATA_HEADER_LEN;
            batch.send_slot(rfds[idx], peer, i, payload..payload + len);
            queued += 1;
        }
        gro.received(k);
    }
    let (sent, failed) = batching::flush(batch, queued);
    st.to_peer += sent as u64;
    st.dropped += failed as u64;
    Ok(n)
}

fn from_peer(
    rfd: RawFd,
    lfd: RawFd,
    peer: SocketAddr,
    client: Option<SocketAddr>,
    batch: &mut Batch,
    st: &mut ForwarderStats,
    gro: &mut GsoStats,
) -> io::Result<usize> {
    const H: usize = CHANNEL_DATA_HEADER_LEN;
    let n = batch.recv(rfd, H)?;
    let mut queued = 0;
    for i in 0..n {
        let r = batch.received(i);
        let mut k = 0;
        for (j, seg) in segments(r.len, r.segment).enumerate() {
            k += 1;
            // Only the peer may answer (the relay's permission check), and
            // only to a relay socket that has a client.
            let (Some(client), true) = (client, r.from == Some(peer)) else {
                st.dropped += 1;
                continue;
            };
            let Ok(len) = u16::try_from(seg.len()) else {
                st.dropped += 1;
                continue;
            };
            if j == 0 {
                // The headroom in front of the first (or only) datagram.
                let (slot, _) = batch.slot_and_reply(i);
                if write_header(slot, BASELINE_CHANNEL, len).is_err() {
                    st.dropped += 1;
                    continue;
                }
                batch.send_slot(lfd, client, i, 0..H + seg.end);
                queued += 1;
            } else if j < MAX_SEGMENTS {
                // A later GRO segment has no headroom: its header goes into
                // the side area, its payload stays where it lies.
                let (_, _, head) = batch.segment(i, j);
                if write_header(&mut head[SIDE_HEAD - H..], BASELINE_CHANNEL, len).is_err() {
                    st.dropped += 1;
                    continue;
                }
                batch.send_segment(lfd, client, (i, j), H, H + seg.start..H + seg.end, 0);
                queued += 1;
            } else {
                st.dropped += 1;
            }
        }
        gro.received(k);
    }
    let (sent, failed) = batching::flush(batch, queued);
    st.to_client += sent as u64;
    st.dropped += failed as u64;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// Ten 100-byte payloads and a 40-byte one, the way a GSO send cuts
    /// them: equal sizes, the last shorter.
    fn len_of(j: usize) -> usize {
        if j == 10 { 40 } else { 100 }
    }

    /// Sends the eleven datagrams from `from` to `to` as one GSO send,
    /// each `head` bytes of ChannelData header (or none) then `j` repeated.
    fn gso_burst(from: &UdpSocket, to: SocketAddr, head: bool) {
        let h = if head { CHANNEL_DATA_HEADER_LEN } else { 0 };
        let mut b = Batch::new(16, 0, h + 100);
        b.set_gso(true);
        for j in 0..11 {
            let len = len_of(j);
            let reply = b.slot_and_reply(j).1;
            if head {
                write_header(reply, 0x4001, len as u16).unwrap();
            }
            reply[h..h + len].fill(j as u8);
            b.send_reply(from.as_raw_fd(), to, j, h + len);
        }
        assert_eq!(b.flush(), (11, 0));
        assert_eq!(b.gso_stats().gso_sends, 1);
    }

    /// The GSO/GRO forwarder over loopback: a client's GSO burst arrives
    /// coalesced, leaves to the peer without its headers (the peer, without
    /// GRO, gets the eleven payloads one by one, in order); the peer's GSO
    /// burst back arrives coalesced and reaches the client as eleven
    /// ChannelData frames, headers written in place and in the side areas.
    #[test]
    fn gso_mode_forwards_every_segment_of_a_coalesced_receive() {
        let timeout = Some(Duration::from_secs(2));
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !relay_io::gso::gso_supported(client.as_raw_fd()) {
            return test_kit::skip("gso_mode_forwards_every_segment_of_a_coalesced_receive", "no UDP_SEGMENT");
        }
        peer.set_read_timeout(timeout).unwrap();
        client.set_read_timeout(timeout).unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let fw = Forwarder::start(ip, peer.local_addr().unwrap(), 1, None, Batching::GsoGro).unwrap();
        gso_burst(&client, fw.addr(), true);
        let mut buf = [0u8; 2048];
        let mut relay = None;
        for j in 0..11 {
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(n, len_of(j), "datagram {j}: the payload alone");
            assert!(buf[..n].iter().all(|&x| x == j as u8), "datagram {j} in order");
            assert!(relay.is_none_or(|r| r == from));
            relay = Some(from);
        }
        gso_burst(&peer, relay.unwrap(), false);
        for j in 0..11 {
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(parse_header(&buf[..n]).unwrap(), (BASELINE_CHANNEL, len_of(j) as u16), "frame {j}");
            assert_eq!(n, CHANNEL_DATA_HEADER_LEN + len_of(j));
            assert!(buf[CHANNEL_DATA_HEADER_LEN..n].iter().all(|&x| x == j as u8), "frame {j} in order");
        }
        let st = fw.stop().unwrap();
        assert_eq!((st.to_peer, st.to_client, st.dropped, st.clients), (11, 11, 0, 1), "{st:?}");
        assert_eq!(st.batching, Batching::GsoGro);
        // Both bursts arrived coalesced and left as one GSO send each.
        assert_eq!((st.batch.gro_buffers, st.batch.gro_datagrams), (2, 22), "{st:?}");
        assert_eq!((st.batch.gso_sends, st.batch.gso_datagrams, st.batch.single_datagrams), (2, 22, 0), "{st:?}");
    }

    /// Per packet, the same bursts are forwarded one datagram per message.
    #[test]
    fn per_packet_mode_sends_one_datagram_per_message() {
        let timeout = Some(Duration::from_secs(2));
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !relay_io::gso::gso_supported(client.as_raw_fd()) {
            return test_kit::skip("per_packet_mode_sends_one_datagram_per_message", "no UDP_SEGMENT");
        }
        peer.set_read_timeout(timeout).unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let fw = Forwarder::start(ip, peer.local_addr().unwrap(), 1, None, Batching::PerPacket).unwrap();
        gso_burst(&client, fw.addr(), true);
        let mut buf = [0u8; 2048];
        for j in 0..11 {
            assert_eq!(peer.recv(&mut buf).unwrap(), len_of(j));
        }
        let st = fw.stop().unwrap();
        assert_eq!((st.to_peer, st.dropped), (11, 0));
        assert_eq!((st.batch.gro_buffers, st.batch.gso_sends, st.batch.single_datagrams), (0, 0, 11), "{st:?}");
    }
}
