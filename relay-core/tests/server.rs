//! The sans-IO TURN server driven request by request, with time moved by
//! hand: every request's success and error paths, expiry, quotas, policy,
//! and the conversation Chromium's libwebrtc holds with a TURN server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::own::OwnAddresses;
use relay_core::server::policy::PeerPolicy;
use relay_core::server::stats::{AuthFailure, Direction, Drop, MethodLabel, Outcome};
use relay_core::server::{
    Client, ClientAction, Ending, Event, FastEntry, PEER_HEADROOM, PeerAction, PeerSegment, RelayId, Server,
    ServerConfig, ServerParts, Transport,
};
use relay_core::wire::attr::transport;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_core::wire::{
    Attribute, AttributeType, ChannelData, Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};

#[path = "support/quota_book.rs"]
mod quota_book;
use quota_book::TestQuotas;

const REALM: &str = "example.org";
const UNIX_T0: u64 = 1_800_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A server, a clock and one client, with helpers to talk TURN.
struct H {
    server: Server,
    t0: Instant,
    now: Instant,
    client: Client,
    user: String,
    key: Key,
    nonce: Option<String>,
    tid: u64,
    out: Vec<u8>,
    /// Answer 438 as clients do: take the fresh nonce and retry once.
    retry_stale: bool,
}

struct Setup {
    config: ServerConfig,
    policy: PeerPolicy,
    quotas: TestQuotas,
    relays: Vec<&'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            config: ServerConfig::default(),
            policy: PeerPolicy::new(),
            quotas: TestQuotas::new(0, 0),
            relays: vec!["203.0.113.1:50000", "203.0.113.1:50001", "203.0.113.1:50002"],
        }
    }
}

const PEER: &str = "198.51.100.7:6000";
const PEER2: &str = "198.51.100.8:6001";

impl H {
    fn new() -> H {
        H::with(Setup::default())
    }

    fn with(s: Setup) -> H {
        let mut credentials = Credentials::new(REALM);
        credentials.add_user("alice", "wonderland").unwrap();
        credentials.add_user("bob", "builder").unwrap();
        credentials.add_rest_secret(b"rest-secret");
        let t0 = Instant::now();
        let parts = ServerParts::new(credentials)
            .with_config(s.config)
            .with_nonces(NonceIssuer::new([7; 32], 600))
            .with_policy(s.policy)
            .with_quotas(Arc::new(s.quotas));
        let mut server = Server::new(parts, t0, UNIX_T0, 42);
        for r in s.relays {
            server.add_relay(addr(r));
        }
        H {
            server,
            t0,
            now: t0,
            client: Client::udp(addr("192.0.2.10:40000"), addr("203.0.113.1:3478")),
            user: "alice".into(),
            key: Key::long_term(PasswordAlgorithm::Md5, "alice", REALM, "wonderland").unwrap(),
            nonce: None,
            tid: 0,
            out: vec![0; 1500],
            retry_stale: true,
        }
    }

    /// The same user from another 5-tuple (nonces are per client address).
    fn move_to(&mut self, remote: &str) {
        self.client.remote = addr(remote);
        self.nonce = None;
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.server.handle_timeout(self.now);
        self.server.check_invariants(self.now).unwrap();
    }

    fn next_tid(&mut self) -> TransactionId {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.tid.to_be_bytes());
        TransactionId(t)
    }

    /// Builds a request; `auth` adds USERNAME/REALM/NONCE/MESSAGE-INTEGRITY.
    fn build(&mut self, method: Method, tid: TransactionId, auth: bool, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, method), tid).unwrap();
        for a in attrs {
            b.add(a).unwrap();
        }
        if auth {
            let nonce = self.nonce.clone().expect("no nonce yet");
            b.add(&Attribute::Username(&self.user)).unwrap();
            b.add(&Attribute::Realm(REALM)).unwrap();
            b.add(&Attribute::Nonce(&nonce)).unwrap();
            b.add_message_integrity(self.key.as_bytes()).unwrap();
        }
        b.add_fingerprint().unwrap();
        let n = b.finish();
        buf.truncate(n);
        buf
    }

    fn send(&mut self, packet: &[u8]) -> ClientAction {
        let client = self.client;
        let action = self.server.handle_client(self.now, &client, packet, &mut self.out);
        self.server.check_invariants(self.now).unwrap();
        action
    }

    /// Sends and returns the reply's bytes (panics if there is none).
    fn roundtrip(&mut self, packet: &[u8]) -> Vec<u8> {
        match self.send(packet) {
            ClientAction::Reply { len } => self.out[..len].to_vec(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// Sends an authenticated request, fetching a nonce first if needed.
    fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        if self.nonce.is_none() {
            self.challenge(method);
        }
        let tid = self.next_tid();
        let req = self.build(method, tid, true, attrs);
        let resp = self.roundtrip(&req);
        if self.retry_stale && error_code(&resp) == Some(438) {
            self.nonce = Some(nonce_of(&resp));
            let tid = self.next_tid();
            let req = self.build(method, tid, true, attrs);
            return self.roundtrip(&req);
        }
        resp
    }

    /// Sends an unauthenticated request, expects 401, keeps the nonce.
    fn challenge(&mut self, method: Method) -> Vec<u8> {
        let tid = self.next_tid();
        let req = self.build(method, tid, false, &[Attribute::RequestedTransport(transport::UDP)]);
        let resp = self.roundtrip(&req);
        assert_eq!(error_code(&resp), Some(401));
        self.nonce = Some(nonce_of(&resp));
        resp
    }

    fn allocate(&mut self) -> SocketAddr {
        let resp = self.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
        assert_eq!(class(&resp), Class::Success, "allocate failed: {:?}", error_code(&resp));
        relayed(&resp)[0]
    }

    fn permit(&mut self, peer: &str) -> Vec<u8> {
        self.request(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(addr(peer))])
    }

    fn bind(&mut self, number: u16, peer: &str) -> Vec<u8> {
        self.request(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(number), Attribute::XorPeerAddress(addr(peer))])
    }

    fn refresh(&mut self, lifetime: u32) -> Vec<u8> {
        self.request(Method::REFRESH, &[Attribute::Lifetime(lifetime)])
    }

    /// A datagram from `peer` to relay 0 carrying `payload`; returns the
    /// bytes that would go to the client.
    fn peer_sends(&mut self, relay: RelayId, peer: &str, payload: &[u8]) -> Option<(Client, Vec<u8>)> {
        let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + 4];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
        match self.server.handle_peer(self.now, relay, addr(peer), &mut buf, range) {
            PeerAction::Forward { client, frame } => Some((client, buf[frame].to_vec())),
            PeerAction::None => None,
        }
    }

    /// As [`H::peer_sends`], through `handle_peer_segment` (no headroom):
    /// the frame assembled from the header, the payload and the padding.
    fn peer_segment(&mut self, relay: RelayId, peer: &str, payload: &[u8]) -> Option<(Client, Vec<u8>)> {
        let mut head = [0xeeu8; PEER_HEADROOM];
        match self.server.handle_peer_segment(self.now, relay, addr(peer), payload.len(), &mut head) {
            PeerSegment::Forward { client, head: h, pad } => {
                let mut frame = head[h].to_vec();
                frame.extend_from_slice(payload);
                frame.resize(frame.len() + usize::from(pad), 0);
                Some((client, frame))
            }
            PeerSegment::None => None,
        }
    }

    fn stats_requests(&self, m: MethodLabel, o: Outcome) -> u64 {
        self.server.stats().requests_of(m, o)
    }
}

fn nonce_of(resp: &[u8]) -> String {
    let m = Message::parse(resp).unwrap();
    match m.get(AttributeType::NONCE).map(|a| a.decode(&m.transaction_id())) {
        Some(Ok(Attribute::Nonce(n))) => n.to_owned(),
        _ => panic!("error response without NONCE"),
    }
}

fn class(resp: &[u8]) -> Class {
    Message::parse(resp).unwrap().class()
}

fn error_code(resp: &[u8]) -> Option<u16> {
    let m = Message::parse(resp).unwrap();
    match m.get(AttributeType::ERROR_CODE)?.decode(&m.transaction_id()) {
        Ok(Attribute::ErrorCode(e)) => Some(e.code),
        _ => None,
    }
}

fn attrs(resp: &[u8]) -> Vec<Attribute<'_>> {
    let m = Message::parse(resp).unwrap();
    let tid = m.transaction_id();
    m.attributes().map(|a| a.decode(&tid).unwrap()).collect()
}

fn relayed(resp: &[u8]) -> Vec<SocketAddr> {
    attrs(resp)
        .into_iter()
        .filter_map(|a| match a {
            Attribute::XorRelayedAddress(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn lifetime(resp: &[u8]) -> Option<u32> {
    attrs(resp).into_iter().find_map(|a| match a {
        Attribute::Lifetime(s) => Some(s),
        _ => None,
    })
}

fn relay_of(h: &H, relayed: SocketAddr) -> RelayId {
    (0..16).map(RelayId).find(|&r| h.server.relay_addr(r) == Some(relayed)).unwrap()
}

#[test]
fn binding_answers_anyone_with_both_mapped_addresses() {
    let mut h = H::new();
    let tid = h.next_tid();
    let req = h.build(Method::BINDING, tid, false, &[]);
    let resp = h.roundtrip(&req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.message_type(), MessageType::new(Class::Success, Method::BINDING));
    assert_eq!(m.transaction_id(), tid);
    let a = attrs(&resp);
    assert!(a.contains(&Attribute::XorMappedAddress(h.client.remote)));
    assert!(a.contains(&Attribute::MappedAddress(h.client.remote)));
    // The request carried FINGERPRINT, so the response does.
    m.verify_fingerprint().unwrap();
}

/// The exchange as Chromium's libwebrtc runs it (p2p/base/turn_port.cc).
#[test]
fn libwebrtc_conversation() {
    let mut h = H::new();
    // 1. Unauthenticated Allocate → 401 with REALM and NONCE.
    let resp = h.challenge(Method::ALLOCATE);
    let a = attrs(&resp);
    assert!(a.contains(&Attribute::Realm(REALM)));
    assert!(Message::parse(&resp).unwrap().integrity_offset().is_none());
    // 2. Authenticated Allocate → relayed address, lifetime, mapped address.
    let tid = h.next_tid();
    let req = h.build(Method::ALLOCATE, tid, true, &[Attribute::RequestedTransport(transport::UDP)]);
    let resp = h.roundtrip(&req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    m.verify_message_integrity(h.key.as_bytes()).unwrap();
    let relay_addr = relayed(&resp)[0];
    assert_eq!(lifetime(&resp), Some(600));
    assert!(attrs(&resp).contains(&Attribute::XorMappedAddress(h.client.remote)));
    let relay = relay_of(&h, relay_addr);
    assert_eq!(h.server.poll_event(), Some(Event::RelayOpened { relay, dont_fragment: false }));
    // 3. CreatePermission.
    assert_eq!(class(&h.permit(PEER)), Class::Success);
    // 4. ChannelBind.
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    // 5. ChannelData client → peer: forwarded as a range of the input.
    let mut cd = vec![0u8; 4 + 5];
    relay_core::wire::channel_data::encode(&mut cd, 0x4000, b"hello", false).unwrap();
    match h.send(&cd) {
        ClientAction::Forward { relay: r, peer, payload } => {
            assert_eq!((r, peer), (relay, addr(PEER)));
            assert_eq!(&cd[payload], b"hello");
        }
        other => panic!("{other:?}"),
    }
    // 6. Peer → client: ChannelData framed in place.
    let (to, frame) = h.peer_sends(relay, PEER, b"world").unwrap();
    assert_eq!(to, h.client);
    let cd = ChannelData::parse(&frame).unwrap();
    assert_eq!((cd.channel, cd.payload), (0x4000, &b"world"[..]));
    // 7. Refresh with LIFETIME 0 deletes the allocation.
    let resp = h.refresh(0);
    assert_eq!(class(&resp), Class::Success);
    assert_eq!(lifetime(&resp), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_event(), Some(Event::RelayReleased { relay }));
    assert_eq!(h.send(&frame), ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::NoAllocation), 1);
    let s = h.server.stats();
    assert_eq!((s.allocations_created, s.allocations_deleted, s.allocations_active), (1, 1, 0));
    assert_eq!(s.relayed_packets, [[1, 0, 0], [1, 0, 0]]);
    assert_eq!(s.relayed_bytes, [[5, 0, 0], [5, 0, 0]]);
}

#[test]
fn allocate_retransmission_gets_the_same_answer_and_a_new_request_gets_437() {
    let mut h = H::new();
    h.challenge(Method::ALLOCATE);
    let tid = h.next_tid();
    let req = h.build(Method::ALLOCATE, tid, true, &[Attribute::RequestedTransport(transport::UDP)]);
    let first = h.roundtrip(&req);
    let again = h.roundtrip(&req);
    assert_eq!(relayed(&first), relayed(&again));
    assert_eq!(class(&again), Class::Success);
    assert_eq!(h.server.allocation_count(), 1);
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&resp), Some(437));
    Message::parse(&resp).unwrap().verify_message_integrity(h.key.as_bytes()).unwrap();
}

#[test]
fn allocate_transport_checks() {
    let mut h = H::new();
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::TCP)]);
    assert_eq!(error_code(&resp), Some(442));
    let resp = h.request(Method::ALLOCATE, &[]);
    assert_eq!(error_code(&resp), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn wrong_password_and_unknown_user_look_the_same() {
    let mut h = H::new();
    h.challenge(Method::ALLOCATE);
    h.key = Key::long_term(PasswordAlgorithm::Md5, "alice", REALM, "wrong").unwrap();
    let wrong_pw = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    h.user = "mallory".into();
    let unknown = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&wrong_pw), Some(401));
    assert_eq!(error_code(&unknown), Some(401));
    let shape = |r: &[u8]| attrs(r).iter().map(|a| a.attribute_type()).collect::<Vec<_>>();
    assert_eq!(shape(&wrong_pw), shape(&unknown));
    assert_eq!(wrong_pw.len(), unknown.len());
    assert_eq!(h.server.stats().auth_failures_of(AuthFailure::BadIntegrity), 1);
    assert_eq!(h.server.stats().auth_failures_of(AuthFailure::UnknownUser), 1);
}

#[test]
fn missing_credentials_attributes_is_400_and_wrong_realm_is_401() {
    let mut h = H::new();
    h.challenge(Method::ALLOCATE);
    // MESSAGE-INTEGRITY without USERNAME.
    let tid = h.next_tid();
    let mut buf = vec![0u8; 200];
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::ALLOCATE), tid).unwrap();
    b.add(&Attribute::RequestedTransport(transport::UDP)).unwrap();
    b.add(&Attribute::Realm(REALM)).unwrap();
    b.add(&Attribute::Nonce(h.nonce.as_deref().unwrap())).unwrap();
    b.add_message_integrity(h.key.as_bytes()).unwrap();
    let n = b.finish();
    assert_eq!(error_code(&h.roundtrip(&buf[..n])), Some(400));
    // A realm that is not ours.
    let mut buf = vec![0u8; 200];
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::ALLOCATE), tid).unwrap();
    b.add(&Attribute::RequestedTransport(transport::UDP)).unwrap();
    b.add(&Attribute::Username("alice")).unwrap();
    b.add(&Attribute::Realm("evil.example")).unwrap();
    b.add(&Attribute::Nonce(h.nonce.as_deref().unwrap())).unwrap();
    b.add_message_integrity(h.key.as_bytes()).unwrap();
    let n = b.finish();
    assert_eq!(error_code(&h.roundtrip(&buf[..n])), Some(401));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = H::new();
    h.retry_stale = false;
    h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP), Attribute::Lifetime(3600)]);
    h.advance(601);
    let old = h.nonce.clone();
    let resp = h.refresh(600);
    assert_eq!(error_code(&resp), Some(438));
    let Some(Attribute::Nonce(fresh)) = attrs(&resp).into_iter().find(|a| matches!(a, Attribute::Nonce(_))) else {
        panic!("438 without NONCE")
    };
    assert_ne!(Some(fresh.to_owned()), old);
    h.nonce = Some(fresh.to_owned());
    assert_eq!(class(&h.refresh(600)), Class::Success);
    // A nonce issued to another client address is not accepted either.
    h.client.remote = addr("192.0.2.11:40000");
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&resp), Some(438));
}

#[test]
fn another_username_on_the_allocation_is_441() {
    let mut h = H::new();
    h.allocate();
    h.user = "bob".into();
    h.key = Key::long_term(PasswordAlgorithm::Md5, "bob", REALM, "builder").unwrap();
    assert_eq!(error_code(&h.refresh(600)), Some(441));
    assert_eq!(h.server.stats().auth_failures_of(AuthFailure::WrongUsername), 1);
}

#[test]
fn sha256_password_algorithm_negotiation() {
    let mut h = H::new();
    let resp = h.challenge(Method::ALLOCATE);
    let nonce = h.nonce.clone().unwrap();
    assert!(nonce.starts_with("obMatJos2"), "nonce {nonce} lacks the security feature cookie");
    let m = Message::parse(&resp).unwrap();
    let offered = m.get(AttributeType::PASSWORD_ALGORITHMS).expect("PASSWORD-ALGORITHMS").value.to_vec();
    let key = Key::long_term(PasswordAlgorithm::Sha256, "alice", REALM, "wonderland").unwrap();
    let build = |h: &mut H, offered: &[u8], algorithm: u16| {
        let tid = h.next_tid();
        let mut buf = vec![0u8; 400];
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::ALLOCATE), tid).unwrap();
        b.add(&Attribute::RequestedTransport(transport::UDP)).unwrap();
        b.add(&Attribute::Username("alice")).unwrap();
        b.add(&Attribute::Realm(REALM)).unwrap();
        b.add(&Attribute::Nonce(&nonce)).unwrap();
        b.add_raw(AttributeType::PASSWORD_ALGORITHMS, offered).unwrap();
        b.add_raw(AttributeType::PASSWORD_ALGORITHM, &[(algorithm >> 8) as u8, algorithm as u8, 0, 0]).unwrap();
        b.add_message_integrity_sha256(key.as_bytes()).unwrap();
        let n = b.finish();
        buf.truncate(n);
        buf
    };
    // A downgraded PASSWORD-ALGORITHMS list is refused.
    let req = build(&mut h, &offered[4..], 2);
    assert_eq!(error_code(&h.roundtrip(&req)), Some(400));
    let req = build(&mut h, &offered, 2);
    let resp = h.roundtrip(&req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success, "{:?}", error_code(&resp));
    m.verify_message_integrity_sha256(key.as_bytes()).unwrap();
    assert!(m.integrity_offset().is_none());
}

#[test]
fn rest_api_credentials_with_rotation_and_expiry() {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let mut h = H::new();
    let username = format!("{}:carol", UNIX_T0 + 3600);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"rest-secret").unwrap();
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    h.user = username.clone();
    h.key = Key::long_term(PasswordAlgorithm::Md5, &username, REALM, &password).unwrap();
    h.allocate();
    // Expired REST username: 401.
    let mut h = H::new();
    let username = format!("{}:carol", UNIX_T0 - 1);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"rest-secret").unwrap();
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    h.user = username.clone();
    h.key = Key::long_term(PasswordAlgorithm::Md5, &username, REALM, &password).unwrap();
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&resp), Some(401));
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = H::new();
    let tid = h.next_tid();
    let mut buf = vec![0u8; 100];
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::BINDING), tid).unwrap();
    b.add_raw(AttributeType(0x0031), &[1, 2, 3, 4]).unwrap();
    b.add_raw(AttributeType(0x8031), &[1, 2, 3, 4]).unwrap(); // optional: ignored
    let n = b.finish();
    let resp = h.roundtrip(&buf[..n]);
    assert_eq!(error_code(&resp), Some(420));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.get(AttributeType::UNKNOWN_ATTRIBUTES).unwrap().value, &[0x00, 0x31]);
}

#[test]
fn unknown_method_is_400_and_indications_are_never_answered() {
    let mut h = H::new();
    let tid = h.next_tid();
    let req = h.build(Method::new(0x0ff).unwrap(), tid, false, &[]);
    assert_eq!(error_code(&h.roundtrip(&req)), Some(400));
    let mut buf = vec![0u8; 100];
    let b = MessageBuilder::new(&mut buf, MessageType::new(Class::Indication, Method::BINDING), tid).unwrap();
    let n = b.finish();
    assert_eq!(h.send(&buf[..n]), ClientAction::None);
    // Responses sent to the server are dropped.
    let b = MessageBuilder::new(&mut buf, MessageType::new(Class::Success, Method::BINDING), tid).unwrap();
    let n = b.finish();
    assert_eq!(h.send(&buf[..n]), ClientAction::None);
    // Garbage, truncated messages and a bad FINGERPRINT are dropped.
    assert_eq!(h.send(&[0xff; 30]), ClientAction::None);
    assert_eq!(h.send(&req[..req.len() - 4]), ClientAction::None);
    let mut bad = req.clone();
    let l = bad.len();
    bad[l - 1] ^= 1;
    assert_eq!(h.send(&bad), ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::BadFingerprint), 1);
}

#[test]
fn peer_policy_is_enforced_on_permissions_and_channels() {
    let mut h = H::new();
    h.allocate();
    for denied in ["127.0.0.1:1", "10.1.2.3:1", "192.168.1.1:1", "169.254.1.1:1", "224.0.0.1:1", "203.0.113.1:9"] {
        assert_eq!(error_code(&h.permit(denied)), Some(403), "{denied}");
    }
    assert_eq!(error_code(&h.bind(0x4001, "172.16.0.1:5")), Some(403));
    // All or nothing: one denied address fails the whole request.
    let resp = h.request(
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(addr(PEER)), Attribute::XorPeerAddress(addr("10.0.0.1:1"))],
    );
    assert_eq!(error_code(&resp), Some(403));
    assert!(h.peer_sends(RelayId(0), PEER, b"x").is_none());
    // An IPv6 peer on an IPv4-only allocation: 443.
    assert_eq!(error_code(&h.permit("[2001:db8::1]:5")), Some(443));

    // The operator may allow loopback peers.
    let mut h = H::with(Setup {
        policy: PeerPolicy::with_lists(vec!["127.0.0.0/8".parse().unwrap()], vec![]),
        ..Setup::default()
    });
    h.allocate();
    assert_eq!(class(&h.permit("127.0.0.1:5000")), Class::Success);
    assert_eq!(error_code(&h.permit("10.0.0.1:5000")), Some(403));
}

#[test]
fn send_and_data_indications() {
    let mut h = H::new();
    let relayed_addr = h.allocate();
    let relay = relay_of(&h, relayed_addr);
    let send = send_to;
    // No permission: silently dropped.
    let (_, action) = send(&mut h, PEER, b"early");
    assert_eq!(action, ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::NoPermission), 1);
    h.permit(PEER);
    let (buf, action) = send(&mut h, PEER, b"hello peer");
    let ClientAction::Forward { relay: r, peer, payload } = action else { panic!("{action:?}") };
    assert_eq!((r, peer, &buf[payload]), (relay, addr(PEER), &b"hello peer"[..]));
    // From the peer, without a channel: a Data indication.
    let (_, frame) = h.peer_sends(relay, PEER, b"odd size").unwrap();
    let m = Message::parse(&frame).unwrap();
    assert_eq!(m.message_type(), MessageType::new(Class::Indication, Method::DATA));
    let a = attrs(&frame);
    assert!(a.contains(&Attribute::XorPeerAddress(addr(PEER))));
    assert!(a.contains(&Attribute::Data(b"odd size")));
    let (_, frame) = h.peer_sends(relay, PEER, b"abc").unwrap();
    assert!(attrs(&frame).contains(&Attribute::Data(b"abc")));
    // Another peer IP has no permission.
    assert!(h.peer_sends(relay, PEER2, b"x").is_none());
    // The same IP on another port does (permissions are by IP).
    assert!(h.peer_sends(relay, "198.51.100.7:9999", b"x").is_some());
}

/// A coalesced (GRO) segment has no headroom: framed out of place, it is
/// byte for byte what the in-place framing makes, and is checked and
/// counted the same.
#[test]
fn a_segment_without_headroom_is_framed_as_in_place() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut h = H::new();
        h.client = Client { transport, conn: 3, ..h.client };
        let relayed_addr = h.allocate();
        let relay = relay_of(&h, relayed_addr);
        // No permission: dropped by both, counted by both.
        assert!(h.peer_segment(relay, PEER, b"x").is_none());
        assert_eq!(h.server.stats().drops_of(Drop::NoPermission), 1);
        h.permit(PEER);
        // A Data indication (no channel): equal but for the random
        // transaction id.
        for payload in [&b"odd size"[..], b"abcd", b"", &[7u8; 1200]] {
            let (c1, mut a) = h.peer_sends(relay, PEER, payload).unwrap();
            let (c2, mut b) = h.peer_segment(relay, PEER, payload).unwrap();
            assert_eq!(c1, c2);
            a[8..20].fill(0);
            b[8..20].fill(0);
            assert_eq!(a, b, "{transport:?} {}", payload.len());
        }
        h.bind(0x4001, PEER);
        for payload in [&b"12345"[..], b"abcd", &[9u8; 1199]] {
            let (_, a) = h.peer_sends(relay, PEER, payload).unwrap();
            let (_, b) = h.peer_segment(relay, PEER, payload).unwrap();
            assert_eq!(a, b, "{transport:?} {}", payload.len());
            assert_eq!(&b[..2], &[0x40, 0x01]);
        }
        let relayed = h.server.stats().relayed_packets_of(Direction::ToClient);
        assert_eq!(relayed, 14, "every framed datagram counted once");
    }
}

/// The table remembers the last client it found (the datagrams of a
/// coalesced receive share one): an allocation that ends is forgotten,
/// and a new one in its slot serves only its own client.
#[test]
fn a_deleted_allocation_is_not_found_through_the_last_lookup() {
    let mut h = H::new();
    h.allocate();
    h.bind(0x4000, PEER);
    let mut cd = vec![0u8; 8];
    relay_core::wire::channel_data::encode(&mut cd, 0x4000, b"ping", false).unwrap();
    assert!(matches!(h.send(&cd), ClientAction::Forward { peer, .. } if peer == addr(PEER)));
    assert_eq!(lifetime(&h.refresh(0)), Some(0));
    let a = h.client;
    h.client = Client { remote: addr("192.0.2.99:5555"), ..a };
    h.allocate();
    h.bind(0x4000, PEER2);
    h.client = a;
    assert_eq!(h.send(&cd), ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::NoAllocation), 1);
    h.client = Client { remote: addr("192.0.2.99:5555"), ..a };
    assert!(matches!(h.send(&cd), ClientAction::Forward { peer, .. } if peer == addr(PEER2)));
    h.client = a;
    assert_eq!(h.send(&cd), ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::NoAllocation), 2);
}

#[test]
fn channel_bind_rules() {
    let mut h = H::new();
    let relayed_addr = h.allocate();
    let relay = relay_of(&h, relayed_addr);
    assert_eq!(error_code(&h.bind(0x3fff, PEER)), Some(400));
    assert_eq!(error_code(&h.bind(0x7fff, PEER)), Some(400));
    assert_eq!(error_code(&h.bind(0x8000, PEER)), Some(400));
    let resp = h.request(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000)]);
    assert_eq!(error_code(&resp), Some(400));
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    // Re-binding the same pair refreshes it.
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    // The number to another peer, or the peer to another number: 400.
    assert_eq!(error_code(&h.bind(0x4000, PEER2)), Some(400));
    assert_eq!(error_code(&h.bind(0x4001, PEER)), Some(400));
    assert_eq!(class(&h.bind(0x4001, PEER2)), Class::Success);
    // The binding installed a permission.
    assert!(h.peer_sends(relay, PEER2, b"x").is_some());
    assert_eq!(h.server.stats().channels_active, 2);

    // Let 0x4000 expire (keep the allocation and PEER2's channel alive).
    h.advance(300);
    h.refresh(600);
    h.bind(0x4001, PEER2);
    h.advance(301);
    h.refresh(600);
    h.bind(0x4001, PEER2);
    assert_eq!(h.server.stats().channels_active, 1);
    // Within the 5-minute quarantine the number stays with its old peer.
    let peer3 = "198.51.100.9:7000";
    assert_eq!(error_code(&h.bind(0x4000, peer3)), Some(400));
    assert_eq!(class(&h.bind(0x4002, peer3)), Class::Success);
    h.advance(200);
    h.refresh(600);
    h.bind(0x4001, PEER2);
    h.bind(0x4002, peer3);
    h.advance(101);
    assert_eq!(class(&h.bind(0x4000, "198.51.100.10:7000")), Class::Success);
}

#[test]
fn permissions_channels_and_allocations_expire() {
    let mut h = H::new();
    let relayed_addr = h.allocate();
    let relay = relay_of(&h, relayed_addr);
    h.bind(0x4000, PEER);
    h.permit(PEER2);
    assert!(h.peer_sends(relay, PEER2, b"x").is_some());
    h.advance(299);
    assert!(h.peer_sends(relay, PEER2, b"x").is_some());
    h.advance(1);
    assert!(h.peer_sends(relay, PEER2, b"x").is_none(), "permission outlived 300 s");
    assert_eq!(h.server.stats().permissions_active, 0);
    // The channel (600 s) lives on, but its permission (300 s) expired too.
    let mut cd = vec![0u8; 8];
    relay_core::wire::channel_data::encode(&mut cd, 0x4000, b"ping", false).unwrap();
    assert_eq!(h.send(&cd), ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::NoPermission), 2);
    h.permit(PEER);
    assert!(matches!(h.send(&cd), ClientAction::Forward { .. }));
    assert_eq!(lifetime(&h.refresh(600)), Some(600));
    h.advance(300);
    assert_eq!(h.send(&cd), ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::NoChannel), 1);
    assert_eq!(h.server.stats().channels_active, 0);
    // The allocation: 600 s after the last Refresh.
    h.advance(299);
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(1);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert_eq!(h.server.stats().allocations_active, 0);
    assert!(h.peer_sends(relay, PEER, b"x").is_none());
}

#[test]
fn refresh_extends_and_lifetimes_are_capped() {
    let mut h = H::with(Setup {
        config: ServerConfig { max_lifetime: Duration::from_secs(1200), ..ServerConfig::default() },
        ..Setup::default()
    });
    let resp =
        h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP), Attribute::Lifetime(100_000)]);
    assert_eq!(lifetime(&resp), Some(1200));
    assert_eq!(lifetime(&h.refresh(10)), Some(600));
    h.advance(599);
    assert_eq!(lifetime(&h.refresh(900)), Some(900));
    h.advance(899);
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(1);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(error_code(&h.refresh(600)), Some(437));
}

#[test]
fn quotas_per_user_and_in_total() {
    let mut h = H::with(Setup { quotas: TestQuotas::new(2, 1), ..Setup::default() });
    let alloc = |h: &mut H| h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    let as_bob = |h: &mut H| {
        h.user = "bob".into();
        h.key = Key::long_term(PasswordAlgorithm::Md5, "bob", REALM, "builder").unwrap();
    };
    h.allocate();
    h.move_to("192.0.2.10:40001");
    assert_eq!(error_code(&alloc(&mut h)), Some(486), "alice's second allocation");
    as_bob(&mut h);
    h.allocate();
    h.move_to("192.0.2.10:40002");
    assert_eq!(error_code(&alloc(&mut h)), Some(508), "total of 2 reached");
    // Deleting bob's allocation gives his quota and the total back.
    h.move_to("192.0.2.10:40001");
    assert_eq!(class(&h.refresh(0)), Class::Success);
    h.move_to("192.0.2.10:40002");
    h.allocate();
    assert_eq!(
        h.stats_requests(MethodLabel::Allocate, Outcome::Error(relay_core::server::StunError::AllocationQuotaReached)),
        1
    );
}

#[test]
fn total_quota_and_relay_exhaustion_are_508() {
    let mut h = H::with(Setup { quotas: TestQuotas::new(1, 0), ..Setup::default() });
    h.allocate();
    h.move_to("192.0.2.10:40001");
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&resp), Some(508));

    let mut h = H::with(Setup { relays: vec!["203.0.113.1:50000"], ..Setup::default() });
    h.allocate();
    h.move_to("192.0.2.10:40001");
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&resp), Some(508));
    assert_eq!(
        h.stats_requests(MethodLabel::Allocate, Outcome::Error(relay_core::server::StunError::InsufficientCapacity)),
        1
    );
}

#[test]
fn address_families() {
    let mut h = H::new();
    let resp = h.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(transport::UDP), Attribute::RequestedAddressFamily(2)],
    );
    assert_eq!(error_code(&resp), Some(440));
    let resp = h.request(
        Method::ALLOCATE,
        &[
            Attribute::RequestedTransport(transport::UDP),
            Attribute::RequestedAddressFamily(1),
            Attribute::AdditionalAddressFamily(2),
        ],
    );
    assert_eq!(error_code(&resp), Some(400));

    let mut h = H::with(Setup { relays: vec!["203.0.113.1:50000", "[2001:db8::1]:50000"], ..Setup::default() });
    let resp = h.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(transport::UDP), Attribute::AdditionalAddressFamily(2)],
    );
    assert_eq!(class(&resp), Class::Success);
    assert_eq!(relayed(&resp), vec![addr("203.0.113.1:50000"), addr("[2001:db8::1]:50000")]);
    assert_eq!(class(&h.permit("[2001:db8:5::7]:5")), Class::Success);
    assert_eq!(class(&h.permit(PEER)), Class::Success);
    let v6 = relay_of(&h, addr("[2001:db8::1]:50000"));
    assert!(h.peer_sends(v6, "[2001:db8:5::7]:5", b"v6 data").is_some());

    // Asking for an additional family the server lacks still allocates IPv4,
    // with ADDRESS-ERROR-CODE 440.
    let mut h = H::new();
    let resp = h.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(transport::UDP), Attribute::AdditionalAddressFamily(2)],
    );
    assert_eq!(class(&resp), Class::Success);
    assert!(attrs(&resp).iter().any(|a| matches!(a, Attribute::AddressErrorCode(2, e) if e.code == 440)));
}

#[test]
fn even_port_and_reservation_token() {
    let mut h = H::with(Setup {
        relays: vec!["203.0.113.1:50001", "203.0.113.1:50002", "203.0.113.1:50003"],
        ..Setup::default()
    });
    let resp = h.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(transport::UDP), Attribute::EvenPort(true), Attribute::DontFragment],
    );
    assert_eq!(relayed(&resp), vec![addr("203.0.113.1:50002")]);
    let token = *attrs(&resp)
        .iter()
        .find_map(|a| match a {
            Attribute::ReservationToken(t) => Some(*t),
            _ => None,
        })
        .expect("RESERVATION-TOKEN");
    let relay = relay_of(&h, addr("203.0.113.1:50002"));
    assert_eq!(h.server.poll_event(), Some(Event::RelayOpened { relay, dont_fragment: true }));
    // Token together with EVEN-PORT: 400.
    h.move_to("192.0.2.10:40001");
    let resp = h.request(
        Method::ALLOCATE,
        &[
            Attribute::RequestedTransport(transport::UDP),
            Attribute::ReservationToken(&token),
            Attribute::EvenPort(false),
        ],
    );
    assert_eq!(error_code(&resp), Some(400));
    let resp = h.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(transport::UDP), Attribute::ReservationToken(&token)],
    );
    assert_eq!(relayed(&resp), vec![addr("203.0.113.1:50003")]);
    // A token used once (or unknown) is 508.
    h.move_to("192.0.2.10:40002");
    let resp = h.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(transport::UDP), Attribute::ReservationToken(&token)],
    );
    assert_eq!(error_code(&resp), Some(508));
}

#[test]
fn stream_clients_get_padded_channel_data_and_lose_allocations_on_close() {
    let mut h = H::new();
    h.client = Client { transport: Transport::Tcp, conn: 9, ..h.client };
    let relayed_addr = h.allocate();
    let relay = relay_of(&h, relayed_addr);
    h.bind(0x4000, PEER);
    let (to, frame) = h.peer_sends(relay, PEER, b"12345").unwrap();
    assert_eq!(to.conn, 9);
    assert_eq!(frame.len(), 12);
    assert_eq!(&frame[..4], &[0x40, 0x00, 0x00, 0x05]);
    assert_eq!(&frame[9..], &[0, 0, 0]);
    let client = h.client;
    h.server.handle_client_closed(h.now, &client);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_deleted, 1);
}

/// Two stream connections naming one 5-tuple (PROXY headers naming one
/// client; relay-io refuses the second, this is the core's own line): the
/// allocation is the connection's that made it. The other cannot relay
/// through it, refresh it, allocate over it, or end it by closing.
#[test]
fn a_stream_allocation_belongs_to_its_connection_not_its_5_tuple() {
    let mut h = H::new();
    h.client = Client { transport: Transport::Tcp, conn: 9, ..h.client };
    h.allocate();
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    let (owner, other) = (h.client, Client { conn: 10, ..h.client });
    h.client = other;
    assert!(!h.server.has_allocation(&other), "the other connection holds no allocation");
    let no_allocation = h.server.stats().drops_of(Drop::NoAllocation);
    assert_eq!(h.send(&channel_data(0x4000, b"not yours")), ClientAction::None);
    assert_eq!(send_to(&mut h, PEER, b"not yours").1, ClientAction::None);
    assert_eq!(h.server.stats().drops_of(Drop::NoAllocation), no_allocation + 2);
    assert_eq!(error_code(&h.refresh(600)), Some(437), "a Refresh of another connection's allocation");
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&resp), Some(437), "an Allocate over a held 5-tuple");
    h.server.handle_client_closed(h.now, &other);
    assert_eq!((h.server.allocation_count(), h.server.stats().allocations_deleted), (1, 0));
    // Its own connection still relays through it, and ends it.
    h.client = owner;
    assert!(h.server.has_allocation(&owner));
    assert!(matches!(h.send(&channel_data(0x4000, b"mine")), ClientAction::Forward { .. }));
    h.server.handle_client_closed(h.now, &owner);
    assert_eq!((h.server.allocation_count(), h.server.stats().allocations_deleted), (0, 1));
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut h = H::with(Setup {
        config: ServerConfig { bandwidth_limit: 1000, bandwidth_burst: 1000, ..ServerConfig::default() },
        ..Setup::default()
    });
    let relayed_addr = h.allocate();
    let relay = relay_of(&h, relayed_addr);
    h.permit(PEER);
    let big = [0u8; 400];
    let sent = (0..5).filter(|_| h.peer_sends(relay, PEER, &big).is_some()).count();
    assert_eq!(sent, 2);
    assert_eq!(h.server.stats().drops_of(Drop::Bandwidth), 3);
    h.advance(1);
    assert!(h.peer_sends(relay, PEER, &big).is_some());
}

#[test]
fn timers_wake_the_io_layer_only_while_there_is_something_to_expire() {
    let mut h = H::new();
    assert_eq!(h.server.next_timeout(), None);
    h.allocate();
    let t = h.server.next_timeout().unwrap();
    assert!(t > h.now && t <= h.now + Duration::from_secs(1));
    h.refresh(0);
    h.advance(700);
    let _ = h.t0;
    assert_eq!(h.server.next_timeout(), None);
}

#[test]
fn no_panic_on_truncations_of_valid_traffic() {
    let mut h = H::new();
    h.allocate();
    h.permit(PEER);
    let reqs = [h.build(Method::REFRESH, TransactionId([1; 12]), true, &[Attribute::Lifetime(300)])];
    for req in &reqs {
        for cut in 0..req.len() {
            let _ = h.send(&req[..cut]);
        }
    }
    for cut in 0..8 {
        let _ = h.send(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4][..cut]);
    }
    let _ = IpAddr::from([0, 0, 0, 0]);
}

#[test]
fn software_is_configurable() {
    let mut h = H::with(Setup {
        config: ServerConfig { software: Some("turn-relay test".into()), ..ServerConfig::default() },
        ..Setup::default()
    });
    let tid = h.next_tid();
    let req = h.build(Method::BINDING, tid, false, &[]);
    let resp = h.roundtrip(&req);
    assert!(attrs(&resp).contains(&Attribute::Software("turn-relay test")));
    let mut h = H::new();
    let req = h.build(Method::BINDING, tid, false, &[]);
    let resp = h.roundtrip(&req);
    assert!(!attrs(&resp).iter().any(|a| matches!(a, Attribute::Software(_))));
}

#[test]
fn answers_to_unauthenticated_requests_are_budgeted_per_source() {
    let config = ServerConfig { unauthenticated_rate: 2, unauthenticated_burst: 4, ..ServerConfig::default() };
    let mut h = H::with(Setup { config, ..Setup::default() });
    let binding = |h: &mut H| {
        let tid = h.next_tid();
        let req = h.build(Method::BINDING, tid, false, &[]);
        h.send(&req)
    };
    let answered = (0..10).filter(|_| binding(&mut h) != ClientAction::None).count();
    assert_eq!(answered, 4, "a flood from one source gets its burst, no more");
    assert_eq!(h.server.stats().drops_of(Drop::RateLimited), 6);
    // Another source has its own budget (401 challenges count too).
    h.move_to("192.0.2.99:5000");
    assert!(matches!(binding(&mut h), ClientAction::Reply { .. }));
    h.challenge(Method::ALLOCATE);
    // Time refills the first source at `rate` per second.
    h.move_to("192.0.2.10:40000");
    h.advance(1);
    let answered = (0..10).filter(|_| binding(&mut h) != ClientAction::None).count();
    assert_eq!(answered, 2);
    // Authenticated requests are not limited: the client proved itself.
    h.advance(10);
    h.allocate();
    for _ in 0..20 {
        assert_eq!(class(&h.refresh(600)), Class::Success);
    }
    // Streams cannot be spoofed: no budget.
    h.client = Client { transport: Transport::Tcp, conn: 3, ..h.client };
    let answered = (0..20).filter(|_| binding(&mut h) != ClientAction::None).count();
    assert_eq!(answered, 20);
}

#[test]
fn rest_users_count_against_one_quota_whatever_their_credential() {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let mut h = H::with(Setup { quotas: TestQuotas::new(0, 1), ..Setup::default() });
    let as_rest = |h: &mut H, expiry: u64| {
        let username = format!("{expiry}:carol");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"rest-secret").unwrap();
        mac.update(username.as_bytes());
        let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        h.key = Key::long_term(PasswordAlgorithm::Md5, &username, REALM, &password).unwrap();
        h.user = username;
    };
    as_rest(&mut h, UNIX_T0 + 3600);
    h.allocate();
    // A fresh credential for the same user, from another 5-tuple: the
    // per-user limit of one still applies.
    h.move_to("192.0.2.10:40001");
    as_rest(&mut h, UNIX_T0 + 7200);
    let resp = h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(error_code(&resp), Some(486));
}

/// A Send indication from the harness's client to `peer`: the message and
/// the server's action.
fn send_to(h: &mut H, peer: &str, data: &[u8]) -> (Vec<u8>, ClientAction) {
    let tid = h.next_tid();
    let mut buf = vec![0u8; 200];
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Indication, Method::SEND), tid).unwrap();
    b.add(&Attribute::XorPeerAddress(addr(peer))).unwrap();
    b.add(&Attribute::Data(data)).unwrap();
    let n = b.finish();
    buf.truncate(n);
    let action = h.send(&buf);
    (buf, action)
}

#[test]
fn own_addresses_relay_to_relay_and_the_hosts_other_addresses() {
    // The process-wide set as relay-io builds it: this shard's relays, a
    // relay of another shard (50009), a wildcard listener, and another
    // address of the host (198.51.100.99) that is neither.
    let mut own = OwnAddresses::new();
    for port in [50000, 50001, 50002, 50009] {
        own.add_relay(addr(&format!("203.0.113.1:{port}")), "203.0.113.1".parse().unwrap());
    }
    own.add_listener(addr("0.0.0.0:3478"));
    own.add_ip("198.51.100.99".parse().unwrap());
    let mut h = H::new();
    h.server.set_own_addresses(Arc::new(own));
    let mine = h.allocate();
    // Another allocation of this shard, and one of another shard.
    assert_eq!(class(&h.permit("203.0.113.1:50001")), Class::Success);
    assert_eq!(class(&h.bind(0x4001, "203.0.113.1:50009")), Class::Success);
    // Not relay addresses: another port of an own IP, a listener, an
    // address of the host the server was not configured with.
    for denied in ["203.0.113.1:22", "203.0.113.1:3478", "198.51.100.99:53", "198.51.100.99:3478"] {
        assert_eq!(error_code(&h.permit(denied)), Some(403), "{denied}");
    }
    // The permission for 203.0.113.1 (by IP) does not open its other
    // ports to Send indications.
    assert_eq!(send_to(&mut h, "203.0.113.1:3478", b"loop").1, ClientAction::None);
    assert_eq!(send_to(&mut h, "203.0.113.1:22", b"ssh").1, ClientAction::None);
    // To this shard's relay: handed over in-process, from our relayed address.
    match send_to(&mut h, "203.0.113.1:50001", b"hi").1 {
        ClientAction::Deliver { from, .. } => assert_eq!(from, mine),
        other => panic!("{other:?}"),
    }
    // To another shard's: out through the kernel to its (bound) address.
    match send_to(&mut h, "203.0.113.1:50009", b"hi").1 {
        ClientAction::Forward { peer, .. } => assert_eq!(peer, addr("203.0.113.1:50009")),
        other => panic!("{other:?}"),
    }
    assert_eq!((h.server.stats().relayed_in_shard, h.server.stats().relayed_to_own), (1, 1));
    // Data from an own IP that is not a relay address is dropped even with
    // a permission for the IP.
    let relay = relay_of(&h, mine);
    assert!(h.peer_sends(relay, "203.0.113.1:22", b"x").is_none());
    assert!(h.peer_sends(relay, "203.0.113.1:50009", b"x").is_some());
}

/// A harness whose shard has a kernel fast path attached, `config` aside.
fn fast_h(config: ServerConfig, relays: Vec<&'static str>) -> H {
    H::with(Setup { config: ServerConfig { fast_path: true, ..config }, relays, ..Setup::default() })
}

/// The events queued so far.
fn events(h: &mut H) -> Vec<Event> {
    std::iter::from_fn(|| h.server.poll_event()).collect()
}

/// The fast-path events queued so far (the relay events dropped).
fn fast_events(h: &mut H) -> Vec<Event> {
    events(h).into_iter().filter(|e| matches!(e, Event::FastPathInstall(_) | Event::FastPathRemove(_))).collect()
}

/// The kernel entry of the harness's client for `channel` to `peer`.
fn entry(h: &H, relayed_addr: SocketAddr, channel: u16, peer: &str) -> FastEntry {
    FastEntry { client: h.client, channel, relay: relay_of(h, relayed_addr), peer: addr(peer), peer_is_relay: false }
}

#[test]
fn fast_path_installs_a_bound_channel_once() {
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    let mine = h.allocate();
    assert_eq!(class(&h.permit(PEER)), Class::Success);
    assert_eq!(fast_events(&mut h), vec![], "a permission alone is no channel");
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    assert_eq!(fast_events(&mut h), vec![Event::FastPathInstall(entry(&h, mine, 0x4000, PEER))]);
    // A re-bind, or a permission refreshed: the kernel entry has no expiry.
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    assert_eq!(class(&h.permit(PEER)), Class::Success);
    h.advance(200);
    assert_eq!(fast_events(&mut h), vec![]);
    // A refused bind changes nothing.
    assert_eq!(error_code(&h.bind(0x4000, PEER2)), Some(400));
    assert_eq!(fast_events(&mut h), vec![]);
}

#[test]
fn fast_path_follows_permission_and_channel_expiry() {
    // Permissions 300 s, channels 600 s: the permission expires first.
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    let mine = h.allocate();
    h.bind(0x4000, PEER);
    let e = entry(&h, mine, 0x4000, PEER);
    assert_eq!(fast_events(&mut h), vec![Event::FastPathInstall(e)]);
    h.advance(299);
    assert_eq!(fast_events(&mut h), vec![]);
    h.advance(1);
    assert_eq!(fast_events(&mut h), vec![Event::FastPathRemove(e)], "the permission expired");
    // The permission coming back puts the channel back on the fast path.
    assert_eq!(class(&h.permit(PEER)), Class::Success);
    assert_eq!(fast_events(&mut h), vec![Event::FastPathInstall(e)]);
    // Keep the allocation and the permission alive past the channel (600 s).
    assert_eq!(lifetime(&h.refresh(600)), Some(600));
    h.advance(290);
    h.permit(PEER);
    h.advance(9);
    assert_eq!(fast_events(&mut h), vec![]);
    h.advance(1);
    assert_eq!(fast_events(&mut h), vec![Event::FastPathRemove(e)], "the channel expired");
    // Channel traffic is refused in-process too, and nothing comes back
    // once the channel has left quarantine.
    h.advance(400);
    assert_eq!(fast_events(&mut h), vec![]);
}

#[test]
fn fast_path_entries_go_before_the_relays_when_an_allocation_ends() {
    // Refresh with LIFETIME 0: a Remove for every installed channel, then
    // the relay goes back.
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    let mine = h.allocate();
    let relay = relay_of(&h, mine);
    h.bind(0x4000, PEER);
    h.bind(0x4001, PEER2);
    let (e0, e1) = (entry(&h, mine, 0x4000, PEER), entry(&h, mine, 0x4001, PEER2));
    assert_eq!(
        events(&mut h),
        vec![
            Event::RelayOpened { relay, dont_fragment: false },
            Event::FastPathInstall(e0),
            Event::FastPathInstall(e1)
        ]
    );
    assert_eq!(lifetime(&h.refresh(0)), Some(0));
    assert_eq!(
        events(&mut h),
        vec![Event::FastPathRemove(e0), Event::FastPathRemove(e1), Event::RelayReleased { relay }]
    );

    // Expiry of the allocation (600 s), its channel and permission live on.
    let long = Duration::from_secs(900);
    let config = ServerConfig { permission_lifetime: long, channel_lifetime: long, ..ServerConfig::default() };
    let mut h = fast_h(config, Setup::default().relays);
    let mine = h.allocate();
    let relay = relay_of(&h, mine);
    h.bind(0x4000, PEER);
    let e = entry(&h, mine, 0x4000, PEER);
    h.advance(599);
    assert_eq!(events(&mut h), vec![Event::RelayOpened { relay, dont_fragment: false }, Event::FastPathInstall(e)]);
    h.advance(1);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(events(&mut h), vec![Event::FastPathRemove(e), Event::RelayReleased { relay }]);
}

#[test]
fn fast_path_stays_off_where_the_kernel_cannot_do_what_the_shard_does() {
    let bind_all = |h: &mut H| {
        h.allocate();
        assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
        assert_eq!(class(&h.permit(PEER2)), Class::Success);
        assert_eq!(class(&h.bind(0x4001, PEER2)), Class::Success);
        fast_events(h)
    };
    // The fast path off.
    let mut h = H::new();
    assert_eq!(bind_all(&mut h), vec![]);
    // A bandwidth cap: only the in-process path holds it.
    let capped = ServerConfig { bandwidth_limit: 10_000, bandwidth_burst: 10_000, ..ServerConfig::default() };
    let mut h = fast_h(capped, Setup::default().relays);
    assert_eq!(bind_all(&mut h), vec![]);
    // A stream client.
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    h.client = Client { transport: Transport::Tcp, conn: 4, ..h.client };
    assert_eq!(bind_all(&mut h), vec![]);
    let client = h.client;
    h.server.handle_client_closed(h.now, &client);
    assert_eq!(fast_events(&mut h), vec![]);
}

#[test]
fn fast_path_takes_relay_to_relay_where_the_relay_is_bound_as_advertised() {
    // This shard's relays (50000-50002), another shard's at its own
    // address (50009) and one of another shard behind a 1:1 NAT
    // (advertised 192.0.2.200:50010, bound 10.1.1.1:50010).
    let mut own = OwnAddresses::new();
    for port in [50000, 50001, 50002, 50009] {
        own.add_relay(addr(&format!("203.0.113.1:{port}")), "203.0.113.1".parse().unwrap());
    }
    own.add_relay(addr("10.1.1.1:50010"), "192.0.2.200".parse().unwrap());
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    h.server.set_own_addresses(Arc::new(own));
    let mine = h.allocate();
    assert_eq!(class(&h.bind(0x4000, "203.0.113.1:50001")), Class::Success);
    assert_eq!(
        fast_events(&mut h),
        vec![Event::FastPathInstall(FastEntry { peer_is_relay: true, ..entry(&h, mine, 0x4000, "203.0.113.1:50001") })],
        "this shard's relay: the kernel relays to its client, or leaves it to the shard"
    );
    assert_eq!(class(&h.bind(0x4001, "192.0.2.200:50010")), Class::Success);
    assert_eq!(fast_events(&mut h), vec![], "sent to the bound address, not the one named");
    assert_eq!(class(&h.bind(0x4002, "203.0.113.1:50009")), Class::Success);
    assert_eq!(
        fast_events(&mut h),
        vec![Event::FastPathInstall(FastEntry { peer_is_relay: true, ..entry(&h, mine, 0x4002, "203.0.113.1:50009") })]
    );
}

#[test]
fn fast_path_names_the_relay_of_the_peers_family() {
    let mut h = fast_h(ServerConfig::default(), vec!["203.0.113.1:50000", "[2001:db8::1]:50000"]);
    let resp = h.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(transport::UDP), Attribute::AdditionalAddressFamily(2)],
    );
    let (v4, v6) = (relayed(&resp)[0], relayed(&resp)[1]);
    assert_eq!(class(&h.bind(0x4000, "[2001:db8:5::7]:5")), Class::Success);
    assert_eq!(class(&h.bind(0x4001, PEER)), Class::Success);
    assert_eq!(
        fast_events(&mut h),
        vec![
            Event::FastPathInstall(entry(&h, v6, 0x4000, "[2001:db8:5::7]:5")),
            Event::FastPathInstall(entry(&h, v4, 0x4001, PEER))
        ]
    );
}

#[test]
fn fast_path_counts_come_back_as_relayed_udp() {
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    let mine = h.allocate();
    let relay = relay_of(&h, mine);
    h.bind(0x4000, PEER);
    // One datagram each way in-process, payload bytes counted.
    let mut cd = vec![0u8; 4 + 5];
    relay_core::wire::channel_data::encode(&mut cd, 0x4000, b"hello", false).unwrap();
    assert!(matches!(h.send(&cd), ClientAction::Forward { .. }));
    assert!(h.peer_sends(relay, PEER, b"world!").is_some());
    h.server.credit_fast_path((10, 1000), (20, 3000));
    let s = h.server.stats();
    assert_eq!(s.relayed_packets, [[11, 0, 0], [21, 0, 0]]);
    assert_eq!(s.relayed_bytes, [[1005, 0, 0], [3006, 0, 0]]);
}

/// The harness's login as `user` (alice or bob), from another 5-tuple.
fn login_as(h: &mut H, user: &str, password: &str, remote: &str) {
    h.move_to(remote);
    h.user = user.into();
    h.key = Key::long_term(PasswordAlgorithm::Md5, user, REALM, password).unwrap();
}

/// ChannelData on `channel` with `payload`, as a client sends it.
fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut cd = vec![0u8; 4 + payload.len()];
    relay_core::wire::channel_data::encode(&mut cd, channel, payload, false).unwrap();
    cd
}

#[test]
fn admin_snapshot_reports_each_allocation_and_its_traffic() {
    let mut h = H::new();
    let alice_client = h.client;
    let mine = h.allocate();
    let relay = relay_of(&h, mine);
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    for _ in 0..3 {
        assert!(matches!(h.send(&channel_data(0x4000, b"hello")), ClientAction::Forward { .. }));
    }
    assert!(h.peer_sends(relay, PEER, b"world!").is_some());
    assert!(h.peer_sends(relay, PEER, b"world!").is_some());
    // Through the segment path too (a coalesced receive): counted the same.
    assert!(h.peer_segment(relay, PEER, b"xy").is_some());
    // Refused traffic is not the allocation's: a peer without permission.
    assert!(h.peer_sends(relay, PEER2, b"nope").is_none());
    login_as(&mut h, "bob", "builder", "192.0.2.11:40001");
    let bobs = h.allocate();
    h.advance(10);

    let mut all = h.server.allocations(h.now, None);
    all.sort_by(|a, b| a.username.cmp(&b.username));
    assert_eq!(all.len(), 2);
    let a = &all[0];
    assert_eq!((a.id, a.relays.as_slice(), a.username.as_str()), (mine, &[mine][..], "alice"));
    assert_eq!((a.transport, a.client, a.server), (Transport::Udp, alice_client.remote, alice_client.local));
    assert_eq!((a.age, a.lifetime_left), (Duration::from_secs(10), Duration::from_secs(590)));
    assert_eq!((a.permissions, a.channels), (1, 1));
    assert_eq!((a.traffic.to_peer.packets, a.traffic.to_peer.bytes), (3, 15));
    assert_eq!((a.traffic.to_client.packets, a.traffic.to_client.bytes), (3, 14));
    let b = &all[1];
    assert_eq!((b.id, b.username.as_str(), b.client), (bobs, "bob", addr("192.0.2.11:40001")));
    assert_eq!((b.permissions, b.channels, b.traffic), (0, 0, Default::default()));
    // The shard's counters agree with the sum.
    let s = h.server.stats();
    assert_eq!((s.relayed_packets_of(Direction::ToPeer), s.relayed_packets_of(Direction::ToClient)), (3, 3));

    let only_bob = h.server.allocations(h.now, Some("bob"));
    assert_eq!(only_bob.len(), 1);
    assert_eq!(only_bob[0].id, bobs);
    assert!(h.server.allocations(h.now, Some("carol")).is_empty());
    assert!(h.server.allocations(h.now, Some("ali")).is_empty(), "a user is matched whole");
    // An expired permission and channel are not counted as live.
    h.advance(300);
    let a = h.server.allocations(h.now, Some("alice")).remove(0);
    assert_eq!((a.permissions, a.channels, a.lifetime_left), (0, 1, Duration::from_secs(290)));
}

#[test]
fn admin_ends_one_allocation_by_relay_address_or_all_of_a_user() {
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    let first = h.client;
    let a1 = h.allocate();
    assert_eq!(class(&h.bind(0x4000, PEER)), Class::Success);
    let installed = entry(&h, a1, 0x4000, PEER);
    assert_eq!(fast_events(&mut h), vec![Event::FastPathInstall(installed)]);
    let relay1 = relay_of(&h, a1);
    h.move_to("192.0.2.10:40002");
    let a2 = h.allocate();
    login_as(&mut h, "bob", "builder", "192.0.2.11:40001");
    let b1 = h.allocate();
    events(&mut h);

    // An address no allocation holds (a listener, a free relay): nothing.
    assert_eq!(h.server.end(h.now, &Ending::Allocation(addr("203.0.113.1:3478"))), 0);
    assert_eq!(h.server.end(h.now, &Ending::User("carol".into())), 0);
    assert_eq!(h.server.allocation_count(), 3);

    // By relay address: as a Refresh 0 — the kernel entry goes before
    // the relay, which rests in quarantine; counted as deleted.
    assert_eq!(h.server.end(h.now, &Ending::Allocation(a1)), 1);
    assert_eq!(events(&mut h), vec![Event::FastPathRemove(installed), Event::RelayReleased { relay: relay1 }]);
    h.server.check_invariants(h.now).unwrap();
    assert_eq!(h.server.stats().allocations_deleted, 1);
    assert_eq!(h.server.relays_free(), (0, 1));
    assert!(h.peer_sends(relay1, PEER, b"late").is_none(), "the relay no longer relays");
    assert_eq!(h.server.stats().drops_of(Drop::NoAllocation), 1);
    assert_eq!(h.server.end(h.now, &Ending::Allocation(a1)), 0, "ended once");
    // Its client learns of it from its next request.
    h.client = first;
    h.user = "alice".into();
    h.key = Key::long_term(PasswordAlgorithm::Md5, "alice", REALM, "wonderland").unwrap();
    h.nonce = None;
    assert_eq!(error_code(&h.refresh(600)), Some(437));

    // Every allocation of a user, the others untouched.
    assert_eq!(h.server.end(h.now, &Ending::User("alice".into())), 1);
    let left: Vec<SocketAddr> = h.server.allocations(h.now, None).iter().map(|a| a.id).collect();
    assert_eq!(left, [b1]);
    assert!(!left.contains(&a2));
    assert_eq!(h.server.end(h.now, &Ending::User("bob".into())), 1);
    assert_eq!(h.server.allocation_count(), 0);
    let s = h.server.stats();
    assert_eq!((s.allocations_deleted, s.allocations_active), (3, 0));
    h.server.check_invariants(h.now).unwrap();
}

#[test]
fn fast_path_counts_are_credited_to_their_allocation() {
    let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
    let mine = h.allocate();
    h.bind(0x4000, PEER);
    let e = entry(&h, mine, 0x4000, PEER);
    assert!(matches!(h.send(&channel_data(0x4000, b"hello")), ClientAction::Forward { .. }));
    h.server.credit_fast_entry(&e, (10, 1000), (20, 3000));
    let a = h.server.allocations(h.now, None).remove(0);
    assert_eq!((a.traffic.to_peer.packets, a.traffic.to_peer.bytes), (11, 1005));
    assert_eq!((a.traffic.to_client.packets, a.traffic.to_client.bytes), (20, 3000));
    // An entry of another client on that relay (stale): the shard counts
    // it, the allocation does not.
    let stale = FastEntry { client: Client::udp(addr("192.0.2.99:1"), h.client.local), ..e };
    h.server.credit_fast_entry(&stale, (1, 100), (1, 100));
    assert_eq!(h.server.allocations(h.now, None)[0].traffic, a.traffic);
    assert_eq!(h.server.stats().relayed_packets_of(Direction::ToPeer), 12);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Arbitrary interleavings of ChannelBind, CreatePermission, Refresh
    /// (LIFETIME 0 included) and time: the invariants hold after every step
    /// (the harness checks them: installed exactly while eligible), an
    /// entry is installed only when it is not and removed only when it
    /// is, and none outlives its allocation.
    #[test]
    fn fast_path_entries_pair_up(ops in proptest::collection::vec((0u8..4, 0u8..6, 1u64..400), 1..40)) {
        let peers = [PEER, PEER2, "198.51.100.9:7000", "203.0.113.1:50001"];
        let mut h = fast_h(ServerConfig::default(), Setup::default().relays);
        let mut installed = std::collections::HashSet::new();
        for (op, k, secs) in ops {
            if !h.server.has_allocation(&h.client) {
                h.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
            }
            let (n, peer) = (0x4000 + u16::from(k % 3), peers[usize::from(k) % peers.len()]);
            match op {
                0 => drop(h.bind(n, peer)),
                1 => drop(h.permit(peer)),
                2 => drop(h.refresh([0, 300, 600][usize::from(k % 3)])),
                _ => h.advance(secs),
            }
            for e in fast_events(&mut h) {
                match e {
                    Event::FastPathInstall(e) => proptest::prop_assert!(installed.insert(e), "{e:?} twice"),
                    Event::FastPathRemove(e) => proptest::prop_assert!(installed.remove(&e), "{e:?} not installed"),
                    _ => unreachable!(),
                }
            }
            if !h.server.has_allocation(&h.client) {
                proptest::prop_assert!(installed.is_empty(), "{installed:?} outlived the allocation");
            }
        }
    }
}
