//! Criterion benchmarks of the wire format's hot functions: the ChannelData
//! fast path, parsing and verifying an authenticated Allocate, and encoding a
//! success response with integrity. Results: docs/benchmarks.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relay_core::wire::attr::transport;
use relay_core::wire::demux::{PacketKind, classify_packet};
use relay_core::wire::{
    Attribute, ChannelData, Class, Key, Message, MessageBuilder, MessageType, Method, PasswordAlgorithm, TransactionId,
    channel_data,
};

const TID: TransactionId = TransactionId([0x5a; 12]);

/// An authenticated Allocate as a browser sends it: REQUESTED-TRANSPORT,
/// USERNAME, REALM, NONCE, MESSAGE-INTEGRITY, FINGERPRINT (about 100 bytes).
fn allocate_request(key: &Key) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::ALLOCATE), TID).unwrap();
    b.add(&Attribute::RequestedTransport(transport::UDP)).unwrap();
    b.add(&Attribute::Username("alice")).unwrap();
    b.add(&Attribute::Realm("example.org")).unwrap();
    b.add(&Attribute::Nonce("obMatJos2AAACf//499k954d6OL34oL9")).unwrap();
    b.add_message_integrity(key.as_bytes()).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    buf.truncate(n);
    buf
}

fn channel_data_path(c: &mut Criterion) {
    let mut pkt = [0u8; 4 + 160];
    channel_data::encode(&mut pkt, 0x4001, &[0xab; 160], false).unwrap();
    let mut g = c.benchmark_group("channel_data");
    g.throughput(Throughput::Elements(1));
    g.bench_function("classify+parse_header", |b| {
        b.iter(|| {
            let p = black_box(&pkt[..]);
            match classify_packet(p) {
                PacketKind::ChannelData => channel_data::parse_header(p).ok(),
                _ => None,
            }
        })
    });
    g.bench_function("classify+parse_datagram", |b| {
        b.iter(|| {
            let p = black_box(&pkt[..]);
            match classify_packet(p) {
                PacketKind::ChannelData => ChannelData::parse(p).ok().map(|cd| cd.payload.len()),
                _ => None,
            }
        })
    });
    g.bench_function("rewrite_header", |b| {
        let mut out = [0u8; 4];
        b.iter(|| channel_data::write_header(black_box(&mut out), black_box(0x4002), black_box(160)))
    });
    g.finish();
}

fn stun_path(c: &mut Criterion) {
    let key = Key::long_term(PasswordAlgorithm::Md5, "alice", "example.org", "correct horse").unwrap();
    let req = allocate_request(&key);
    let mut g = c.benchmark_group("stun");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("parse_allocate_{}B", req.len()), |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&req)).unwrap();
            let tid = m.transaction_id();
            m.attributes().filter(|a| a.decode(&tid).is_ok()).count()
        })
    });
    g.bench_function("hmac_sha1_only", |b| {
        // The cost floor: the HMAC over the same bytes, without parsing.
        let m = Message::parse(&req).unwrap();
        b.iter(|| black_box(&m).verify_message_integrity(key.as_bytes()))
    });
    g.bench_function(format!("parse+verify_allocate_{}B", req.len()), |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&req)).unwrap();
            m.verify_fingerprint().unwrap();
            m.verify_message_integrity(key.as_bytes()).unwrap();
            let tid = m.transaction_id();
            m.attributes().filter(|a| a.decode(&tid).is_ok()).count()
        })
    });
    g.bench_function("encode_allocate_success+integrity+fingerprint", |b| {
        let mut buf = [0u8; 512];
        let relayed = "203.0.113.7:49160".parse().unwrap();
        let mapped = "198.51.100.2:53211".parse().unwrap();
        b.iter(|| {
            let mut m = MessageBuilder::new(
                black_box(&mut buf),
                MessageType::new(Class::Success, Method::ALLOCATE),
                black_box(TID),
            )
            .unwrap();
            m.add(&Attribute::XorRelayedAddress(relayed)).unwrap();
            m.add(&Attribute::XorMappedAddress(mapped)).unwrap();
            m.add(&Attribute::Lifetime(600)).unwrap();
            m.add(&Attribute::Software("turn-relay")).unwrap();
            m.add_message_integrity(key.as_bytes()).unwrap();
            m.add_fingerprint().unwrap();
            m.finish()
        })
    });
    g.bench_function("long_term_key_md5", |b| {
        b.iter(|| Key::long_term(PasswordAlgorithm::Md5, black_box("alice"), "example.org", "correct horse"))
    });
    g.finish();
}

criterion_group!(benches, channel_data_path, stun_path);
criterion_main!(benches);
