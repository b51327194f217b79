//! The portable backend: epoll readiness plus recvmmsg/sendmmsg batches.
//!
//! Runs wherever io_uring is unavailable (default container seccomp
//! profiles, `kernel.io_uring_disabled`, old kernels). The packet path is
//! the same as io_uring's in spirit: datagrams land in slots of a batch
//! allocated once, ChannelData is forwarded from its receive slot, peer
//! data is framed in place in the headroom in front of it, and the sends of
//! a batch leave in `sendmmsg` calls. The loop is
//! [`crate::event_loop::run`]; this backend is its [`Driver`]: an
//! `epoll_wait`, then `recvmmsg` batches of `IoConfig::batch` datagrams,
//! each handled through [`ShardState::on_datagram`].

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use relay_core::server::{PEER_HEADROOM, PEER_TAILROOM};

use crate::egress::{Buf, REPLY_LEN, Via};
use crate::event_loop::{self, Driver, Ready};
use crate::gso::{MAX_GRO_SEGMENTS, segments};
use crate::shard::{BackendKind, Datagram, Segment, ShardState};
use crate::sys::{self, Batch, Epoll, empty_event};

/// Token of the shard's wake-up eventfd.
const WAKE: u64 = u64::MAX;
/// Token of the stream (TCP) epoll.
const STREAMS: u64 = u64::MAX - 1;

/// Batches read from one ready socket before moving on, so that one busy
/// socket cannot starve the others.
const ROUNDS_PER_WAKE: usize = 8;

/// The portable driver: an epoll instance over the shard's sockets, the
/// wake-up eventfd and the stream epoll, and one receive/send batch.
struct Portable {
    ep: Epoll,
    batch: Batch,
    events: Vec<libc::epoll_event>,
    ready: usize,
    /// A response to a request in a coalesced segment after the first
    /// (the slot's reply area serves the first): sent at once.
    reply: Box<[u8]>,
}

/// Largest buffer a coalesced (GRO) receive fills: a UDP datagram's
/// most, which is what the kernel coalesces up to.
pub const GRO_BUFFER: usize = 1 << 16;

/// Runs a shard until it is stopped or has drained.
pub fn run(st: &mut ShardState, batch_size: usize, max_datagram: usize) -> io::Result<()> {
    let ep = Epoll::new()?;
    ep.add(st.wake.raw(), WAKE)?;
    for (i, s) in st.udp.socks.iter().enumerate() {
        ep.add(s.socket.as_raw_fd(), i as u64)?;
    }
    if !st.streams.is_empty() {
        ep.add(st.streams.fd(), STREAMS)?;
    }
    let payload = if st.batching.gro { GRO_BUFFER.max(max_datagram) } else { max_datagram };
    let slot_len = PEER_HEADROOM + payload + PEER_TAILROOM + 1;
    let mut batch = Batch::new(batch_size, slot_len, REPLY_LEN);
    batch.set_gso(st.batching.gso);
    batch.set_gro(st.batching.gro);
    // Every socket's entry now, so that a fallback later allocates nothing.
    for s in &st.udp.socks {
        batch.coalescer().set_gso(s.socket.as_raw_fd(), st.batching.gso);
    }
    let reply = vec![0u8; REPLY_LEN].into_boxed_slice();
    let mut p = Portable { ep, batch, events: vec![empty_event(); 256], ready: 0, reply };
    event_loop::run(st, &mut p)
}

impl Driver for Portable {
    const KIND: BackendKind = BackendKind::Portable;

    fn wait(&mut self, _st: &mut ShardState, timeout: Duration) -> io::Result<()> {
        // Rounded up, so that a timer due in under a millisecond is not
        // polled for in a busy loop.
        self.ready = self.ep.wait(&mut self.events, timeout.as_millis() as i32 + 1)?;
        Ok(())
    }

    fn dispatch(&mut self, st: &mut ShardState, now: Instant) -> Ready {
        let mut ready = Ready::default();
        for k in 0..self.ready {
            match self.events[k].u64 {
                WAKE => ready.control = true,
                STREAMS => ready.streams = true,
                token => drain_socket(st, token as usize, &mut self.batch, &mut self.reply, now),
            }
        }
        st.udp_stats = self.batch.gso_stats();
        ready
    }
}

/// Receives from a ready socket in batches (at most [`ROUNDS_PER_WAKE`]) and
/// sends what each batch leads to (grouped into GSO sends where allowed).
fn drain_socket(st: &mut ShardState, index: usize, batch: &mut Batch, scratch: &mut [u8], now: Instant) {
    let sock = &st.udp.socks[index];
    let (fd, kind) = (sock.socket.as_raw_fd(), sock.kind);
    for _ in 0..ROUNDS_PER_WAKE {
        // Client datagrams land behind the same headroom as peer data, so
        // that one handed to another allocation of this shard is framed in
        // place.
        let n = match batch.recv(fd, PEER_HEADROOM) {
            Ok(n) => n,
            Err(_) => return,
        };
        for i in 0..n {
            let r = batch.received(i);
            let Some(from) = r.from else { continue };
            if r.truncated {
                // Larger than the configured maximum datagram: dropped.
                continue;
            }
            if r.segment == 0 || r.segment >= r.len {
                let (slot, reply) = batch.slot_and_reply(i);
                let d = Datagram { fd, kind, from, len: r.len };
                let Some(tx) = st.on_datagram(now, d, slot, reply) else { continue };
                match (tx.via, tx.buf) {
                    (Via::Udp { fd, dest }, Buf::Reply) => batch.send_reply(fd, dest, i, tx.range.len()),
                    (Via::Udp { fd, dest }, _) => batch.send_slot(fd, dest, i, tx.range),
                    (Via::Stream { conn }, _) => st.deliver_stream(conn, &slot[tx.range], now),
                }
                continue;
            }
            // Coalesced: every segment as the datagram it was (a sender's
            // GSO message holds at most MAX_GRO_SEGMENTS; any beyond are
            // dropped, counted, rather than framed without a side header
            // area).
            let count = segments(r.len, r.segment).count();
            batch.coalescer().stats.received(count);
            for _ in MAX_GRO_SEGMENTS..count {
                st.server.count_drop(relay_core::server::stats::Drop::TooLarge);
            }
            let mut route = None;
            for (j, seg) in segments(r.len, r.segment).enumerate().take(MAX_GRO_SEGMENTS) {
                let d = Datagram { fd, kind, from, len: seg.len() };
                let at = PEER_HEADROOM + seg.start;
                let (slot, reply, head) = batch.segment(i, j);
                let reply = if j == 0 { reply } else { &mut *scratch };
                let Some(tx) = st.on_segment(now, d, Segment { buf: slot, at, head }, reply, &mut route) else {
                    continue;
                };
                match (tx.via, tx.buf) {
                    (Via::Udp { fd, dest }, Buf::Reply) if j == 0 => batch.send_reply(fd, dest, i, tx.range.len()),
                    // Sent at once (the slot's one reply area serves the
                    // first segment): it may leave before that one's.
                    (Via::Udp { fd, dest }, Buf::Reply) => match sys::send_to(fd, &scratch[tx.range], dest) {
                        Ok(_) => batch.coalescer().count_sent(1),
                        Err(_) => st.send_failures += 1,
                    },
                    (Via::Udp { fd, dest }, _) => {
                        batch.send_segment(fd, dest, (i, j), usize::from(tx.head), tx.range, usize::from(tx.pad))
                    }
                    (Via::Stream { conn }, _) => {
                        let (slot, _, head) = batch.segment(i, j);
                        st.deliver_stream_segment(conn, &tx, slot, head, now);
                    }
                }
            }
        }
        let (_, failed) = batch.flush();
        st.send_failures += failed as u64;
        if n < batch.capacity() {
            return;
        }
    }
}
