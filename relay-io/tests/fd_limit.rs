//! Relay pools larger than the open-file limit allows: capped, not fatal,
//! and shared fairly between the relay addresses, so that on a host whose
//! descriptor limit caps the pool a dual-stack relay still serves both
//! families whichever address is listed first. A process of its own (these
//! tests take most of its descriptors), one test at a time.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::Instant;

use relay_core::server::{Server, ServerParts};
use relay_core::wire::Attribute;
use relay_core::wire::attr::transport;
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts};
use test_kit::{Listeners, Login, TurnClient, loopback_config};

const LOGIN: Login<'static> = Login { user: "u", password: "p", realm: "fd.test" };

/// One test at a time: each takes most of the process's descriptors.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn make(_k: usize) -> Server {
    Server::new(ServerParts::new(LOGIN.credentials()), Instant::now(), 1_800_000_000, 1)
}

fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_port_range_beyond_the_descriptor_limit_is_capped_not_fatal() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Far more ports than this process may open: the pool stops short of
    // the limit and the relay still starts and serves.
    let config = loopback_config(Backend::Portable, 1, Listeners::Udp, RelayPorts::Ephemeral(2_000_000));
    let relay = Relay::start(&config, make).expect("starts with a capped pool");
    let limit = fd_limit();
    assert!(relay.relay_count() > 0 && (relay.relay_count() as u64) < limit, "{} of {limit}", relay.relay_count());
    // The process still has descriptors to spare.
    let extra: Vec<UdpSocket> = (0..64).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    assert_eq!(extra.len(), 64);
    relay.stop().unwrap();
}

/// Allocates over UDP, asking for `family` (1 IPv4, 2 IPv6): the relayed
/// address or the error code.
fn allocate(server: SocketAddr, family: u8) -> Result<SocketAddr, u16> {
    let attrs = [Attribute::RequestedTransport(transport::UDP), Attribute::RequestedAddressFamily(family)];
    TurnClient::new(server, LOGIN).allocate_with(&attrs)
}

#[test]
fn a_capped_pool_is_shared_between_relay_addresses_whatever_their_order() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let v6: IpAddr = "::1".parse().unwrap();
    let v4: IpAddr = "127.0.0.2".parse().unwrap();
    for order in [[v6, v4], [v4, v6]] {
        // 2 × 16,384 ports is more than a 20,000-descriptor process may
        // hold: each address must still get its share.
        let config = IoConfig {
            relay_ips: order.iter().map(|&ip| RelayIp::same(ip)).collect(),
            ..loopback_config(Backend::Portable, 1, Listeners::Udp, RelayPorts::Range(49152, 65535))
        };
        let relay = Relay::start(&config, make).expect("starts");
        let server = relay.udp_addrs()[0];
        let four = allocate(server, 1).expect("an IPv4 allocation");
        let six = allocate(server, 2).expect("an IPv6 allocation");
        assert_eq!((four.ip(), six.ip()), (v4, v6), "{order:?}");
        let limit = fd_limit();
        if relay.relay_count() < 2 * 16_384 {
            // Capped: both addresses hold close to half of what was bound.
            let n = relay.relay_count() as u64;
            assert!(n < limit, "{n} of {limit}");
        }
        relay.stop().unwrap();
    }
}

#[test]
fn a_relay_address_left_without_ports_is_a_start_up_error() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // 192.0.2.1 (TEST-NET-1) is no address of this host: nothing binds,
    // and the relay refuses to start instead of answering 508 to every
    // allocation of the family.
    let config = IoConfig {
        relay_ips: vec![RelayIp::same("127.0.0.1".parse().unwrap()), RelayIp::same("192.0.2.1".parse().unwrap())],
        ..loopback_config(Backend::Portable, 1, Listeners::Udp, RelayPorts::Ephemeral(4))
    };
    match Relay::start(&config, make) {
        Err(e @ relay_io::StartError::NoRelayPorts { .. }) => {
            let text = e.to_string();
            assert!(text.contains("192.0.2.1"), "{text}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("started without ports on 192.0.2.1"),
    }
}
