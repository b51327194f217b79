//! The relay fast path of the sans-IO server at 100,000 allocations, each
//! with one permission and one channel:
//!
//! - `client_channel_data`: ChannelData from a client → 5-tuple lookup →
//!   allocation → channel → peer, permission and bandwidth checks;
//! - `peer_to_client`: a peer datagram on a relay → allocation → permission
//!   → channel → ChannelData header written in place;
//! - and, printed once, the resident memory per allocation (growth of the
//!   process's resident set while the allocations are made, so table
//!   growth slack is included).
//!
//! Clients are visited in a shuffled order so that lookups miss the cache
//! the way a busy server's do (that mostly measures DRAM latency); the
//! `_hot_1k` variants cycle over 1,000 allocations, whose entries stay in
//! cache, to show the cost of the lookups themselves.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::{Client, ClientAction, PEER_HEADROOM, PeerAction, RelayId, Server, ServerConfig, ServerParts};
use relay_core::wire::attr::transport;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};

/// Resident memory in bytes (Linux `/proc/self/statm`), 0 elsewhere.
fn resident_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Allocations: 100,000 when benchmarking; a few thousand when `cargo test`
/// runs the bench once as a smoke test.
fn n() -> u32 {
    if std::env::args().any(|a| a == "--bench") { 100_000 } else { 2_000 }
}
const REALM: &str = "bench.example";

fn client(i: u32) -> Client {
    let ip = Ipv4Addr::from(0x0A00_0000 + i / 50_000 + 1);
    Client::udp(SocketAddr::from((ip, (10_000 + i % 50_000) as u16)), "192.0.2.1:3478".parse().unwrap())
}

fn peer(i: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0xC633_6400 + (i % 200)), 7000 + (i % 1000) as u16))
}

fn request(method: Method, tid: u32, auth: Option<(&str, &Key)>, attrs: &[Attribute<'_>], out: &mut [u8]) -> usize {
    let mut t = [0u8; 12];
    t[..4].copy_from_slice(&tid.to_be_bytes());
    let mut b = MessageBuilder::new(out, MessageType::new(Class::Request, method), TransactionId(t)).unwrap();
    for a in attrs {
        b.add(a).unwrap();
    }
    if let Some((nonce, key)) = auth {
        b.add(&Attribute::Username("bench")).unwrap();
        b.add(&Attribute::Realm(REALM)).unwrap();
        b.add(&Attribute::Nonce(nonce)).unwrap();
        b.add_message_integrity(key.as_bytes()).unwrap();
    }
    b.finish()
}

/// A server with `n()` allocations, each with a permission and channel 0x4000.
fn populated() -> (Server, Instant, isize) {
    let mut credentials = Credentials::new(REALM);
    credentials.add_user("bench", "password").unwrap();
    let now = Instant::now();
    // Every client of the benchmark shares two source addresses: no
    // reflection budget.
    let config = ServerConfig { sha256: false, unauthenticated_rate: 0, ..ServerConfig::default() };
    let parts = ServerParts::new(credentials).with_config(config).with_nonces(NonceIssuer::new([1; 32], 3600));
    let mut server = Server::new(parts, now, 1_800_000_000, 1);
    for i in 0..n() {
        let ip = Ipv4Addr::from(0xCB00_7100 + i / 60_000);
        server.add_relay(SocketAddr::from((ip, (1024 + i % 60_000) as u16)));
    }
    let key = Key::long_term(PasswordAlgorithm::Md5, "bench", REALM, "password").unwrap();
    let (mut req, mut out) = (vec![0u8; 512], vec![0u8; 1500]);
    let before = resident_bytes();
    for i in 0..n() {
        let c = client(i);
        let n = request(Method::ALLOCATE, 1, None, &[Attribute::RequestedTransport(transport::UDP)], &mut req);
        let ClientAction::Reply { len } = server.handle_client(now, &c, &req[..n], &mut out) else { panic!() };
        let m = Message::parse(&out[..len]).unwrap();
        let nonce = match m.get(AttributeType::NONCE).unwrap().decode(&m.transaction_id()).unwrap() {
            Attribute::Nonce(s) => s.to_owned(),
            _ => unreachable!(),
        };
        let steps: [(Method, Vec<Attribute<'_>>); 3] = [
            (Method::ALLOCATE, vec![Attribute::RequestedTransport(transport::UDP)]),
            (Method::CREATE_PERMISSION, vec![Attribute::XorPeerAddress(peer(i))]),
            (Method::CHANNEL_BIND, vec![Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(peer(i))]),
        ];
        for (k, (method, attrs)) in steps.iter().enumerate() {
            let n = request(*method, 2 + k as u32, Some((&nonce, &key)), attrs, &mut req);
            let ClientAction::Reply { len } = server.handle_client(now, &c, &req[..n], &mut out) else { panic!() };
            assert_eq!(Message::parse(&out[..len]).unwrap().class(), Class::Success, "{method:?} for client {i}");
        }
    }
    let bytes = resident_bytes() - before;
    assert_eq!(server.allocation_count(), n() as usize);
    (server, now, bytes)
}

/// A fixed pseudo-random visiting order.
fn order() -> Vec<u32> {
    let mut v: Vec<u32> = (0..n()).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn bench(c: &mut Criterion) {
    let (mut server, now, bytes) = populated();
    println!(
        "server: {} allocations (1 permission + 1 channel each): {} resident bytes per allocation",
        n(),
        bytes / n() as isize
    );
    let order = order();
    let mut g = c.benchmark_group("server_100k");
    let clients: Vec<Client> = (0..n()).map(client).collect();
    let mut out = vec![0u8; 1500];
    let cd = [0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4];
    let mut k = 0usize;
    g.bench_function("client_channel_data", |b| {
        b.iter(|| {
            let i = order[k % order.len()] as usize;
            k += 1;
            let a = server.handle_client(now, &clients[i], black_box(&cd), &mut out);
            debug_assert!(matches!(a, ClientAction::Forward { .. }));
            black_box(a)
        })
    });
    // The same path over 1,000 of the allocations: what a lookup costs when
    // the table's hot part is in cache, rather than DRAM latency.
    g.bench_function("client_channel_data_hot_1k", |b| {
        b.iter(|| {
            let i = order[k % 1000] as usize;
            k += 1;
            black_box(server.handle_client(now, &clients[i], black_box(&cd), &mut out))
        })
    });
    let relays: Vec<RelayId> = (0..n()).map(RelayId).collect();
    let peers: Vec<SocketAddr> = (0..n()).map(peer).collect();
    let mut buf = vec![0u8; PEER_HEADROOM + 160];
    g.bench_function("peer_to_client", |b| {
        b.iter(|| {
            let i = order[k % order.len()] as usize;
            k += 1;
            let a =
                server.handle_peer(now, relays[i], peers[i], black_box(&mut buf), PEER_HEADROOM..PEER_HEADROOM + 100);
            debug_assert!(matches!(a, PeerAction::Forward { .. }));
            black_box(a)
        })
    });
    g.bench_function("peer_to_client_hot_1k", |b| {
        b.iter(|| {
            let i = order[k % 1000] as usize;
            k += 1;
            let r = PEER_HEADROOM..PEER_HEADROOM + 100;
            black_box(server.handle_peer(now, relays[i], peers[i], black_box(&mut buf), r))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
