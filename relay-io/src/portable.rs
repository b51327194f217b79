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

use relay_core::server::{Client, ClientAction, PEER_HEADROOM, PEER_TAILROOM, PeerAction};

use crate::shard::{BackendKind, ShardState, SockKind};
use crate::sys::{Batch, Epoll, empty_event};

/// Token of the shard's wake-up eventfd.
const WAKE: u64 = u64::MAX;
/// Token of the stream (TCP) epoll.
const STREAMS: u64 = u64::MAX - 1;

/// Batches read from one ready socket before moving on, so that one busy
/// socket cannot starve the others.
const ROUNDS_PER_WAKE: usize = 8;

/// Largest control response written.
pub(crate) const REPLY_LEN: usize = 1500;

/// Runs a shard until it is stopped or has drained.
pub fn run(st: &mut ShardState, batch_size: usize, max_datagram: usize) -> io::Result<()> {
    let ep = Epoll::new()?;
    ep.add(st.wake.raw(), WAKE)?;
    for (i, s) in st.socks.iter().enumerate() {
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
    let sock = &st.socks[index];
    let fd = sock.socket.as_raw_fd();
    let kind = sock.kind;
    // Client datagrams land behind the same headroom as peer data, so that
    // one handed to another allocation of this shard is framed in place.
    let offset = PEER_HEADROOM;
    for _ in 0..ROUNDS_PER_WAKE {
        let n = match batch.recv(fd, offset) {
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
            let packet = PEER_HEADROOM..PEER_HEADROOM + r.len;
            let action = match kind {
                SockKind::Listener(local) => {
                    let client = Client::udp(from, local);
                    match st.server.handle_client(now, &client, &slot[packet.clone()], reply) {
                        ClientAction::None => continue,
                        ClientAction::Reply { len } => {
                            batch.send_reply(fd, from, i, len);
                            continue;
                        }
                        // RFC 5780: from the listener that owns `local`.
                        ClientAction::ReplyFrom { local, to, len } => {
                            if let Some(lfd) = st.listener_fd(local) {
                                batch.send_reply(lfd, to, i, len);
                            }
                            continue;
                        }
                        ClientAction::Forward { relay, peer, payload } => {
                            if let Some(rfd) = st.relay_fd(relay) {
                                batch.send_slot(rfd, peer, i, packet.start + payload.start..packet.start + payload.end);
                            }
                            continue;
                        }
                        // Another allocation of this shard: on as peer data.
                        ClientAction::Deliver { relay, from, payload } => {
                            let payload = packet.start + payload.start..packet.start + payload.end;
                            st.server.handle_peer(now, relay, from, slot, payload)
                        }
                    }
                }
                SockKind::Relay(relay) => st.server.handle_peer(now, relay, from, slot, packet),
            };
            if let PeerAction::Forward { client, frame } = action {
                if client.transport.is_stream() {
                    st.deliver_stream(client.conn, &slot[frame], now);
                } else if let Some(lfd) = st.listener_fd(client.local) {
                    batch.send_slot(lfd, client.remote, i, frame);
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
