//! Fuzzes the PROXY protocol header parser (`relay_core::wire::proxy`) and
//! the checks relay-io makes with it at the start of a connection
//! (`StreamConn::read_preamble`): from a trusted balancer (a header must
//! come) and from anywhere else (none may).
//!
//! The first input byte picks a read size; the rest is what the balancer
//! sends. Invariants:
//! - `parse` never panics, a complete header is no longer than the bytes,
//!   than `MAX_HEADER_LEN`, and a version 1 one than `V1_MAX_LEN`;
//! - fed in reads of that size (parsing everything so far after each), the
//!   parser's first answer that is not `Incomplete` is its answer on the
//!   whole; and a complete header found in a prefix is the same header, of
//!   the same length;
//! - a header it parsed, written out again (where its version can say
//!   it), parses to the same header;
//! - the connection check over an in-memory socket, in reads of that
//!   size, ends as the parser says (the header; refused as missing or
//!   invalid; still waiting), and the bytes after the header are cut into
//!   exactly the frames a connection without the check cuts from them;
//! - `starts_like_header` says "a header, or the start of one" exactly
//!   where the parser does not say `NotAHeader`;
//! - the untrusted check decides on the first read: refused as untrusted
//!   where that read starts like a header, and otherwise every byte is
//!   cut into the frames a connection without the check cuts.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use relay_core::server::{Client, Transport};
use relay_core::wire::proxy::{self, MAX_HEADER_LEN, Parsed, ProxyError, V1_MAX_LEN, Version};
use relay_io::stream::conn::{PreambleOutcome, ProxyRefusal, ReadOutcome, StreamConn};
use test_kit::MemSocket;

fuzz_target!(|data: &[u8]| {
    let Some((&read, stream)) = data.split_first() else { return };
    let read = usize::from(read) + 1;
    let whole = proxy::parse(stream);
    if let Ok(Parsed::Complete { header, len }) = whole {
        assert!(len <= stream.len() && len <= MAX_HEADER_LEN);
        if header.version == Version::V1 {
            assert!(len <= V1_MAX_LEN);
        }
        let again = match header.version {
            Version::V1 => header.encode_v1(),
            Version::V2 => header.encode_v2(&[]),
        };
        if let Some(bytes) = again {
            assert_eq!(proxy::parse(&bytes), Ok(Parsed::Complete { header, len: bytes.len() }));
        }
    }

    // The parser, fed in reads.
    let mut first = Ok(Parsed::Incomplete);
    let mut end = 0;
    while end < stream.len() {
        end = (end + read).min(stream.len());
        first = proxy::parse(&stream[..end]);
        if first != Ok(Parsed::Incomplete) {
            break;
        }
    }
    if !stream.is_empty() {
        assert_eq!(first, whole, "in reads of {read}");
    }

    // The connection check, in reads.
    let now = Instant::now();
    let client = Client {
        transport: Transport::Tcp,
        remote: SocketAddr::from(([127, 0, 0, 5], 40000)),
        local: SocketAddr::from(([127, 0, 0, 1], 3478)),
        conn: 1,
    };
    let mut conn = StreamConn::new(client, None, now);
    conn.expect_proxy_header();
    let mut sock = MemSocket::open();
    let mut outcome = PreambleOutcome::Blocked;
    for piece in stream.chunks(read) {
        sock.input.extend_from_slice(piece);
        outcome = conn.read_preamble(&mut sock, now);
        if outcome != PreambleOutcome::Blocked {
            break;
        }
    }
    match (outcome, whole) {
        (PreambleOutcome::Header(h), Ok(Parsed::Complete { header, len })) => {
            assert_eq!(h, header);
            sock.input.extend_from_slice(&stream[sock.input.len()..]);
            let after = frames(&mut conn, &mut sock, now);
            let mut plain = StreamConn::new(client, None, now);
            let mut rest = MemSocket { input: stream[len..].to_vec(), ..MemSocket::open() };
            assert_eq!(after, frames(&mut plain, &mut rest, now));
        }
        (PreambleOutcome::Refused(ProxyRefusal::Missing), Err(ProxyError::NotAHeader)) => {}
        (PreambleOutcome::Refused(ProxyRefusal::Invalid), Err(ProxyError::Invalid(_))) => {}
        (PreambleOutcome::Blocked, Ok(Parsed::Incomplete)) => assert!(conn.in_preamble()),
        (o, w) => panic!("the connection check ended {o:?}, the parser says {w:?}"),
    }

    // The untrusted check (a direct client's connection), in reads.
    assert_eq!(proxy::starts_like_header(stream), whole != Err(ProxyError::NotAHeader));
    let first = &stream[..read.min(stream.len())];
    let mut conn = StreamConn::new(client, None, now);
    conn.refuse_proxy_header();
    let mut sock = MemSocket { input: first.to_vec(), ..MemSocket::open() };
    match conn.read_preamble(&mut sock, now) {
        PreambleOutcome::Refused(ProxyRefusal::Untrusted) => assert!(proxy::starts_like_header(first)),
        PreambleOutcome::Plain => {
            assert!(!proxy::starts_like_header(first), "a header's start let through");
            assert!(!conn.in_preamble());
            sock.input.extend_from_slice(&stream[first.len()..]);
            let all = frames(&mut conn, &mut sock, now);
            let mut plain = StreamConn::new(client, None, now);
            let mut whole = MemSocket { input: stream.to_vec(), ..MemSocket::open() };
            assert_eq!(all, frames(&mut plain, &mut whole, now));
        }
        PreambleOutcome::Blocked => assert!(stream.is_empty() && conn.in_preamble()),
        o => panic!("the untrusted check ended {o:?}"),
    }
});

/// Every frame `conn` cuts from what `sock` holds, and whether the rest
/// was unframeable.
fn frames(conn: &mut StreamConn, sock: &mut MemSocket, now: Instant) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    loop {
        loop {
            match conn.next_frame() {
                Ok(Some(f)) => out.push(conn.frame(f).to_vec()),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        match conn.read_from(sock, now) {
            ReadOutcome::Data => {}
            ReadOutcome::Blocked | ReadOutcome::Closed => return (out, false),
        }
    }
}
