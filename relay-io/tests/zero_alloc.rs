//! Proof that relaying allocates nothing: a counting global allocator
//! watches the whole process while 2,000 ChannelData packets go client →
//! peer → client through the relay, on each backend. The test's own loop
//! uses only pre-allocated buffers and std socket calls (which do not
//! allocate), so any allocation counted is the data plane's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::policy::PeerPolicy;
use relay_core::server::quota::Unlimited;
use relay_core::server::{Server, ServerConfig, ServerParts};
use relay_core::wire::attr::transport;
use relay_core::wire::channel_data;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is a relaxed counter increment.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `recv_from`, retried when a signal interrupts it (io_uring task work can
/// interrupt blocking calls of other threads of the process).
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match sock.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

const REALM: &str = "alloc.test";

fn request(sock: &UdpSocket, server: SocketAddr, tid: u8, nonce: Option<&str>, attrs: &[Attribute<'_>]) -> Vec<u8> {
    let key = Key::long_term(PasswordAlgorithm::Md5, "u", REALM, "p").unwrap();
    let mut buf = [0u8; 1500];
    let t = TransactionId([tid; 12]);
    let method = match tid {
        1 | 2 => Method::ALLOCATE,
        _ => Method::CHANNEL_BIND,
    };
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, method), t).unwrap();
    for a in attrs {
        b.add(a).unwrap();
    }
    if let Some(n) = nonce {
        b.add(&Attribute::Username("u")).unwrap();
        b.add(&Attribute::Realm(REALM)).unwrap();
        b.add(&Attribute::Nonce(n)).unwrap();
        b.add_message_integrity(key.as_bytes()).unwrap();
    }
    let n = b.finish();
    sock.send_to(&buf[..n], server).unwrap();
    let mut resp = [0u8; 1500];
    let (n, _) = recv(sock, &mut resp).unwrap();
    resp[..n].to_vec()
}

fn attr_string(resp: &[u8], ty: AttributeType) -> String {
    let m = Message::parse(resp).unwrap();
    match m.get(ty).unwrap().decode(&m.transaction_id()).unwrap() {
        Attribute::Nonce(n) => n.to_owned(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn relaying_allocates_nothing() {
    for backend in [Backend::Portable, Backend::IoUring] {
        let config = IoConfig {
            shards: 1,
            backend,
            udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
            relay_ips: vec![RelayIp::same("127.0.0.1".parse().unwrap())],
            relay_ports: RelayPorts::Ephemeral(2),
            ..IoConfig::default()
        };
        let make = |_| {
            let mut credentials = Credentials::new(REALM);
            credentials.add_user("u", "p").unwrap();
            let parts = ServerParts {
                config: ServerConfig::default(),
                credentials,
                nonces: NonceIssuer::new([3; 32], 600),
                policy: PeerPolicy::with_lists(vec!["127.0.0.0/8".parse().unwrap()], vec![]),
                quotas: Arc::new(Unlimited),
            };
            Server::new(parts, Instant::now(), 1_800_000_000, 1)
        };
        let relay = match Relay::start(&config, make) {
            Ok(r) => r,
            Err(relay_io::StartError::IoUringUnavailable(why)) => {
                common::skip_io_uring(&why);
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let server = relay.udp_addrs()[0];
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let peer = UdpSocket::bind("127.0.0.2:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let rt = [Attribute::RequestedTransport(transport::UDP)];
        let challenge = request(&client, server, 1, None, &rt);
        let nonce = attr_string(&challenge, AttributeType::NONCE);
        let ok = request(&client, server, 2, Some(&nonce), &rt);
        let m = Message::parse(&ok).unwrap();
        assert_eq!(m.class(), Class::Success);
        let Attribute::XorRelayedAddress(relayed) =
            m.get(AttributeType::XOR_RELAYED_ADDRESS).unwrap().decode(&m.transaction_id()).unwrap()
        else {
            panic!()
        };
        let paddr = peer.local_addr().unwrap();
        let bind = [Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(paddr)];
        let ok = request(&client, server, 3, Some(&nonce), &bind);
        assert_eq!(Message::parse(&ok).unwrap().class(), Class::Success);

        let mut frame = [0u8; 4 + 100];
        channel_data::encode(&mut frame, 0x4000, &[7u8; 100], false).unwrap();
        let mut buf = [0u8; 2048];
        let mut round = |n: usize| {
            for _ in 0..n {
                client.send_to(&frame, server).unwrap();
                let (k, from) = recv(&peer, &mut buf).unwrap();
                assert_eq!((k, from), (100, relayed));
                peer.send_to(&buf[..k], relayed).unwrap();
                let (k, _) = recv(&client, &mut buf).unwrap();
                assert_eq!(k, 104);
            }
        };
        // Warm up (first-use paths may size their scratch space).
        round(200);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        round(1000);
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{backend:?}: {} heap allocations for 2,000 relayed packets", after - before);
        relay.stop().unwrap();
    }
}
