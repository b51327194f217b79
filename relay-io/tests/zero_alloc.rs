//! Proof that relaying allocates nothing: a counting global allocator
//! watches the whole process while 2,000 ChannelData packets go client →
//! peer → client through the relay, on each backend — one by one, then
//! 3,200 more in bursts that the relay receives coalesced (GRO) and sends
//! as GSO batches. The test's own loop
//! uses only pre-allocated buffers and std socket calls (which do not
//! allocate), so any allocation counted is the data plane's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay_core::server::{Server, ServerParts};
use relay_core::wire::channel_data;
use relay_core::wire::{Attribute, Method};
use relay_io::RelayPorts;
use relay_io::sys::Batch;
use test_kit::{
    Listeners, Login, TurnClient, allow_loopback, backends, loopback_config, peer, recv_from, start_or_skip,
};

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

/// Datagrams per burst in the batched rounds.
const BURST: usize = 16;

/// Receives `BURST` datagrams on `sock` into `rx` (segment by segment
/// where coalesced), calling `each(rx, slot, segment range)` for each;
/// returns how many arrived within two seconds.
fn receive(rx: &mut Batch, sock: &UdpSocket, mut each: impl FnMut(&mut Batch, usize, Range<usize>)) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = 0;
    while got < BURST && Instant::now() < deadline {
        let n = rx.recv(sock.as_raw_fd(), 0).unwrap();
        for i in 0..n {
            let r = rx.received(i);
            for seg in relay_io::gso::segments(r.len, r.segment) {
                each(rx, i, seg);
                got += 1;
            }
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
    got
}

#[test]
fn relaying_allocates_nothing() {
    for backend in backends() {
        let config = loopback_config(backend, 1, Listeners::Udp, RelayPorts::Ephemeral(2));
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

        // Batched: bursts that leave the client and the peer as GSO sends,
        // arrive at the relay coalesced (GRO), and leave it as GSO sends.
        // The test's batches are allocated here, before counting.
        let mut tx = Batch::new(BURST, 0, frame.len());
        tx.set_gso(true);
        for j in 0..BURST {
            tx.slot_and_reply(j).1.copy_from_slice(&frame);
        }
        let mut rx = Batch::new(BURST, 1 << 16, 0);
        rx.set_gro(true);
        rx.set_gso(true);
        for s in [client, &peer] {
            relay_io::gso::enable_gro(s.as_raw_fd()).unwrap();
        }
        let mut bursts = |n: usize| {
            for _ in 0..n {
                for j in 0..BURST {
                    tx.send_reply(client.as_raw_fd(), server, j, frame.len());
                }
                assert_eq!(tx.flush(), (BURST, 0));
                // The peer echoes every segment back, as one GSO send.
                let got = receive(&mut rx, &peer, |rx, i, seg| {
                    let from = rx.received(i).from.unwrap();
                    assert_eq!((seg.len(), from), (100, relayed));
                    rx.send_slot(peer.as_raw_fd(), relayed, i, seg);
                });
                assert_eq!(got, BURST);
                assert_eq!(rx.flush(), (BURST, 0));
                let got = receive(&mut rx, client, |_, _, seg| assert_eq!(seg.len(), 104));
                assert_eq!(got, BURST);
            }
        };
        bursts(20);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        bursts(100);
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        let s = relay.stats(test_kit::TIMEOUT)[0].udp;
        assert!(s.gro_segments > 0 && s.gso_sends > 0, "{backend:?}: batched on the relay: {s:?}");
        assert_eq!(
            after - before,
            0,
            "{backend:?}: {} heap allocations for {} packets relayed in bursts",
            after - before,
            2 * 100 * BURST
        );
        relay.stop().unwrap();
    }
}
