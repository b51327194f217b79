//! The client machines against the sans-IO server over a simulated network
//! with simulated NATs, time moved by hand (so RFC 8489's full 39.5 s
//! timers cost nothing): the retransmission schedule, the RFC 5780 verdict
//! and the classic RFC 3489 name for every kind of NAT, the TURN session
//! (challenge, stale nonce, SHA-256 and REST credentials, data both ways)
//! and the TURN probe's round trip and its failures.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use relay_core::client::data::{Received, parse_data};
use relay_core::client::nat::{Behavior, ClassicNat, NatDiscovery, NatReport, Outcome, Test};
use relay_core::client::stun::{BindingOutcome, BindingProbe, BindingRequest};
use relay_core::client::turn::{TurnProbe, TurnProbeConfig, TurnReport};
use relay_core::client::{
    ClientConfig, ClientError, Handled, Poll, Probe, Request, RetransmitPolicy, Success, TurnSession,
};
use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::policy::PeerPolicy;
use relay_core::server::{
    Client, ClientAction, PEER_HEADROOM, PEER_TAILROOM, PeerAction, RelayId, Server, ServerConfig, ServerParts,
};
use relay_core::wire::channel_data;
use relay_core::wire::integrity::{IntegrityAlgorithm, PasswordAlgorithm};

const A1P1: &str = "203.0.113.1:3478";
const A2P2: &str = "203.0.113.2:3479";
const RELAY: &str = "203.0.113.1:50000";
const PUBLIC_IP: &str = "198.51.100.1";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server(rfc5780: bool, policy: PeerPolicy) -> Server {
    let mut credentials = Credentials::new("example.org");
    credentials.add_user("alice", "wonderland").unwrap();
    credentials.add_rest_secret(b"north");
    let parts = ServerParts::new(credentials)
        .with_config(ServerConfig { software: Some("sim".into()), ..ServerConfig::default() })
        .with_nonces(NonceIssuer::new([2; 32], 600))
        .with_policy(policy);
    let mut s = Server::new(parts, Instant::now(), 1_800_000_000, 9);
    if rfc5780 {
        s.set_rfc5780(addr(A1P1), addr(A2P2)).unwrap();
    }
    s.add_relay(addr(RELAY));
    s
}

/// What sits between the client and the Internet.
#[derive(Clone, Copy, Debug)]
enum Middlebox {
    /// Nothing: the client has a public address.
    None,
    /// No translation, but only answers from where the client sent get in.
    Firewall,
    /// Every datagram is dropped.
    Blocked,
    /// A NAT with these behaviours.
    Nat { mapping: Behavior, filtering: Behavior, hairpin: bool },
}

struct Mapping {
    internal: SocketAddr,
    key: (Option<IpAddr>, Option<u16>),
    external: SocketAddr,
}

struct SimNat {
    kind: Middlebox,
    next_port: u16,
    maps: Vec<Mapping>,
    /// (external, destination) pairs seen leaving.
    sent: Vec<(SocketAddr, SocketAddr)>,
}

impl SimNat {
    fn new(kind: Middlebox) -> SimNat {
        SimNat { kind, next_port: 20000, maps: Vec::new(), sent: Vec::new() }
    }

    /// The source address a datagram from `internal` to `dst` leaves with.
    fn outbound(&mut self, internal: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        let ext = match self.kind {
            Middlebox::Blocked => return None,
            Middlebox::None | Middlebox::Firewall => internal,
            Middlebox::Nat { mapping, .. } => {
                let key = match mapping {
                    Behavior::EndpointIndependent => (None, None),
                    Behavior::AddressDependent => (Some(dst.ip()), None),
                    Behavior::AddressAndPortDependent => (Some(dst.ip()), Some(dst.port())),
                };
                match self.maps.iter().find(|m| m.internal == internal && m.key == key) {
                    Some(m) => m.external,
                    None => {
                        let external = SocketAddr::new(PUBLIC_IP.parse().unwrap(), self.next_port);
                        self.next_port += 1;
                        self.maps.push(Mapping { internal, key, external });
                        external
                    }
                }
            }
        };
        self.sent.push((ext, dst));
        Some(ext)
    }

    /// The internal address a datagram from `from` to `to` is let in to.
    fn inbound(&self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let (internal, filtering) = match self.kind {
            Middlebox::Blocked => return None,
            Middlebox::None => return Some(to),
            Middlebox::Firewall => (to, Behavior::AddressAndPortDependent),
            Middlebox::Nat { filtering, .. } => (self.maps.iter().find(|m| m.external == to)?.internal, filtering),
        };
        let permitted = match filtering {
            Behavior::EndpointIndependent => true,
            Behavior::AddressDependent => self.sent.iter().any(|&(e, d)| e == to && d.ip() == from.ip()),
            Behavior::AddressAndPortDependent => self.sent.iter().any(|&(e, d)| e == to && d == from),
        };
        permitted.then_some(internal)
    }
}

/// The client's sockets, the middlebox, the server: a datagram network.
struct Net {
    server: Server,
    nat: SimNat,
    local: Vec<SocketAddr>,
    inbox: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    now: Instant,
    sent_at: Vec<Duration>,
    t0: Instant,
}

impl Net {
    fn new(server: Server, kind: Middlebox, local: Vec<SocketAddr>) -> Net {
        let t0 = Instant::now();
        Net { server, nat: SimNat::new(kind), local, inbox: VecDeque::new(), now: t0, sent_at: Vec::new(), t0 }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if let Some(internal) = self.nat.inbound(from, to)
            && let Some(i) = self.local.iter().position(|&l| l == internal)
        {
            self.inbox.push_back((i, from, bytes));
        }
    }

    /// Sends `bytes` from local socket `socket` to `to`.
    fn send(&mut self, socket: usize, to: SocketAddr, bytes: &[u8]) {
        self.sent_at.push(self.now - self.t0);
        let Some(src) = self.nat.outbound(self.local[socket], to) else { return };
        if to.ip().to_string() == PUBLIC_IP {
            // Hairpin: back in through the NAT, if it does that.
            if let Middlebox::Nat { hairpin: true, .. } = self.nat.kind {
                self.deliver(src, to, bytes.to_vec());
            }
            return;
        }
        if to == addr(RELAY) {
            let mut buf = vec![0u8; PEER_HEADROOM + bytes.len() + PEER_TAILROOM];
            buf[PEER_HEADROOM..PEER_HEADROOM + bytes.len()].copy_from_slice(bytes);
            let payload = PEER_HEADROOM..PEER_HEADROOM + bytes.len();
            if let PeerAction::Forward { client, frame } =
                self.server.handle_peer(self.now, RelayId(0), src, &mut buf, payload)
            {
                self.deliver(client.local, client.remote, buf[frame].to_vec());
            }
            return;
        }
        if to.ip() != addr(A1P1).ip() && to.ip() != addr(A2P2).ip() {
            return;
        }
        let client = Client::udp(src, to);
        let mut out = vec![0u8; 1500];
        match self.server.handle_client(self.now, &client, bytes, &mut out) {
            ClientAction::Reply { len } => self.deliver(to, src, out[..len].to_vec()),
            ClientAction::ReplyFrom { local, to: dest, len } => self.deliver(local, dest, out[..len].to_vec()),
            ClientAction::Forward { peer, payload, .. } => {
                let data = bytes[payload].to_vec();
                self.deliver(addr(RELAY), peer, data);
            }
            // One relay address: never another allocation's.
            ClientAction::Deliver { .. } | ClientAction::None => {}
        }
    }

    /// Runs a probe to its end (bounded in steps).
    fn run(&mut self, p: &mut impl Probe) {
        let mut buf = vec![0u8; 2048];
        for _ in 0..10_000 {
            while let Some(t) = p.poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                self.send(t.socket, t.to, &bytes);
            }
            if let Some((s, from, bytes)) = self.inbox.pop_front() {
                p.handle_input(self.now, s, from, &bytes);
                continue;
            }
            if p.is_done() {
                return;
            }
            let Some(t) = p.poll_timeout() else { return };
            self.now = self.now.max(t);
            p.handle_timeout(self.now);
        }
        panic!("the probe did not finish");
    }
}

fn discover(kind: Middlebox, rfc5780: bool) -> (NatReport, Duration) {
    let local = match kind {
        Middlebox::Nat { .. } => vec![addr("10.0.0.2:5000"), addr("10.0.0.2:5001")],
        _ => vec![addr("198.51.100.50:5000"), addr("198.51.100.50:5001")],
    };
    let mut net = Net::new(server(rfc5780, PeerPolicy::new()), kind, local.clone());
    let mut d = NatDiscovery::new(addr(A1P1), [local[0], local[1]], RetransmitPolicy::default(), net.now, 77);
    net.run(&mut d);
    (d.report(), net.now - net.t0)
}

fn nat(mapping: Behavior, filtering: Behavior, hairpin: bool) -> Middlebox {
    Middlebox::Nat { mapping, filtering, hairpin }
}

use Behavior::{AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei};

#[test]
fn classic_names_and_rfc5780_behaviours() {
    let cases = [
        (Middlebox::None, ClassicNat::OpenInternet, Some(Ei), Some(Ei), None),
        (Middlebox::Firewall, ClassicNat::SymmetricUdpFirewall, Some(Ei), Some(Apd), None),
        (nat(Ei, Ei, true), ClassicNat::FullCone, Some(Ei), Some(Ei), Some(true)),
        (nat(Ei, Ad, false), ClassicNat::RestrictedCone, Some(Ei), Some(Ad), Some(false)),
        (nat(Ei, Apd, false), ClassicNat::PortRestrictedCone, Some(Ei), Some(Apd), Some(false)),
        (nat(Ad, Apd, false), ClassicNat::Symmetric, Some(Ad), Some(Apd), Some(false)),
        (nat(Apd, Apd, false), ClassicNat::Symmetric, Some(Apd), Some(Apd), Some(false)),
        (nat(Apd, Ei, true), ClassicNat::FullCone, Some(Apd), Some(Ei), Some(true)),
    ];
    for (kind, classic, mapping, filtering, hairpin) in cases {
        let (r, took) = discover(kind, true);
        assert_eq!(r.classic, Some(classic), "{kind:?}: {r:#?}");
        assert_eq!((r.mapping, r.filtering, r.hairpinning), (mapping, filtering, hairpin), "{kind:?}: {r:#?}");
        assert!(!r.udp_blocked);
        assert_eq!(r.other_address, Some(addr(A2P2)));
        assert_eq!(r.response_origin, Some(addr(A1P1)));
        assert_eq!(r.software.as_deref(), Some("sim"));
        assert!(r.notes.is_empty(), "{kind:?}: {:?}", r.notes);
        assert!(!r.alg);
        let natted = matches!(kind, Middlebox::Nat { .. });
        assert_eq!(r.behind_nat, Some(natted));
        if natted {
            assert_eq!(r.mapped.unwrap().ip().to_string(), PUBLIC_IP);
        }
        // Each test that gets no answer costs RFC 8489's 39.5 s.
        let silent = r.tests.iter().filter(|t| matches!(t.outcome, Outcome::NoAnswer { .. })).count() as u32;
        assert!(took >= Duration::from_millis(39_500) * silent, "{kind:?}: {took:?}");
        assert!(took < Duration::from_millis(39_500) * (silent + 1), "{kind:?}: {took:?}");
        for t in &r.tests {
            if let Outcome::NoAnswer { transmissions } = t.outcome {
                assert_eq!(transmissions, 7, "{:?}", t.test);
            }
        }
        // Filtering before mapping: no request to the other address
        // before both filtering tests are done.
        let first_other = r.tests.iter().position(|t| t.test == Test::OtherIp);
        let last_filter = r.tests.iter().rposition(|t| matches!(t.test, Test::ChangeIpAndPort | Test::ChangePort));
        if let (Some(o), Some(f)) = (first_other, last_filter) {
            assert!(o > f, "{:?}", r.tests);
        }
    }
}

#[test]
fn blocked_and_servers_without_rfc5780() {
    let (r, took) = discover(Middlebox::Blocked, true);
    assert_eq!(r.classic, Some(ClassicNat::Blocked));
    assert!(r.udp_blocked);
    assert_eq!((r.mapping, r.filtering, r.hairpinning, r.mapped), (None, None, None, None));
    assert_eq!(r.tests.len(), 1);
    assert_eq!(took, Duration::from_millis(39_500));

    // A plain STUN server: the mapped address, NAT or not, hairpinning; no
    // behaviour and no classic name.
    let (r, _) = discover(nat(Ei, Ei, true), false);
    assert_eq!(r.behind_nat, Some(true));
    assert_eq!((r.mapping, r.filtering, r.classic), (None, None, None));
    assert_eq!(r.hairpinning, Some(true));
    assert!(r.notes.iter().any(|n| n.contains("OTHER-ADDRESS")), "{:?}", r.notes);
    assert_eq!(r.tests.iter().map(|t| t.test).collect::<Vec<_>>(), [Test::Binding, Test::Hairpin]);
}

#[test]
fn binding_probe_retransmits_on_the_rfc8489_schedule() {
    // To an address nobody answers at.
    let mut net = Net::new(server(false, PeerPolicy::new()), Middlebox::None, vec![addr("198.51.100.50:5000")]);
    let mut p = BindingProbe::new(addr("203.0.113.77:3478"), BindingRequest::default(), Default::default(), net.now, 1);
    net.run(&mut p);
    assert_eq!(p.outcome(), Some(&BindingOutcome::Timeout { transmissions: 7 }));
    let ms: Vec<u128> = net.sent_at.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(net.now - net.t0, Duration::from_millis(39_500));

    // To the server: one request, one answer.
    let mut net = Net::new(server(true, PeerPolicy::new()), Middlebox::None, vec![addr("198.51.100.50:5000")]);
    let mut p = BindingProbe::new(addr(A1P1), BindingRequest::default(), Default::default(), net.now, 2);
    net.run(&mut p);
    let Some(BindingOutcome::Response { from, response, transmissions, .. }) = p.outcome() else { panic!() };
    assert_eq!((*from, *transmissions), (addr(A1P1), 1));
    assert_eq!(response.reflexive(), Some(addr("198.51.100.50:5000")));
    assert_eq!(response.other_address, Some(addr(A2P2)));
}

fn turn(password: &str, policy: PeerPolicy, discover_peer: bool) -> TurnReport {
    turn_behind(Middlebox::None, password, policy, discover_peer)
}

fn turn_behind(kind: Middlebox, password: &str, policy: PeerPolicy, discover_peer: bool) -> TurnReport {
    let local = match kind {
        Middlebox::Nat { .. } => vec![addr("10.0.0.2:40000"), addr("10.0.0.2:6000")],
        _ => vec![addr("192.0.2.10:40000"), addr("198.51.100.7:6000")],
    };
    let mut net = Net::new(server(false, policy), kind, local.clone());
    let config = TurnProbeConfig {
        server: addr(A1P1),
        username: "alice".into(),
        password: password.into(),
        peer: local[1],
        discover_peer,
        channel: 0x4000,
        echoes: 3,
        policy: RetransmitPolicy::default(),
    };
    let mut p = TurnProbe::new(config, net.now, 3);
    net.run(&mut p);
    assert!(p.is_done());
    p.report().clone()
}

#[test]
fn turn_probe_round_trip_and_failures() {
    let r = turn("wonderland", PeerPolicy::new(), false);
    assert!(r.ok(), "{r:#?}");
    assert_eq!(r.relayed, Some(addr(RELAY)));
    assert_eq!(r.peer_saw, Some(addr(RELAY)));
    assert_eq!(r.mapped, Some(addr("192.0.2.10:40000")));
    assert_eq!(r.realm.as_deref(), Some("example.org"));
    assert_eq!(r.echo_rtts.len(), 3);
    let names: Vec<_> = r.steps.iter().map(|s| (s.name, s.error.is_some())).collect();
    assert_eq!(
        names,
        [
            ("Allocate", true), // the 401 challenge
            ("Allocate", false),
            ("CreatePermission", false),
            ("ChannelBind", false),
            ("Refresh", false),
        ]
    );
    assert!(r.released);

    let r = turn("wrong", PeerPolicy::new(), false);
    assert!(!r.ok());
    assert!(r.error.as_deref().unwrap().contains("wrong user name or password"), "{r:#?}");
    assert!(r.relayed.is_none() && !r.released);

    // A peer the server's policy refuses: 403, and the allocation is
    // released all the same.
    let deny = PeerPolicy::with_lists(vec![], vec!["198.51.100.0/24".parse().unwrap()]);
    let r = turn("wonderland", deny, false);
    assert!(r.error.as_deref().unwrap().starts_with("CreatePermission: 403"), "{r:#?}");
    assert!(r.released && r.relayed.is_some());
}

#[test]
fn turn_probe_from_behind_a_nat_uses_the_peers_reflexive_address() {
    // A port-restricted cone: the peer's reflexive address is what the
    // relay can reach, once the peer's datagram to the relay opened the
    // NAT's filter.
    let r = turn_behind(nat(Ei, Apd, false), "wonderland", PeerPolicy::new(), true);
    assert!(r.ok(), "{r:#?}");
    assert_eq!(r.peer.unwrap().ip().to_string(), PUBLIC_IP);
    assert_eq!(r.peer_saw, Some(addr(RELAY)));
    assert_eq!(r.steps[0].name, "Binding (peer)");
    // Without discovery the private peer address is refused by policy.
    let r = turn_behind(nat(Ei, Apd, false), "wonderland", PeerPolicy::new(), false);
    assert!(r.error.as_deref().unwrap().starts_with("CreatePermission: 403"), "{r:#?}");
    // A symmetric NAT maps the peer anew towards the relay: the echoes
    // are lost, and the report says so.
    let r = turn_behind(nat(Apd, Apd, false), "wonderland", PeerPolicy::new(), true);
    assert!(!r.ok());
    assert_eq!((r.echoes_lost, r.echo_rtts.len(), r.released), (3, 0, true), "{r:#?}");
}

/// Runs one request of `s` from local socket `socket` to its end over
/// `net`, time moved by hand.
fn request(net: &mut Net, socket: usize, s: &mut TurnSession, req: Request) -> Result<Success, ClientError> {
    let first = s.start(req, net.now)?.to_vec();
    net.send(socket, addr(A1P1), &first);
    for _ in 0..100 {
        while let Some((_, _, msg)) = net.inbox.pop_front() {
            match s.handle(&msg, net.now) {
                Handled::Transmit(retry) => {
                    let retry = retry.to_vec();
                    net.send(socket, addr(A1P1), &retry);
                }
                Handled::Done(r) => return r,
                Handled::Ignored | Handled::Discarded(_) => {}
                Handled::Redirect { server, .. } => panic!("unexpected redirect to {server}"),
            }
        }
        match s.poll(net.now) {
            Poll::Transmit(again) => {
                let again = again.to_vec();
                net.send(socket, addr(A1P1), &again);
            }
            Poll::Wait(t) => net.now = t,
            Poll::Failed(e) => return Err(e),
            Poll::Idle => panic!("idle with a request in flight"),
        }
    }
    panic!("the request did not end");
}

fn session(credentials: relay_core::client::Credentials, algorithm: PasswordAlgorithm) -> TurnSession {
    let cfg = ClientConfig { password_algorithm: algorithm, ..ClientConfig::new(credentials) };
    TurnSession::new(cfg, 1_800_000_000, 11)
}

#[test]
fn turn_session_allocates_answers_stale_nonces_and_relays_both_ways() {
    let local = vec![addr("192.0.2.10:40000"), addr("198.51.100.7:6000")];
    let mut net = Net::new(server(false, PeerPolicy::new()), Middlebox::None, local.clone());
    let alice = relay_core::client::Credentials::long_term("alice", "wonderland");
    let mut s = session(alice.clone(), PasswordAlgorithm::Md5);
    let ok = request(&mut net, 0, &mut s, Request::Allocate { lifetime: None }).unwrap();
    assert_eq!((ok.relayed, ok.mapped), (Some(addr(RELAY)), Some(local[0])));
    assert_eq!(s.realm(), Some("example.org"), "learnt from the 401");
    assert_eq!(s.response_integrity(), Some(IntegrityAlgorithm::Sha1));
    request(&mut net, 0, &mut s, Request::CreatePermission { peers: vec![local[1]] }).unwrap();
    request(&mut net, 0, &mut s, Request::ChannelBind { channel: 0x4001, peer: local[1] }).unwrap();

    // ChannelData out to the peer, and the peer's answer back on the channel.
    let mut frame = [0u8; 64];
    let n = channel_data::encode(&mut frame, 0x4001, b"out", false).unwrap();
    net.send(0, addr(A1P1), &frame[..n]);
    assert_eq!(net.inbox.pop_front(), Some((1, addr(RELAY), b"out".to_vec())));
    net.send(1, addr(RELAY), b"back");
    let (sock, _, got) = net.inbox.pop_front().expect("relayed to the client");
    let Some(Received::Channel(0x4001, r)) = parse_data(&got) else { panic!("{got:?}") };
    assert_eq!((sock, &got[r]), (0, &b"back"[..]));

    // Ten minutes on the nonce has gone stale: 438, answered with the new one.
    let nonce = s.nonce().unwrap().to_owned();
    net.now += Duration::from_secs(601);
    assert!(request(&mut net, 0, &mut s, Request::Refresh { lifetime: 600 }).is_ok());
    assert_ne!(s.nonce().unwrap(), nonce);
    assert_eq!(request(&mut net, 0, &mut s, Request::Refresh { lifetime: 0 }).unwrap().lifetime, Some(0));

    // SHA-256 keys, and the responses sealed with them (a server of its
    // own: the one relay address is taken).
    let mut net = Net::new(server(false, PeerPolicy::new()), Middlebox::None, local);
    let mut s = session(alice, PasswordAlgorithm::Sha256);
    request(&mut net, 0, &mut s, Request::Allocate { lifetime: Some(120) }).unwrap();
    assert_eq!(s.response_integrity(), Some(IntegrityAlgorithm::Sha256));
    request(&mut net, 0, &mut s, Request::Refresh { lifetime: 0 }).unwrap();
}

#[test]
fn turn_session_rest_credentials_and_a_wrong_password() {
    let local = vec![addr("192.0.2.10:40000"), addr("192.0.2.10:40001")];
    let mut net = Net::new(server(false, PeerPolicy::new()), Middlebox::None, local);
    let mut s = session(relay_core::client::Credentials::rest("north", "bob"), PasswordAlgorithm::Md5);
    assert_eq!(s.username(), "1800086400:bob");
    request(&mut net, 0, &mut s, Request::Allocate { lifetime: None }).unwrap();
    request(&mut net, 0, &mut s, Request::Refresh { lifetime: 0 }).unwrap();

    let mut s = session(relay_core::client::Credentials::long_term("alice", "wrong"), PasswordAlgorithm::Md5);
    let e = request(&mut net, 1, &mut s, Request::Allocate { lifetime: None }).unwrap_err();
    assert_eq!(e.code(), Some(401), "{e}");
    // A silent server: Rc requests, then the transaction fails.
    let mut s = session(relay_core::client::Credentials::long_term("alice", "wonderland"), PasswordAlgorithm::Md5);
    let start = net.now;
    let first = s.start(Request::Allocate { lifetime: None }, net.now).unwrap().to_vec();
    assert!(!first.is_empty());
    let e = loop {
        match s.poll(net.now) {
            Poll::Wait(t) => net.now = t,
            Poll::Transmit(_) => {}
            Poll::Failed(e) => break e,
            Poll::Idle => panic!("idle"),
        }
    };
    assert!(matches!(e, ClientError::Timeout { tries: 7, .. }), "{e}");
    assert_eq!(net.now - start, Duration::from_millis(39_500));
}
