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

/// True when another socket (another process: this one binds its
/// listeners after asking) holds `addr`: a bind without SO_REUSEPORT fails
/// with EADDRINUSE while any socket is bound there, SO_REUSEPORT or not.
/// Without this check a second turn-relay on the same address would join
/// the first one's SO_REUSEPORT group silently and the kernel would split
/// clients between two processes whose nonces and allocations differ.
/// Port 0 is never in use.
pub fn address_in_use(addr: SocketAddr, tcp: bool) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let (ty, proto) = if tcp { (Type::STREAM, Protocol::TCP) } else { (Type::DGRAM, Protocol::UDP) };
    let Ok(s) = Socket::new(Domain::for_address(addr), ty.cloexec(), Some(proto)) else { return false };
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    if tcp {
        // Connections in TIME_WAIT from an earlier run do not count.
        let _ = s.set_reuse_address(true);
    }
    matches!(s.bind(&addr.into()), Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE))
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

/// Splits `budget` sockets between relay IPs that want `need[i]` each:
/// every IP gets an equal share, and what an IP does not need goes to the
/// others (water-filling), so no address starves another.
pub fn fair_shares(need: &[usize], budget: usize) -> Vec<usize> {
    let mut share = vec![0; need.len()];
    let mut order: Vec<usize> = (0..need.len()).collect();
    order.sort_by_key(|&i| need[i]);
    let mut left = budget;
    for (done, &i) in order.iter().enumerate() {
        let each = left / (need.len() - done);
        share[i] = need[i].min(each);
        left -= share[i];
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_shares_split_the_budget() {
        assert_eq!(fair_shares(&[16384, 16384], 10000), vec![5000, 5000]);
        assert_eq!(fair_shares(&[100, 16384], 10000), vec![100, 9900]);
        assert_eq!(fair_shares(&[50, 60], 10000), vec![50, 60]);
        assert_eq!(fair_shares(&[10, 10, 10], 7), vec![2, 2, 3]);
        assert_eq!(fair_shares(&[], 7), Vec::<usize>::new());
    }

    #[test]
    fn a_held_address_is_in_use() {
        let a = udp_listener("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        let addr = a.local_addr().unwrap();
        assert!(address_in_use(addr, false));
        let t = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let taddr = t.local_addr().unwrap();
        assert!(address_in_use(taddr, true));
        drop((a, t));
        assert!(!address_in_use(addr, false));
        assert!(!address_in_use(taddr, true));
        assert!(!address_in_use("127.0.0.1:0".parse().unwrap(), false));
    }

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
