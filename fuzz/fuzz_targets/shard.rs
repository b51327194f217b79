//! A whole sans-IO shard fed arbitrary interleavings of client packets
//! (raw bytes, and well-formed authenticated requests so that the fuzzer
//! reaches allocations, permissions and channels), peer packets, closed
//! connections and clock ticks. After every step the shard's invariants
//! must hold: the 5-tuple index agrees with the table, relays belong to
//! their allocation, nothing outlives its lifetime, the gauges match.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::{
    Client, ClientAction, PEER_HEADROOM, PeerAction, PeerSegment, RelayId, Server, ServerConfig, ServerParts, Transport,
};
use relay_core::wire::attr::transport;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};

// The tests' quota book: limits per user and in total, double releases panic.
#[path = "../../relay-core/tests/support/quota_book.rs"]
mod quota_book;
use quota_book::TestQuotas;

const REALM: &str = "fuzz";

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

    fn bytes(&mut self, max: usize) -> &[u8] {
        let n = (self.byte() as usize).min(max).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn peer(k: u8) -> SocketAddr {
    match k % 7 {
        0 => SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 5000)),
        1 => SocketAddr::from((Ipv4Addr::new(198, 51, 100, 8), 5001)),
        2 => SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 5002)), // denied
        3 => SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 7), 5003)),
        // Another allocation's relay address (relay to relay), and two
        // own addresses that are not peers: a non-relay port, a listener.
        4 => SocketAddr::from((Ipv4Addr::new(203, 0, 113, 1), 50000 + u16::from(k >> 6))),
        5 => SocketAddr::from((Ipv4Addr::new(203, 0, 113, 1), 22)),
        _ => SocketAddr::from((Ipv4Addr::new(203, 0, 113, 1), 3478)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let t0 = Instant::now();
    let mut now = t0;
    let mut credentials = Credentials::new(REALM);
    credentials.add_user("u", "p").unwrap();
    let config = ServerConfig {
        max_permissions: 3,
        max_channels: 3,
        relay_quarantine: Duration::from_secs(5),
        bandwidth_limit: if data.first() == Some(&0xff) { 500 } else { 0 },
        // Fast path events too (check_invariants holds them to eligibility).
        fast_path: data.get(1).is_some_and(|b| b & 1 == 1),
        ..ServerConfig::default()
    };
    let parts = ServerParts::new(credentials)
        .with_config(config)
        .with_nonces(NonceIssuer::new([5; 32], 600))
        .with_quotas(Arc::new(TestQuotas::new(4, 2)));
    let mut server = Server::new(parts, t0, 1_800_000_000, 3);
    for port in 50000..50004 {
        server.add_relay(SocketAddr::from(([203, 0, 113, 1], port)));
    }
    server.add_relay("[2001:db8::1]:50000".parse().unwrap());
    // The process-wide set, as the I/O layer gives it: the relays and a listener.
    let mut own = relay_core::server::own::OwnAddresses::new();
    for port in 50000..50004 {
        own.add_relay(SocketAddr::from(([203, 0, 113, 1], port)), Ipv4Addr::new(203, 0, 113, 1).into());
    }
    own.add_relay("[2001:db8::1]:50000".parse().unwrap(), "2001:db8::1".parse().unwrap());
    own.add_listener("203.0.113.1:3478".parse().unwrap());
    server.set_own_addresses(Arc::new(own));
    let key = Key::long_term(PasswordAlgorithm::Md5, "u", REALM, "p").unwrap();
    let clients: Vec<Client> = (0..4u16)
        .map(|i| Client {
            transport: if i == 3 { Transport::Tcp } else { Transport::Udp },
            remote: SocketAddr::from(([192, 0, 2, 10], 40000 + i)),
            local: "203.0.113.1:3478".parse().unwrap(),
            conn: u32::from(i),
        })
        .collect();
    let mut nonces: Vec<Option<String>> = vec![None; clients.len()];
    let mut out = vec![0u8; 1500];
    let mut buf = vec![0u8; PEER_HEADROOM + 300];
    let mut tid = 0u32;

    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let k = (input.byte() as usize) % clients.len();
        let client = clients[k];
        match op % 7 {
            // Raw bytes from a client.
            0 => {
                let pkt = input.bytes(200).to_vec();
                let _ = server.handle_client(now, &client, &pkt, &mut out);
            }
            // A well-formed request, authenticated once a nonce is known.
            1 | 2 => {
                tid += 1;
                let mut t = [0u8; 12];
                t[..4].copy_from_slice(&tid.to_be_bytes());
                let sel = input.byte();
                let p = peer(input.byte());
                let number = 0x4000 + u16::from(input.byte() % 4);
                let lifetime = u32::from(input.byte()) * 8;
                let (method, attrs): (Method, Vec<Attribute<'_>>) = match sel % 6 {
                    0 => (Method::ALLOCATE, vec![Attribute::RequestedTransport(transport::UDP)]),
                    1 => (
                        Method::ALLOCATE,
                        vec![Attribute::RequestedTransport(transport::UDP), Attribute::AdditionalAddressFamily(2)],
                    ),
                    2 => (Method::CREATE_PERMISSION, vec![Attribute::XorPeerAddress(p)]),
                    3 => (Method::CHANNEL_BIND, vec![Attribute::ChannelNumber(number), Attribute::XorPeerAddress(p)]),
                    4 => (Method::REFRESH, vec![Attribute::Lifetime(lifetime)]),
                    _ => (Method::BINDING, vec![]),
                };
                let mut req = [0u8; 512];
                let mut b =
                    MessageBuilder::new(&mut req, MessageType::new(Class::Request, method), TransactionId(t)).unwrap();
                for a in &attrs {
                    b.add(a).unwrap();
                }
                if let Some(n) = &nonces[k] {
                    b.add(&Attribute::Username("u")).unwrap();
                    b.add(&Attribute::Realm(REALM)).unwrap();
                    b.add(&Attribute::Nonce(n)).unwrap();
                    b.add_message_integrity(key.as_bytes()).unwrap();
                }
                let n = b.finish();
                if let ClientAction::Reply { len } = server.handle_client(now, &client, &req[..n], &mut out) {
                    let m = Message::parse(&out[..len]).expect("the server sent an unparseable response");
                    if let Some(Ok(Attribute::Nonce(n))) =
                        m.get(AttributeType::NONCE).map(|a| a.decode(&m.transaction_id()))
                    {
                        nonces[k] = Some(n.to_owned());
                    }
                }
            }
            // ChannelData from a client.
            3 => {
                let payload = input.bytes(100).to_vec();
                let mut frame = vec![0u8; 4 + payload.len() + 3];
                let number = 0x4000 + u16::from(input.byte() % 4);
                let n = relay_core::wire::channel_data::encode(&mut frame, number, &payload, false).unwrap();
                match server.handle_client(now, &client, &frame[..n], &mut out) {
                    ClientAction::Forward { payload: r, .. } => {
                        assert!(r.end <= n, "forwarded range outside the packet")
                    }
                    // Another allocation of this shard: on as its peer data,
                    // behind headroom, as the I/O layer does.
                    ClientAction::Deliver { relay, from, payload: r } => {
                        assert!(r.end <= n, "delivered range outside the packet");
                        let range = PEER_HEADROOM..PEER_HEADROOM + r.len();
                        buf[range.clone()].copy_from_slice(&frame[r]);
                        if let PeerAction::Forward { frame, .. } = server.handle_peer(now, relay, from, &mut buf, range)
                        {
                            assert!(frame.end <= buf.len() && frame.start < PEER_HEADROOM, "frame outside the buffer");
                        }
                    }
                    _ => {}
                }
            }
            // A datagram from a peer on a relay.
            4 => {
                let relay = RelayId(u32::from(input.byte() % 5));
                let p = peer(input.byte());
                let len = input.byte() as usize % 256;
                let range = PEER_HEADROOM..PEER_HEADROOM + len;
                // Framed in place, or out of place as a coalesced (GRO)
                // segment after the first is.
                if input.byte() & 1 == 0 {
                    if let PeerAction::Forward { frame, .. } = server.handle_peer(now, relay, p, &mut buf, range) {
                        assert!(frame.end <= buf.len() && frame.start < PEER_HEADROOM, "frame outside the buffer");
                    }
                } else {
                    let mut head = [0u8; PEER_HEADROOM];
                    if let PeerSegment::Forward { head: h, pad, .. } =
                        server.handle_peer_segment(now, relay, p, len, &mut head)
                    {
                        assert!(h.end == PEER_HEADROOM && h.start < PEER_HEADROOM, "header outside its area");
                        assert!(pad <= 3, "more padding than a 4-byte boundary needs");
                    }
                }
            }
            // Time passes.
            5 => {
                now += Duration::from_secs(u64::from(input.byte()) * 5);
                server.handle_timeout(now);
            }
            // A stream connection closes.
            _ => server.handle_client_closed(now, &client),
        }
        while server.poll_event().is_some() {}
        if let Err(e) = server.check_invariants(now) {
            panic!("invariant broken: {e}");
        }
    }
});
