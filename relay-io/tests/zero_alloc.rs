//! Proof that relaying allocates nothing: a counting global allocator
//! watches the whole process while 2,000 ChannelData packets go client →
//! peer → client through the relay, on each backend. The test's own loop
//! uses only pre-allocated buffers and std socket calls (which do not
//! allocate), so any allocation counted is the data plane's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use relay_core::server::{Server, ServerParts};
use relay_core::wire::channel_data;
use relay_core::wire::{Attribute, Method};
use relay_io::{IoConfig, RelayIp, RelayPorts};
use test_kit::{Login, TurnClient, allow_loopback, backends, peer, recv_from, start_or_skip};

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

const REALM: &str = "alloc.test";
const LOGIN: Login<'static> = Login { user: "u", password: "p", realm: REALM };

#[test]
fn relaying_allocates_nothing() {
    for backend in backends() {
        let config = IoConfig {
            shards: 1,
            backend,
            udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
            relay_ips: vec![RelayIp::same("127.0.0.1".parse().unwrap())],
            relay_ports: RelayPorts::Ephemeral(2),
            ..IoConfig::default()
        };
        let make = |_| {
            let parts = ServerParts::new(LOGIN.credentials()).with_policy(allow_loopback());
            Server::new(parts, Instant::now(), 1_800_000_000, 1)
        };
        let Some(relay) = start_or_skip(&config, make) else { continue };
        let server = relay.udp_addrs()[0];
        let mut c = TurnClient::new(server, LOGIN);
        let peer = peer();
        let relayed = c.allocate().unwrap();
        let paddr = peer.local_addr().unwrap();
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(paddr)]);
        let client = &c.sock;

        let mut frame = [0u8; 4 + 100];
        channel_data::encode(&mut frame, 0x4000, &[7u8; 100], false).unwrap();
        let mut buf = [0u8; 2048];
        let mut round = |n: usize| {
            for _ in 0..n {
                client.send_to(&frame, server).unwrap();
                let (k, from) = recv_from(&peer, &mut buf).unwrap();
                assert_eq!((k, from), (100, relayed));
                peer.send_to(&buf[..k], relayed).unwrap();
                let (k, _) = recv_from(client, &mut buf).unwrap();
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
