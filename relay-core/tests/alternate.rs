//! ALTERNATE-SERVER (RFC 8489 §10): a draining or loaded server answers
//! new Allocates 300 with an alternate of the client's family (and
//! ALTERNATE-DOMAIN over TLS): a first, unauthenticated Allocate before the
//! challenge, unsealed; an authenticated one sealed with its key; existing
//! allocations keep refreshing; without alternates, draining stays 508.
//! A full node (allocation quota reached, relay ports used up) redirects
//! too, before the challenge as well; a user at their own quota gets 486
//! as ever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::quota::{QuotaBook, QuotaError, QuotaToken};
use relay_core::server::stats::{MethodLabel, Outcome, RedirectReason};
use relay_core::server::{Alternate, Client, ClientAction, Server, ServerConfig, ServerParts, StunError, Transport};
use relay_core::wire::attr::transport;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};

#[path = "support/quota_book.rs"]
mod quota_book;
use quota_book::TestQuotas;

const REALM: &str = "example.org";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A quota book whose total also counts allocations "of other shards".
#[derive(Debug, Default)]
struct SharedTotal(AtomicU64);

impl QuotaBook for SharedTotal {
    fn acquire(&self, _user: &[u8]) -> Result<QuotaToken, QuotaError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(QuotaToken::new(0))
    }
    fn release(&self, _token: QuotaToken) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    fn total_allocations(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed))
    }
}

struct H {
    server: Server,
    now: Instant,
    key: Key,
    nonce: Option<String>,
    tid: u64,
    out: Vec<u8>,
    /// The USERNAME of authenticated requests (`key` must be its key).
    user: &'static str,
}

fn alternates() -> Vec<Alternate> {
    vec![
        Alternate::plain(addr("198.51.100.20:3478")),
        Alternate {
            address: Some(addr("[2001:db8::20]:3478")),
            tls: Some(addr("[2001:db8::20]:5349")),
            domain: Some("turn-b.example.org".into()),
        },
        Alternate { address: None, tls: Some(addr("198.51.100.20:5349")), domain: Some("turn-b.example.org".into()) },
    ]
}

impl H {
    fn new(config: ServerConfig, quotas: Arc<dyn QuotaBook>, relays: &[&str]) -> H {
        let mut credentials = Credentials::new(REALM);
        credentials.add_user("alice", "wonderland").unwrap();
        credentials.add_user("bob", "builder").unwrap();
        let now = Instant::now();
        let parts = ServerParts::new(credentials)
            .with_config(config)
            .with_nonces(NonceIssuer::new([7; 32], 600))
            .with_quotas(quotas);
        let mut server = Server::new(parts, now, 1_800_000_000, 42);
        for r in relays {
            server.add_relay(addr(r));
        }
        let key = Key::long_term(PasswordAlgorithm::Md5, "alice", REALM, "wonderland").unwrap();
        H { server, now, key, nonce: None, tid: 0, out: vec![0; 1500], user: "alice" }
    }

    fn with(config: ServerConfig) -> H {
        H::new(config, Arc::new(SharedTotal::default()), &["203.0.113.1:50000", "[2001:db8::1]:50000"])
    }

    fn build(&mut self, method: Method, auth: bool, attrs: &[Attribute<'_>]) -> Vec<u8> {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.tid.to_be_bytes());
        let mut buf = vec![0u8; 1500];
        let ty = MessageType::new(Class::Request, method);
        let mut b = MessageBuilder::new(&mut buf, ty, TransactionId(t)).unwrap();
        for a in attrs {
            b.add(a).unwrap();
        }
        if auth {
            let nonce = self.nonce.clone().unwrap();
            b.add(&Attribute::Username(self.user)).unwrap();
            b.add(&Attribute::Realm(REALM)).unwrap();
            b.add(&Attribute::Nonce(&nonce)).unwrap();
            b.add_message_integrity(self.key.as_bytes()).unwrap();
        }
        b.add_fingerprint().unwrap();
        let n = b.finish();
        buf.truncate(n);
        buf
    }

    fn send(&mut self, client: &Client, packet: &[u8]) -> Vec<u8> {
        match self.server.handle_client(self.now, client, packet, &mut self.out) {
            ClientAction::Reply { len } => self.out[..len].to_vec(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// An authenticated request from `client` (a challenge first when the
    /// nonce is not yet known).
    fn request(&mut self, client: &Client, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        if self.nonce.is_none() {
            // No attributes: never redirected before the challenge.
            let req = self.build(method, false, &[]);
            let resp = self.send(client, &req);
            assert_eq!(code(&resp), Some(401));
            self.nonce = Some(text(&resp, AttributeType::NONCE).unwrap());
        }
        let req = self.build(method, true, attrs);
        self.send(client, &req)
    }

    fn allocate(&mut self, client: &Client) -> Vec<u8> {
        self.nonce = None;
        self.request(client, Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)])
    }
}

fn code(resp: &[u8]) -> Option<u16> {
    let m = Message::parse(resp).unwrap();
    match m.get(AttributeType::ERROR_CODE)?.decode(&m.transaction_id()) {
        Ok(Attribute::ErrorCode(e)) => Some(e.code),
        _ => None,
    }
}

fn text(resp: &[u8], ty: AttributeType) -> Option<String> {
    let m = Message::parse(resp).unwrap();
    match m.get(ty)?.decode(&m.transaction_id()) {
        Ok(Attribute::Nonce(s) | Attribute::AlternateDomain(s)) => Some(s.to_owned()),
        _ => None,
    }
}

fn alternate_server(resp: &[u8]) -> Option<SocketAddr> {
    let m = Message::parse(resp).unwrap();
    match m.get(AttributeType::ALTERNATE_SERVER)?.decode(&m.transaction_id()) {
        Ok(Attribute::AlternateServer(a)) => Some(a),
        _ => None,
    }
}

fn v4_udp(port: u16) -> Client {
    Client::udp(SocketAddr::new("192.0.2.10".parse().unwrap(), port), addr("203.0.113.1:3478"))
}

/// A TLS client from 192.0.2.10:`port` on the TLS listener (connection 3).
fn v4_tls(port: u16) -> Client {
    Client {
        transport: Transport::Tls,
        remote: SocketAddr::new("192.0.2.10".parse().unwrap(), port),
        local: addr("203.0.113.1:5349"),
        conn: 3,
    }
}

fn config() -> ServerConfig {
    ServerConfig { alternates: alternates(), ..ServerConfig::default() }
}

#[test]
fn draining_redirects_to_an_alternate_of_the_clients_family_sealed_with_its_key() {
    let mut h = H::with(config());
    h.server.set_accepting(false);
    let c = v4_udp(40000);
    let resp = h.allocate(&c);
    assert_eq!(code(&resp), Some(300));
    assert_eq!(alternate_server(&resp), Some(addr("198.51.100.20:3478")));
    // No ALTERNATE-DOMAIN outside TLS.
    assert_eq!(text(&resp, AttributeType::ALTERNATE_DOMAIN), None);
    // Authenticated: MESSAGE-INTEGRITY with the client's key.
    let m = Message::parse(&resp).unwrap();
    m.verify_message_integrity(h.key.as_bytes()).unwrap();
    // IPv6 client: the IPv6 alternate.
    let c6 = Client::udp(addr("[2001:db8::10]:40000"), addr("[2001:db8::1]:3478"));
    let resp = h.allocate(&c6);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("[2001:db8::20]:3478"))));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Draining), 2);
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 0);
    assert_eq!(h.server.stats().requests_of(MethodLabel::Allocate, Outcome::Error(StunError::TryAlternate)), 2);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn a_first_unauthenticated_allocate_is_redirected_before_the_challenge() {
    let mut h = H::with(config());
    h.server.set_accepting(false);
    let c = v4_udp(40000);
    let udp = [Attribute::RequestedTransport(transport::UDP)];
    let req = h.build(Method::ALLOCATE, false, &udp);
    let resp = h.send(&c, &req);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    // Unsealed, and without REALM and NONCE: libwebrtc would take them and
    // sign its request to the alternate with a nonce the alternate never
    // issued.
    let m = Message::parse(&resp).unwrap();
    assert!(!m.has_integrity());
    assert_eq!(text(&resp, AttributeType::NONCE), None);
    assert!(m.get(AttributeType::REALM).is_none());
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Draining), 1);
    // The same at the load threshold, not draining.
    let cfg = ServerConfig { redirect_above_allocations: Some(0), ..config() };
    let mut h = H::with(cfg);
    let resp = h.send(&c, &req);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    // Without REQUESTED-TRANSPORT UDP it is not an Allocate to move: the
    // challenge as ever (and 400 once authenticated).
    for attrs in [&[][..], &[Attribute::RequestedTransport(6)][..]] {
        let req = h.build(Method::ALLOCATE, false, attrs);
        assert_eq!(code(&h.send(&c, &req)), Some(401));
    }
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    // Not loaded: the challenge.
    let mut h = H::with(config());
    let resp = h.send(&c, &req);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(401), None));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Draining), 0);
}

#[test]
fn tls_clients_get_the_tls_address_and_the_domain() {
    let mut h = H::with(config());
    h.server.set_accepting(false);
    let tls = v4_tls(40000);
    let resp = h.allocate(&tls);
    assert_eq!(code(&resp), Some(300));
    assert_eq!(alternate_server(&resp), Some(addr("198.51.100.20:5349")));
    assert_eq!(text(&resp, AttributeType::ALTERNATE_DOMAIN).as_deref(), Some("turn-b.example.org"));
    // TCP: the plain address, no domain.
    let tcp = Client {
        transport: Transport::Tcp,
        remote: addr("192.0.2.10:40001"),
        local: addr("203.0.113.1:3478"),
        conn: 4,
    };
    let resp = h.allocate(&tcp);
    assert_eq!(alternate_server(&resp), Some(addr("198.51.100.20:3478")));
    assert_eq!(text(&resp, AttributeType::ALTERNATE_DOMAIN), None);
}

#[test]
fn without_an_alternate_draining_is_508_and_load_allocates_here() {
    // No alternates at all: today's 508.
    let mut h = H::with(ServerConfig::default());
    h.server.set_accepting(false);
    assert_eq!(code(&h.allocate(&v4_udp(40000))), Some(508));
    // Alternates, none of the client's family (IPv4 only, client IPv6).
    let only_v4 = vec![Alternate::plain(addr("198.51.100.20:3478"))];
    let c6 = Client::udp(addr("[2001:db8::10]:40000"), addr("[2001:db8::1]:3478"));
    let mut h = H::with(ServerConfig { alternates: only_v4.clone(), ..ServerConfig::default() });
    h.server.set_accepting(false);
    assert_eq!(code(&h.allocate(&c6)), Some(508));
    // Above the load, with no alternate for the client: served here.
    let cfg = ServerConfig { alternates: only_v4, redirect_above_allocations: Some(0), ..ServerConfig::default() };
    let mut h = H::with(cfg);
    assert_eq!(Message::parse(&h.allocate(&c6)).unwrap().class(), Class::Success);
    // An alternate that is the address the client reached is never offered.
    let cfg = ServerConfig { alternates: vec![Alternate::plain(addr("203.0.113.1:3478"))], ..ServerConfig::default() };
    let mut h = H::with(cfg);
    h.server.set_accepting(false);
    assert_eq!(code(&h.allocate(&v4_udp(40000))), Some(508));
}

#[test]
fn allocation_threshold_counts_every_shard_and_redirects_only_above_it() {
    let book = Arc::new(SharedTotal::default());
    let cfg = ServerConfig { redirect_above_allocations: Some(2), ..config() };
    let mut h = H::new(cfg, book.clone(), &["203.0.113.1:50000", "203.0.113.1:50001", "203.0.113.1:50002"]);
    // Under the threshold: allocated here.
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    // Another shard holds one more (the book's total is global): now at 2.
    book.0.fetch_add(1, Ordering::Relaxed);
    let resp = h.allocate(&v4_udp(40001));
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    // The other shard's allocation ends: under again.
    book.0.fetch_sub(1, Ordering::Relaxed);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40002))).unwrap().class(), Class::Success);
    assert_eq!(h.server.allocation_count(), 2);
}

#[test]
fn relay_port_threshold_is_a_fraction_of_the_shards_ports() {
    let relays = ["203.0.113.1:50000", "203.0.113.1:50001", "203.0.113.1:50002", "203.0.113.1:50003"];
    // Half of four ports: two allocations, then redirects.
    let cfg = ServerConfig { redirect_above_relay_ports: Some(0.5), ..config() };
    let mut h = H::new(cfg, Arc::new(SharedTotal::default()), &relays);
    for port in [40000, 40001] {
        assert_eq!(Message::parse(&h.allocate(&v4_udp(port))).unwrap().class(), Class::Success);
    }
    assert_eq!(code(&h.allocate(&v4_udp(40002))), Some(300));
    // 0.0 redirects every new allocation.
    let cfg = ServerConfig { redirect_above_relay_ports: Some(0.0), ..config() };
    let mut h = H::new(cfg, Arc::new(SharedTotal::default()), &relays);
    assert_eq!(code(&h.allocate(&v4_udp(40000))), Some(300));
}

#[test]
fn existing_allocations_keep_refreshing_permitting_and_binding() {
    let mut h = H::with(config());
    let c = v4_udp(40000);
    assert_eq!(Message::parse(&h.allocate(&c)).unwrap().class(), Class::Success);
    h.server.set_accepting(false);
    h.now += Duration::from_secs(5);
    let peer = Attribute::XorPeerAddress(addr("198.51.100.7:6000"));
    for (method, attrs) in [
        (Method::REFRESH, vec![Attribute::Lifetime(600)]),
        (Method::CREATE_PERMISSION, vec![peer]),
        (Method::CHANNEL_BIND, vec![Attribute::ChannelNumber(0x4000), peer]),
    ] {
        let resp = h.request(&c, method, &attrs);
        assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success, "{method:?}: {:?}", code(&resp));
    }
    // A second Allocate on the same 5-tuple is 437 as ever, not a redirect.
    let resp = h.request(&c, Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(code(&resp), Some(437));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Draining), 0);
    h.server.check_invariants(h.now).unwrap();
}

#[test]
fn bad_requests_are_answered_as_such_not_redirected() {
    let mut h = H::with(config());
    h.server.set_accepting(false);
    // No REQUESTED-TRANSPORT: 400 even while draining.
    let c = v4_udp(40000);
    let resp = h.request(&c, Method::ALLOCATE, &[]);
    assert_eq!(code(&resp), Some(400));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Draining), 0);
}

#[test]
fn a_full_node_redirects_but_a_user_at_their_quota_gets_486() {
    // Room for two allocations in all, one per user.
    let book = Arc::new(TestQuotas::new(2, 1));
    let relays = ["203.0.113.1:50000", "203.0.113.1:50001", "203.0.113.1:50002"];
    let mut h = H::new(config(), book.clone(), &relays);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    // alice's second allocation: her quota, not the node's. 486, here.
    let resp = h.allocate(&v4_udp(40001));
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(486), None));
    assert_eq!(book.active(), (1, 1), "the refused acquire holds nothing");
    // Another user takes the last place; then the node is full: a 300
    // for alice's other client, sealed with her key, counted as quota.
    let bob = Key::long_term(PasswordAlgorithm::Md5, "bob", REALM, "builder").unwrap();
    let alice = std::mem::replace(&mut h.key, bob);
    h.user = "bob";
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40002))).unwrap().class(), Class::Success);
    assert_eq!(book.active(), (2, 2));
    h.key = alice;
    h.user = "alice";
    let resp = h.allocate(&v4_udp(40003));
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    Message::parse(&resp).unwrap().verify_message_integrity(h.key.as_bytes()).unwrap();
    let stats = h.server.stats();
    assert_eq!(stats.redirects_of(RedirectReason::Quota), 1);
    assert_eq!((stats.redirects_of(RedirectReason::Load), stats.redirects_of(RedirectReason::Draining)), (0, 0));
    assert_eq!(book.active(), (2, 2), "the redirect took no quota");
    assert_eq!(h.server.allocation_count(), 2);
    h.server.check_invariants(h.now).unwrap();

    // Without an alternate for the client (no IPv6 one here), the full
    // node answers 508 as before.
    let book = Arc::new(TestQuotas::new(1, 0));
    let only_v4 = vec![Alternate::plain(addr("198.51.100.20:3478"))];
    let cfg = ServerConfig { alternates: only_v4, ..ServerConfig::default() };
    let mut h = H::new(cfg, book, &["203.0.113.1:50000", "[2001:db8::1]:50000", "[2001:db8::1]:50001"]);
    let c6 = |port| Client::udp(SocketAddr::new("2001:db8::10".parse().unwrap(), port), addr("[2001:db8::1]:3478"));
    let six = [Attribute::RequestedTransport(transport::UDP), Attribute::RequestedAddressFamily(0x02)];
    h.nonce = None;
    let resp = h.request(&c6(40000), Method::ALLOCATE, &six);
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
    h.nonce = None;
    let resp = h.request(&c6(40001), Method::ALLOCATE, &six);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(508), None));
    // An IPv4 client of the same full node has an alternate: 300.
    assert_eq!(code(&h.allocate(&v4_udp(40000))), Some(300));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Quota), 1);
}

#[test]
fn used_up_relay_ports_redirect_as_load_but_a_reservation_token_does_not() {
    // One IPv4 relay port, no quota limits, no thresholds.
    let mut h = H::new(config(), Arc::new(TestQuotas::new(0, 0)), &["203.0.113.1:50000"]);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    let resp = h.allocate(&v4_udp(40001));
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    // A reservation token names a port of this node: an unknown one is
    // 508 here, never a redirect.
    h.nonce = None;
    let token = Attribute::ReservationToken(&[9; 8]);
    let resp = h.request(&v4_udp(40002), Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP), token]);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(508), None));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    // Without alternates, used-up ports are 508 as ever.
    let mut h = H::new(ServerConfig::default(), Arc::new(TestQuotas::new(0, 0)), &["203.0.113.1:50000"]);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    assert_eq!(code(&h.allocate(&v4_udp(40001))), Some(508));
}

/// A first Allocate (REQUESTED-TRANSPORT UDP, and `extra`), without
/// MESSAGE-INTEGRITY, from `client`.
fn first_allocate(h: &mut H, client: &Client, extra: &[Attribute<'_>]) -> Vec<u8> {
    let mut attrs = vec![Attribute::RequestedTransport(transport::UDP)];
    attrs.extend_from_slice(extra);
    let req = h.build(Method::ALLOCATE, false, &attrs);
    h.send(client, &req)
}

/// A 300 to the IPv4 alternate as browsers can follow it: unsealed, no
/// REALM, no NONCE.
fn assert_unsealed_redirect(resp: &[u8]) {
    assert_eq!((code(resp), alternate_server(resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    let m = Message::parse(resp).unwrap();
    assert!(!m.has_integrity());
    assert!(m.get(AttributeType::REALM).is_none() && m.get(AttributeType::NONCE).is_none());
}

#[test]
fn a_first_allocate_at_a_full_node_is_redirected_before_the_challenge() {
    // Room for one allocation in all.
    let book = Arc::new(TestQuotas::new(1, 0));
    let relays = ["203.0.113.1:50000", "203.0.113.1:50001", "[2001:db8::1]:50000"];
    let mut h = H::new(config(), book.clone(), &relays);
    let held = v4_udp(40000);
    assert_eq!(Message::parse(&h.allocate(&held)).unwrap().class(), Class::Success);
    // Full: a new client's first Allocate is moved at once, as quota, with
    // nothing taken and no challenge issued.
    let resp = first_allocate(&mut h, &v4_udp(40001), &[]);
    assert_unsealed_redirect(&resp);
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Quota), 1);
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 0);
    assert_eq!(book.active(), (1, 1));
    // Whatever the family asked for: the quota is the node's.
    let six = [Attribute::RequestedAddressFamily(0x02)];
    assert_eq!(code(&first_allocate(&mut h, &v4_udp(40002), &six)), Some(300));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Quota), 2);
    // A request that is not an Allocate to move still gets the challenge.
    let req = h.build(Method::ALLOCATE, false, &[]);
    assert_eq!(code(&h.send(&v4_udp(40003), &req)), Some(401));
    // Room again (the allocation ends): the challenge, then an allocation.
    let resp = h.request(&held, Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success, "{:?}", code(&resp));
    assert_eq!(book.active(), (0, 0));
    assert_eq!(code(&first_allocate(&mut h, &v4_udp(40004), &[])), Some(401));
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40004))).unwrap().class(), Class::Success);
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Quota), 2);
    h.server.check_invariants(h.now).unwrap();

    // Without an alternate for the client, the challenge and then 508.
    let only_v6 = vec![Alternate::plain(addr("[2001:db8::20]:3478"))];
    let cfg = ServerConfig { alternates: only_v6, ..ServerConfig::default() };
    let mut h = H::new(cfg, Arc::new(TestQuotas::new(1, 0)), &relays);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    assert_eq!(code(&first_allocate(&mut h, &v4_udp(40001), &[])), Some(401));
    assert_eq!(code(&h.allocate(&v4_udp(40001))), Some(508));
}

#[test]
fn a_first_allocate_finding_its_familys_ports_used_up_is_redirected_as_load() {
    // One IPv4 relay port and one IPv6 one, no quota limits, no thresholds.
    let relays = ["203.0.113.1:50000", "[2001:db8::1]:50000"];
    let mut h = H::new(config(), Arc::new(TestQuotas::new(0, 0)), &relays);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    let resp = first_allocate(&mut h, &v4_udp(40001), &[]);
    assert_unsealed_redirect(&resp);
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Quota), 0);
    // The IPv6 port is free: an IPv6 relay is asked for as ever.
    let six = [Attribute::RequestedTransport(transport::UDP), Attribute::RequestedAddressFamily(0x02)];
    assert_eq!(code(&first_allocate(&mut h, &v4_udp(40002), &six[1..])), Some(401));
    h.nonce = None;
    let resp = h.request(&v4_udp(40002), Method::ALLOCATE, &six);
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success, "{:?}", code(&resp));
    // Now both families are used up.
    assert_eq!(code(&first_allocate(&mut h, &v4_udp(40003), &six[1..])), Some(300));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 2);
    // A family the node lacks is no matter of load: the challenge, then 440.
    let mut h = H::new(config(), Arc::new(TestQuotas::new(0, 0)), &["203.0.113.1:50000"]);
    assert_eq!(code(&first_allocate(&mut h, &v4_udp(40000), &six[1..])), Some(401));
    h.nonce = None;
    assert_eq!(code(&h.request(&v4_udp(40000), Method::ALLOCATE, &six)), Some(440));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 0);
    h.server.check_invariants(h.now).unwrap();
}

#[test]
fn a_user_at_their_quota_is_challenged_then_486_not_redirected() {
    // Room on the node, one allocation per user.
    let book = Arc::new(TestQuotas::new(10, 1));
    let mut h = H::new(config(), book.clone(), &["203.0.113.1:50000", "203.0.113.1:50001"]);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    // alice's next first Allocate: who she is is not known yet, and the
    // node has room: the challenge.
    let resp = first_allocate(&mut h, &v4_udp(40001), &[]);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(401), None));
    h.nonce = Some(text(&resp, AttributeType::NONCE).unwrap());
    let resp = h.request(&v4_udp(40001), Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(486), None));
    let stats = h.server.stats();
    let redirects: u64 = [RedirectReason::Quota, RedirectReason::Load, RedirectReason::Draining]
        .map(|r| stats.redirects_of(r))
        .iter()
        .sum();
    assert_eq!(redirects, 0);
    assert_eq!(book.active(), (1, 1));
}

/// A quota book that cannot tell it is full before an acquire (the trait's
/// default `is_full`), as when another shard takes the last place between
/// the look and the acquire.
#[derive(Debug)]
struct Blind(TestQuotas);

impl QuotaBook for Blind {
    fn acquire(&self, user: &[u8]) -> Result<QuotaToken, QuotaError> {
        self.0.acquire(user)
    }
    fn release(&self, token: QuotaToken) {
        self.0.release(token)
    }
}

#[test]
fn a_node_that_fills_after_the_challenge_redirects_sealed() {
    // Filled by another shard between the look and the acquire: the
    // challenge first, then the 300 sealed with the client's key.
    let book = Arc::new(Blind(TestQuotas::new(1, 0)));
    let relays = ["203.0.113.1:50000", "203.0.113.1:50001"];
    let mut h = H::new(config(), book.clone(), &relays);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    let resp = first_allocate(&mut h, &v4_udp(40001), &[]);
    assert_eq!(code(&resp), Some(401));
    h.nonce = Some(text(&resp, AttributeType::NONCE).unwrap());
    let resp = h.request(&v4_udp(40001), Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    Message::parse(&resp).unwrap().verify_message_integrity(h.key.as_bytes()).unwrap();
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Quota), 1);
    assert_eq!(book.0.active(), (1, 1), "the redirect took no quota");

    // Relay ports: challenged while one was free, taken by another client
    // before the authenticated request: sealed, as load.
    let mut h = H::new(config(), Arc::new(TestQuotas::new(0, 0)), &["203.0.113.1:50000"]);
    let resp = first_allocate(&mut h, &v4_udp(40001), &[]);
    assert_eq!(code(&resp), Some(401));
    let nonce = text(&resp, AttributeType::NONCE).unwrap();
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    h.nonce = Some(nonce);
    let resp = h.request(&v4_udp(40001), Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(code(&resp), Some(300));
    Message::parse(&resp).unwrap().verify_message_integrity(h.key.as_bytes()).unwrap();
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    h.server.check_invariants(h.now).unwrap();
}

/// Every ALTERNATE-SERVER of a response, in order.
fn alternate_servers(resp: &[u8]) -> Vec<SocketAddr> {
    let m = Message::parse(resp).unwrap();
    let tid = m.transaction_id();
    m.attributes()
        .filter_map(|a| match a.decode(&tid) {
            Ok(Attribute::AlternateServer(x)) => Some(x),
            _ => None,
        })
        .collect()
}

#[test]
fn an_alternate_of_the_other_family_follows_the_first() {
    let mut h = H::with(config());
    h.server.set_accepting(false);
    // IPv4 client: the IPv4 alternate first, then the IPv6 one.
    let resp = h.allocate(&v4_udp(40000));
    assert_eq!(code(&resp), Some(300));
    assert_eq!(alternate_servers(&resp), [addr("198.51.100.20:3478"), addr("[2001:db8::20]:3478")]);
    // IPv6 client: the other way round, before the challenge too.
    let c6 = Client::udp(addr("[2001:db8::10]:40000"), addr("[2001:db8::1]:3478"));
    let req = h.build(Method::ALLOCATE, false, &[Attribute::RequestedTransport(transport::UDP)]);
    let resp = h.send(&c6, &req);
    assert_eq!(alternate_servers(&resp), [addr("[2001:db8::20]:3478"), addr("198.51.100.20:3478")]);
    // TLS: both TLS addresses (one domain), ALTERNATE-DOMAIN once.
    let tls = v4_tls(40001);
    let resp = h.allocate(&tls);
    assert_eq!(alternate_servers(&resp), [addr("198.51.100.20:5349"), addr("[2001:db8::20]:5349")]);
    assert_eq!(text(&resp, AttributeType::ALTERNATE_DOMAIN).as_deref(), Some("turn-b.example.org"));
    // Only one family configured: one ALTERNATE-SERVER.
    let only_v4 = vec![Alternate::plain(addr("198.51.100.20:3478"))];
    let mut h = H::with(ServerConfig { alternates: only_v4, ..ServerConfig::default() });
    h.server.set_accepting(false);
    assert_eq!(alternate_servers(&h.allocate(&v4_udp(40000))), [addr("198.51.100.20:3478")]);
}

#[test]
fn the_relay_port_threshold_counts_the_requested_family() {
    // Dual-stack: two IPv4 ports and eight IPv6 ones. At 0.5, the second
    // IPv4 allocation is redirected although 1 of 10 ports is in use.
    let mut relays = vec!["203.0.113.1:50000".to_owned(), "203.0.113.1:50001".to_owned()];
    relays.extend((0..8).map(|i| format!("[2001:db8::1]:{}", 50000 + i)));
    let relays: Vec<&str> = relays.iter().map(String::as_str).collect();
    let cfg = ServerConfig { redirect_above_relay_ports: Some(0.5), ..config() };
    let mut h = H::new(cfg, Arc::new(SharedTotal::default()), &relays);
    assert_eq!(Message::parse(&h.allocate(&v4_udp(40000))).unwrap().class(), Class::Success);
    let resp = h.allocate(&v4_udp(40001));
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(300), Some(addr("198.51.100.20:3478"))));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    // Before the challenge as well.
    let req = h.build(Method::ALLOCATE, false, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(code(&h.send(&v4_udp(40002), &req)), Some(300));
    // An IPv6 relay is another matter: four of eight are taken here.
    let six = [Attribute::RequestedTransport(transport::UDP), Attribute::RequestedAddressFamily(0x02)];
    for port in 40010..40014 {
        h.nonce = None;
        let resp = h.request(&v4_udp(port), Method::ALLOCATE, &six);
        assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success, "{:?}", code(&resp));
    }
    h.nonce = None;
    assert_eq!(code(&h.request(&v4_udp(40014), Method::ALLOCATE, &six)), Some(300));
    let req = h.build(Method::ALLOCATE, false, &six);
    assert_eq!(code(&h.send(&v4_udp(40015), &req)), Some(300), "before the challenge too");
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 4);
    assert_eq!(h.server.allocation_count(), 5);
    h.server.check_invariants(h.now).unwrap();
}

#[test]
fn an_allocate_with_a_reservation_token_is_never_redirected() {
    // Four relay ports: EVEN-PORT with R reserves the next one.
    let relays = ["203.0.113.1:50000", "203.0.113.1:50001", "203.0.113.1:50002", "203.0.113.1:50003"];
    let cfg = ServerConfig { redirect_above_relay_ports: Some(0.25), ..config() };
    let mut h = H::new(cfg, Arc::new(SharedTotal::default()), &relays);
    h.nonce = None;
    let even = [Attribute::RequestedTransport(transport::UDP), Attribute::EvenPort(true)];
    let resp = h.request(&v4_udp(40000), Method::ALLOCATE, &even);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    let token = match m.get(AttributeType::RESERVATION_TOKEN).unwrap().decode(&m.transaction_id()) {
        Ok(Attribute::ReservationToken(t)) => *t,
        other => panic!("{other:?}"),
    };
    // Above the threshold now (one of four in use, 0.25): a plain Allocate
    // goes elsewhere...
    assert_eq!(code(&h.allocate(&v4_udp(40001))), Some(300));
    // ...the token's does not: not before the challenge (a 401, not a 300)...
    let with_token = [Attribute::RequestedTransport(transport::UDP), Attribute::ReservationToken(&token)];
    let req = h.build(Method::ALLOCATE, false, &with_token);
    assert_eq!(code(&h.send(&v4_udp(40002), &req)), Some(401));
    // ...nor after: it takes the reserved port here.
    h.nonce = None;
    let resp = h.request(&v4_udp(40002), Method::ALLOCATE, &with_token);
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success, "{:?}", code(&resp));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Load), 1);
    // Draining: no redirect with a token either, 508 as without alternates.
    let mut h = H::with(config());
    h.server.set_accepting(false);
    let req = h.build(Method::ALLOCATE, false, &with_token);
    assert_eq!(code(&h.send(&v4_udp(40003), &req)), Some(401));
    h.nonce = None;
    let resp = h.request(&v4_udp(40003), Method::ALLOCATE, &with_token);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(508), None));
    // A full node (allocation quota): 508 too, not a quota redirect.
    let book = Arc::new(TestQuotas::new(1, 0));
    let mut h = H::new(config(), book, &relays);
    h.nonce = None;
    let resp = h.request(&v4_udp(40000), Method::ALLOCATE, &even);
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
    let m = Message::parse(&resp).unwrap();
    let token = match m.get(AttributeType::RESERVATION_TOKEN).unwrap().decode(&m.transaction_id()) {
        Ok(Attribute::ReservationToken(t)) => *t,
        other => panic!("{other:?}"),
    };
    let with_token = [Attribute::RequestedTransport(transport::UDP), Attribute::ReservationToken(&token)];
    h.nonce = None;
    let resp = h.request(&v4_udp(40001), Method::ALLOCATE, &with_token);
    assert_eq!((code(&resp), alternate_server(&resp)), (Some(508), None));
    assert_eq!(code(&h.allocate(&v4_udp(40002))), Some(300), "without a token the full node redirects");
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Quota), 1);
}

#[test]
fn a_redirect_dropped_over_the_reflection_budget_is_not_counted() {
    // One unauthenticated answer per source and second.
    let cfg = ServerConfig { unauthenticated_rate: 1, unauthenticated_burst: 1, ..config() };
    let mut h = H::with(cfg);
    h.server.set_accepting(false);
    let req = h.build(Method::ALLOCATE, false, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(code(&h.send(&v4_udp(40000), &req)), Some(300));
    // The same source again at once: over its budget, nothing is sent.
    let action = h.server.handle_client(h.now, &v4_udp(40001), &req, &mut h.out);
    assert_eq!(action, ClientAction::None);
    let stats = h.server.stats();
    assert_eq!(stats.redirects_of(RedirectReason::Draining), 1, "only the 300 that went out");
    assert_eq!(stats.requests_of(MethodLabel::Allocate, Outcome::Error(StunError::TryAlternate)), 1);
    assert_eq!(stats.drops_of(relay_core::server::stats::Drop::RateLimited), 1);
    // A second later the budget is back: sent and counted.
    h.now += Duration::from_secs(1);
    assert_eq!(code(&h.send(&v4_udp(40002), &req)), Some(300));
    assert_eq!(h.server.stats().redirects_of(RedirectReason::Draining), 2);
}
