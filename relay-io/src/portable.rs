//! The portable backend: epoll readiness plus recvmmsg/sendmmsg batches.
//!
//! Runs wherever io_uring is unavailable (default container seccomp
//! profiles, `kernel.io_uring_disabled`, old kernels). The packet path is
//! the same as io_uring's in spirit: datagrams land in slots of a batch
//! allocated once, ChannelData is forwarded from its receive slot, peer
//! data is framed in place in the headroom in front of it, and the sends of
//! a batch leave in `sendmmsg` calls.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use relay_core::server::{PEER_HEADROOM, PEER_TAILROOM};

use crate::egress::{Buf, REPLY_LEN, Via};
use crate::shard::{BackendKind, Datagram, ShardState};
use crate::sys::{Batch, Epoll, empty_event};

/// Token of the shard's wake-up eventfd.
const WAKE: u64 = u64::MAX;
/// Token of the stream (TCP) epoll.
const STREAMS: u64 = u64::MAX - 1;

/// Batches read from one ready socket before moving on, so that one busy
/// socket cannot starve the others.
const ROUNDS_PER_WAKE: usize = 8;

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
    let slot_len = PEER_HEADROOM + max_datagram + PEER_TAILROOM + 1;
    let mut batch = Batch::new(batch_size, slot_len, REPLY_LEN);
    let mut events = vec![empty_event(); 256];
    loop {
        let now = Instant::now();
        if st.finished(now) {
            st.close_streams(now);
            return Ok(());
        }
        let timeout = st.sleep_for(now).as_millis() as i32 + 1;
        let n = ep.wait(&mut events, timeout)?;
        let now = Instant::now();
        for ev in &events[..n] {
            let token = ev.u64;
            if token == WAKE {
                st.wake.drain();
                st.handle_control(BackendKind::Portable);
                continue;
            }
            if token == STREAMS {
                st.process_streams(now);
                continue;
            }
            drain_socket(st, token as usize, &mut batch, now);
        }
        if st.server.next_timeout().is_some_and(|t| t <= now) {
            st.server.handle_timeout(now);
        }
        st.housekeeping(now);
        st.apply_events();
    }
}

fn drain_socket(st: &mut ShardState, index: usize, batch: &mut Batch, now: Instant) {
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
            let (slot, reply) = batch.slot_and_reply(i);
            let d = Datagram { fd, kind, from, len: r.len };
            let Some(tx) = st.on_datagram(now, d, slot, reply) else { continue };
            match (tx.via, tx.buf) {
                (Via::Udp { fd, dest }, Buf::Reply) => batch.send_reply(fd, dest, i, tx.range.len()),
                (Via::Udp { fd, dest }, _) => batch.send_slot(fd, dest, i, tx.range),
                (Via::Stream { conn }, _) => st.deliver_stream(conn, &slot[tx.range], now),
            }
        }
        let (_, failed) = batch.flush();
        st.send_failures += failed as u64;
        if n < batch.capacity() {
            return;
        }
    }
}
