//! Creating the sockets a shard owns (socket2): listeners shared between
//! shards with SO_REUSEPORT, and pre-bound relay sockets.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// The relay ports a relay IP offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayPorts {
    /// A range of ports (inclusive), split into disjoint slices per shard.
    Range(u16, u16),
    /// This many kernel-chosen ports per shard (tests, ad hoc runs).
    Ephemeral(usize),
}

/// A relay address: what the socket binds to, and what clients are told
/// (differs behind a 1:1 NAT, e.g. a cloud VM's public address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayIp {
    /// Local IP the relay sockets bind to.
    pub bind: IpAddr,
    /// IP advertised in XOR-RELAYED-ADDRESS.
    pub advertised: IpAddr,
}

impl RelayIp {
    /// A relay IP advertised as itself.
    pub fn same(ip: IpAddr) -> RelayIp {
        RelayIp { bind: ip, advertised: ip }
    }
}

fn udp(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// A UDP listener bound with SO_REUSEPORT, so that every shard has its own
/// socket on the same address and the kernel spreads clients by flow hash.
pub fn udp_listener(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    let s = udp(addr)?;
    s.set_reuse_port(true)?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A TCP listener bound with SO_REUSEPORT (one per shard on the same
/// address; the kernel spreads connections by flow hash).
pub fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A relay socket bound to `addr` (port 0: the kernel picks).
pub fn relay_socket(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    let s = udp(addr)?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The ports of shard `k` of `n` within `lo..=hi`: disjoint, contiguous
/// slices; the last shard takes the remainder.
pub fn port_slice(lo: u16, hi: u16, k: usize, n: usize) -> std::ops::RangeInclusive<u16> {
    let total = usize::from(hi.saturating_sub(lo)) + 1;
    let per = total / n.max(1);
    let start = usize::from(lo) + k * per;
    let end = if k + 1 == n { usize::from(hi) } else { start + per - 1 };
    (start as u16)..=(end as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_slices_are_disjoint_and_cover_the_range() {
        let n = 3;
        let mut all = Vec::new();
        for k in 0..n {
            all.extend(port_slice(49152, 49161, k, n));
        }
        assert_eq!(all, (49152..=49161).collect::<Vec<_>>());
        assert_eq!(port_slice(50000, 50000, 0, 1), 50000..=50000);
    }

    #[test]
    fn reuseport_listeners_share_an_address() {
        let a = udp_listener("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let addr = a.local_addr().unwrap();
        let b = udp_listener(addr, 1 << 20).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }
}
