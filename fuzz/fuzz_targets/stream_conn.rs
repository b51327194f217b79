//! Fuzzes one TURN-over-TCP/TLS connection's state
//! (`relay_io::stream::conn::StreamConn`) over an in-memory socket, driven
//! as `relay_io::stream::Streams` drives it: bytes arrive from the client
//! (anything, cut into frames), relayed data and control responses are
//! queued, loop turns end, the socket takes a little or nothing or all,
//! writability events come. The first input byte picks TLS (a real rustls
//! session, handshake done) or plain TCP and the queue limits.
//!
//! Invariants:
//! - every call returns (a loop that spins, like the frame loop once did
//!   when a turn's TLS output passed rustls's 64 KiB buffer, is a hang);
//! - every frame cut is one whole frame by the stream framer, and the
//!   frames cut are exactly the client's bytes, in order, up to an
//!   unframeable rest;
//! - the queue never holds more than its hard limit, and relayed data is
//!   taken only within the soft limit;
//! - what reaches the client (decrypted, over TLS) is always a prefix of
//!   the frames taken, in order, and once the socket takes everything all
//!   of them arrive; over TLS no record holds bytes of two frames.
#![no_main]

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use relay_core::server::{Client, Transport};
use relay_core::wire::{Frame, MAGIC_COOKIE, next_frame};
use relay_io::stream::StreamLimits;
use relay_io::stream::conn::{Queued, ReadOutcome, StreamConn};

/// Reads the input a byte (or a few) at a time; zeros once exhausted.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, max: usize) -> &[u8] {
        let n = (self.byte() as usize * 4).min(max).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// The socket: what the client sent (then it would block, or the stream
/// ends), and what the server wrote, with room for `room` bytes more.
use test_kit::MemSocket as Socket;

/// The client's end: plain bytes, or a rustls client session.
struct Peer {
    tls: Option<rustls::ClientConnection>,
    /// Plaintext received so far.
    received: Vec<u8>,
    /// Of `Socket::output`, the bytes already decrypted.
    seen: usize,
}

impl Peer {
    /// Sends `bytes` to the server.
    fn send(&mut self, sock: &mut Socket, bytes: &[u8]) {
        match &mut self.tls {
            None => sock.input.extend_from_slice(bytes),
            Some(tc) => {
                tc.writer().write_all(bytes).unwrap();
                while tc.wants_write() {
                    tc.write_tls(&mut sock.input).unwrap();
                }
            }
        }
    }

    /// Reads what the server wrote since the last call; returns the
    /// plaintext lengths of the application data records (TLS).
    fn receive(&mut self, sock: &Socket) -> Vec<usize> {
        let mut records = Vec::new();
        let new = &sock.output[self.seen..];
        match &mut self.tls {
            None => {
                self.received.extend_from_slice(new);
                self.seen = sock.output.len();
            }
            Some(tc) => {
                // Whole records only; a partial one waits for the rest.
                let mut at = 0;
                while new.len() - at >= 5 {
                    let len = 5 + usize::from(u16::from_be_bytes([new[at + 3], new[at + 4]]));
                    if new.len() - at < len {
                        break;
                    }
                    let mut record = &new[at..at + len];
                    while !record.is_empty() {
                        tc.read_tls(&mut record).unwrap();
                    }
                    tc.process_new_packets().expect("the server's records decrypt");
                    let before = self.received.len();
                    let mut buf = [0u8; 16384];
                    loop {
                        match tc.reader().read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => self.received.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    records.push(self.received.len() - before);
                    at += len;
                }
                self.seen += at;
            }
        }
        records
    }
}

/// A whole frame the server might queue: ChannelData of `len` payload
/// bytes (padded), or a STUN message with `len` (rounded down to 4) bytes
/// of attributes.
fn frame(stun: bool, len: u16, fill: u8) -> Vec<u8> {
    if stun {
        let len = len & !3;
        let mut f = vec![fill; 20 + usize::from(len)];
        f[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        f
    } else {
        let mut f = vec![fill; 4 + usize::from(len)];
        f[0..2].copy_from_slice(&0x4000u16.to_be_bytes());
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f.resize((f.len() + 3) & !3, 0);
        f
    }
}

/// The length of the whole frame at the start of `bytes`.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    match next_frame(bytes) {
        Ok(Frame::Stun(n) | Frame::ChannelData(n)) => Some(n),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    let soft = 1 + usize::from(input.byte()) * 512;
    let limits =
        StreamLimits { send_queue: soft, send_queue_hard: soft + usize::from(input.byte()) * 1024, ..Default::default() };
    let now = Instant::now();
    let remote: SocketAddr = "192.0.2.1:50000".parse().unwrap();
    let local: SocketAddr = "192.0.2.2:3478".parse().unwrap();
    let transport = if mode & 1 == 1 { Transport::Tls } else { Transport::Tcp };
    let client = Client { transport, remote, local, conn: 0 };
    let mut sock = Socket::open();
    let (mut conn, mut peer) = if transport == Transport::Tls {
        let (server, root) = test_kit::test_certificate();
        let tls = Box::new(rustls::ServerConnection::new(server).unwrap());
        let mut conn = StreamConn::new(client, Some(tls), now);
        let tc = rustls::ClientConnection::new(test_kit::client_config(&root), "localhost".try_into().unwrap())
            .unwrap();
        let mut peer = Peer { tls: Some(tc), received: Vec::new(), seen: 0 };
        for _ in 0..10 {
            peer.send(&mut sock, &[]);
            assert_eq!(conn.read_from(&mut sock, now), ReadOutcome::Blocked);
            peer.receive(&sock);
            let tc = peer.tls.as_ref().unwrap();
            if !conn.handshaking() && !tc.is_handshaking() && !tc.wants_write() {
                break;
            }
        }
        assert!(!conn.handshaking(), "no TLS handshake");
        assert!(peer.received.is_empty());
        let _ = conn.take_interest();
        (conn, peer)
    } else {
        (StreamConn::new(client, None, now), Peer { tls: None, received: Vec::new(), seen: 0 })
    };

    // What the client sent, and the frames the server cut from it.
    let mut sent: Vec<u8> = Vec::new();
    let mut cut: Vec<u8> = Vec::new();
    let mut unframeable = false;
    // What the server took to send, frame by frame.
    let mut taken: Vec<u8> = Vec::new();
    let mut frame_ends: Vec<usize> = Vec::new();
    // As `Streams` keeps them: in this turn's batch, writability watched.
    let (mut batched, mut watching) = (false, false);
    let mut closed = false;
    let mut fill = 0u8;

    while !input.0.is_empty() && !closed {
        match input.byte() % 8 {
            // Bytes from the client (the framer decides what they are).
            0 | 1 => {
                let chunk = input.bytes(70_000).to_vec();
                if unframeable {
                    continue;
                }
                peer.send(&mut sock, &chunk);
                sent.extend_from_slice(&chunk);
                loop {
                    match conn.read_from(&mut sock, now) {
                        ReadOutcome::Data => {}
                        ReadOutcome::Blocked => break,
                        ReadOutcome::Closed => panic!("a read closed an open stream"),
                    }
                    loop {
                        match conn.next_frame() {
                            Ok(Some(f)) => {
                                let bytes = conn.frame(f);
                                assert_eq!(frame_len(bytes), Some(bytes.len()), "not one whole frame");
                                cut.extend_from_slice(bytes);
                            }
                            Ok(None) => break,
                            Err(_) => {
                                unframeable = true;
                                break;
                            }
                        }
                    }
                    if unframeable {
                        break;
                    }
                }
                assert_eq!(&sent[..cut.len()], &cut[..], "frames are the client's bytes in order");
            }
            // Relayed data, or a control response.
            op @ (2 | 3) => {
                let relayed = op == 2;
                let kind = input.byte();
                fill = fill.wrapping_add(1);
                let f = frame(kind & 1 == 1, input.u16(), fill);
                let queued = conn.queued();
                match conn.queue(&mut sock, &f, relayed, &limits) {
                    Queued::Shed => {
                        assert!(relayed && queued + f.len() > limits.send_queue);
                        continue;
                    }
                    Queued::Close => {
                        closed = true;
                        continue;
                    }
                    Queued::Batched => {
                        assert!(relayed && !batched && !watching);
                        batched = true;
                    }
                    Queued::Taken => {}
                }
                assert!(!relayed || queued + f.len() <= limits.send_queue);
                taken.extend_from_slice(&f);
                frame_ends.push(taken.len());
            }
            // The socket's room changes.
            4 => sock.room = usize::from(input.byte()) * 64,
            5 => sock.room = usize::MAX,
            // The loop turn ends.
            6 => {
                if std::mem::take(&mut batched) && conn.end_turn() {
                    closed = conn.write_out(&mut sock).is_err();
                }
            }
            // A writability event.
            _ => {
                if watching {
                    closed = conn.write_out(&mut sock).is_err();
                }
            }
        }
        if let Some(w) = conn.take_interest() {
            assert_ne!(w, watching, "an interest change that changes nothing");
            watching = w;
        }
        assert!(conn.queued() <= limits.send_queue_hard);
        check_received(&mut peer, &sock, &taken, &frame_ends);
    }
    if closed {
        return;
    }
    // The client reads everything: all that was taken arrives.
    sock.room = usize::MAX;
    if std::mem::take(&mut batched) && conn.end_turn() {
        conn.write_out(&mut sock).unwrap();
    }
    if conn.take_interest().unwrap_or(watching) {
        conn.write_out(&mut sock).unwrap();
    }
    assert_eq!(conn.queued(), 0);
    check_received(&mut peer, &sock, &taken, &frame_ends);
    assert_eq!(peer.received.len(), taken.len(), "everything taken arrives once the client reads");
});

/// What the client received is a prefix of what was taken; over TLS, no
/// record holds bytes of two frames.
fn check_received(peer: &mut Peer, sock: &Socket, taken: &[u8], frame_ends: &[usize]) {
    let before = peer.received.len();
    let records = peer.receive(sock);
    assert!(peer.received.len() <= taken.len(), "the client received more than was sent");
    assert_eq!(&peer.received[..], &taken[..peer.received.len()], "the client received other bytes");
    let mut at = before;
    for n in records {
        // The record starts at `at`: it must end at or before the end of
        // the frame it starts in.
        let end = frame_ends.iter().copied().find(|&e| e > at).expect("a record past the frames");
        assert!(at + n <= end, "a TLS record holds bytes of two frames");
        at += n;
    }
}
