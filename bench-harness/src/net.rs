//! Socket helpers.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use socket2::SockRef;

/// The unspecified address (port 0) of `addr`'s family.
pub fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Socket buffer size asked for on the harness's data sockets (the kernel
/// caps it at `net.core.rmem_max` / `wmem_max`).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Best-effort large send and receive buffers.
pub fn grow_buffers(sock: &UdpSocket, bytes: usize) {
    let s = SockRef::from(sock);
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
}

/// A non-blocking UDP socket bound to `addr` with large buffers.
pub fn data_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    grow_buffers(&s, SOCKET_BUFFER);
    Ok(s)
}
