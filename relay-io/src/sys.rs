//! The thin layer over Linux system calls that std and socket2 do not cover:
//! socket address conversion, batched `recvmmsg`/`sendmmsg`, epoll, eventfd
//! and a few socket options. Every `unsafe` block is small and says why it
//! is sound; everything above this module is safe code.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Converts a socket address to its C form; returns the length used.
pub fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every
            // sockaddr type; we write one sockaddr_in at its start.
            unsafe { (out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a socket address the kernel wrote; `None` for other families or a
/// short length.
pub fn from_sockaddr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // the storage is aligned and large enough for one.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

/// The IP addresses of this host's interfaces (getifaddrs), so that the
/// peer policy knows every address of the host as its own, not only the
/// configured ones: with a wildcard listener or a second address on the
/// host, a peer at one of them would otherwise reach the host's services.
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if let Some(ip) = ifaddr_ip(ifa.ifa_addr) {
            out.push(ip);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The IP of an interface address, if it is IPv4 or IPv6.
fn ifaddr_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: getifaddrs gives a valid sockaddr or null (checked).
    match i32::from(unsafe { (*addr).sa_family }) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*addr.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// An all-zero `sockaddr_storage`.
pub fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    unsafe { zeroed() }
}

/// An all-zero `msghdr`.
pub fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data (null pointers, zero lengths).
    unsafe { zeroed() }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain data (null pointers, zero lengths).
    unsafe { zeroed() }
}

fn cvt(r: libc::c_int) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// Sends one datagram from UDP socket `fd` to `dest` without blocking.
pub fn send_to(fd: RawFd, data: &[u8], dest: SocketAddr) -> io::Result<usize> {
    let mut name = zeroed_storage();
    let name_len = to_sockaddr(&dest, &mut name);
    // SAFETY: `data` is a live buffer of the length passed, and `name` a
    // live socket address of `name_len` bytes; both outlive the call.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            (&name as *const libc::sockaddr_storage).cast(),
            name_len,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// One outgoing datagram of a [`Batch`]: socket, destination and a region of
/// the batch's memory.
#[derive(Clone, Copy, Debug)]
struct Out {
    fd: RawFd,
    dest: SocketAddr,
    offset: usize,
    len: usize,
}

/// What `recvmmsg` delivered into one slot.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// The sender.
    pub from: Option<SocketAddr>,
    /// Bytes received (at the batch's receive offset).
    pub len: usize,
    /// The datagram did not fit the slot and was cut.
    pub truncated: bool,
}

/// Memory and headers for one `recvmmsg` batch and the `sendmmsg` calls it
/// leads to, allocated once per shard: receiving, processing and sending a
/// batch allocates nothing.
///
/// `data` holds `n` receive slots followed by `n` reply slots. Outgoing
/// datagrams name regions of `data`, so that the headers for `sendmmsg` are
/// built from memory the batch owns, at flush time.
pub struct Batch {
    data: Box<[u8]>,
    slot_len: usize,
    reply_len: usize,
    n: usize,
    names: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    received: Box<[Received]>,
    out: Vec<Out>,
}

// SAFETY: the raw pointers inside the header arrays are rebuilt before every
// system call from memory the batch owns; nothing is shared between threads.
unsafe impl Send for Batch {}

impl Batch {
    /// A batch of `n` slots of `slot_len` bytes and `n` replies of
    /// `reply_len` bytes.
    pub fn new(n: usize, slot_len: usize, reply_len: usize) -> Batch {
        let cap = 2 * n;
        Batch {
            data: vec![0u8; n * (slot_len + reply_len)].into_boxed_slice(),
            slot_len,
            reply_len,
            n,
            names: (0..cap).map(|_| zeroed_storage()).collect(),
            iovs: (0..cap).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            hdrs: (0..cap).map(|_| zeroed_mmsghdr()).collect(),
            received: vec![Received { from: None, len: 0, truncated: false }; n].into_boxed_slice(),
            out: Vec::with_capacity(cap),
        }
    }

    /// Slots per batch.
    pub fn capacity(&self) -> usize {
        self.n
    }

    /// Receives up to `n` datagrams from `fd` without blocking, each into its
    /// slot at `offset`. Returns how many arrived (0 when none is waiting).
    pub fn recv(&mut self, fd: RawFd, offset: usize) -> io::Result<usize> {
        let n = self.n;
        let base = self.data.as_mut_ptr();
        for i in 0..n {
            // SAFETY: slot i lies within `data` (n slots of slot_len bytes
            // come first) and offset < slot_len.
            let start = unsafe { base.add(i * self.slot_len + offset) };
            self.iovs[i] = libc::iovec { iov_base: start.cast(), iov_len: self.slot_len - offset };
            let h = &mut self.hdrs[i];
            h.msg_hdr = zeroed_msghdr();
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
        // SAFETY: the first n headers point at n distinct, live name and
        // buffer regions owned by `self`, which outlive the call.
        let r = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        let got = match cvt(r) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        for i in 0..got {
            let h = &self.hdrs[i];
            self.received[i] = Received {
                from: from_sockaddr(&self.names[i], h.msg_hdr.msg_namelen),
                len: h.msg_len as usize,
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        Ok(got)
    }

    /// What arrived in slot `i`.
    pub fn received(&self, i: usize) -> Received {
        self.received[i]
    }

    /// Slot `i` (whole) and reply area `i`, both writable.
    pub fn slot_and_reply(&mut self, i: usize) -> (&mut [u8], &mut [u8]) {
        let (slots, replies) = self.data.split_at_mut(self.n * self.slot_len);
        let s = &mut slots[i * self.slot_len..(i + 1) * self.slot_len];
        let r = &mut replies[i * self.reply_len..(i + 1) * self.reply_len];
        (s, r)
    }

    /// Queues `range` of slot `i` to `dest` from `fd`.
    pub fn send_slot(&mut self, fd: RawFd, dest: SocketAddr, i: usize, range: std::ops::Range<usize>) {
        debug_assert!(range.end <= self.slot_len);
        self.push(Out { fd, dest, offset: i * self.slot_len + range.start, len: range.len() });
    }

    /// Queues the first `len` bytes of reply area `i` to `dest` from `fd`.
    pub fn send_reply(&mut self, fd: RawFd, dest: SocketAddr, i: usize, len: usize) {
        debug_assert!(len <= self.reply_len);
        self.push(Out { fd, dest, offset: self.n * self.slot_len + i * self.reply_len, len });
    }

    fn push(&mut self, o: Out) {
        if self.out.len() < self.out.capacity() {
            self.out.push(o);
        }
    }

    /// Sends everything queued, one `sendmmsg` per run of datagrams that
    /// leave from the same socket. Returns (sent, failed) counts; a full
    /// socket buffer drops the datagram, as UDP does.
    pub fn flush(&mut self) -> (usize, usize) {
        let (mut sent, mut failed) = (0, 0);
        let total = self.out.len();
        let mut i = 0;
        while i < total {
            let fd = self.out[i].fd;
            let mut j = i;
            while j < total && self.out[j].fd == fd {
                let o = self.out[j];
                let k = j - i;
                let len = to_sockaddr(&o.dest, &mut self.names[k]);
                // SAFETY: offset + len lies within `data` (checked when queued).
                let ptr = unsafe { self.data.as_mut_ptr().add(o.offset) };
                self.iovs[k] = libc::iovec { iov_base: ptr.cast(), iov_len: o.len };
                let h = &mut self.hdrs[k];
                h.msg_hdr = zeroed_msghdr();
                h.msg_hdr.msg_name = (&mut self.names[k] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = len;
                h.msg_hdr.msg_iov = &mut self.iovs[k];
                h.msg_hdr.msg_iovlen = 1;
                j += 1;
            }
            let mut done = 0;
            let count = j - i;
            while done < count {
                // SAFETY: headers done..count point at live names and
                // regions of `data` owned by `self`.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[done..].as_mut_ptr(),
                        (count - done) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                match cvt(r) {
                    Ok(0) => {
                        failed += count - done;
                        break;
                    }
                    Ok(k) => {
                        sent += k;
                        done += k;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        // Skip the datagram that failed (full buffer,
                        // unreachable peer) and go on with the rest.
                        failed += 1;
                        done += 1;
                    }
                }
            }
            i = j;
        }
        self.out.clear();
        (sent, failed)
    }
}

/// An epoll instance.
pub struct Epoll(OwnedFd);

impl Epoll {
    /// Creates one (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain system call; the result is checked.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor we own.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Watches `fd` for input, level-triggered, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `ev` is a valid event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
    }

    /// Changes what `fd` is watched for: input, plus output when `write`.
    pub fn modify(&self, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        let events = libc::EPOLLIN as u32 | if write { libc::EPOLLOUT as u32 } else { 0 };
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut ev) }).map(drop)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is a valid (ignored) event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) }).map(drop)
    }

    /// The epoll descriptor (to nest it in another poller).
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Waits up to `timeout_ms` (-1 = forever) and fills `events`.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `events` is a writable array of the length passed.
        let r = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            other => other,
        }
    }
}

/// An empty epoll event array entry.
pub fn empty_event() -> libc::epoll_event {
    libc::epoll_event { events: 0, u64: 0 }
}

/// An eventfd used to wake a shard from another thread.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// Creates a non-blocking eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain system call; the result is checked.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: a fresh descriptor we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Wakes the reader.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; a full counter (EAGAIN)
        // already means "wake up", so the result can be ignored.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears pending wake-ups.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN means nothing was pending.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// The descriptor.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Raises the soft limit on open descriptors to the hard limit (a relay
/// holds one socket per relay port); returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: writes one rlimit into a live local.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) })?;
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: reads one live rlimit.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) })?;
    }
    Ok(r.rlim_cur)
}

/// Sets or clears the Don't Fragment behaviour of a UDP socket
/// (`IP_MTU_DISCOVER` / `IPV6_MTU_DISCOVER`: "do" vs the system default
/// "want").
pub fn set_dont_fragment(fd: RawFd, ipv6: bool, on: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            if on { libc::IPV6_PMTUDISC_DO } else { libc::IPV6_PMTUDISC_WANT },
        )
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, if on { libc::IP_PMTUDISC_DO } else { libc::IP_PMTUDISC_WANT })
    };
    // SAFETY: passes a live c_int of the size given.
    let r = unsafe {
        libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32)
    };
    cvt(r).map(drop)
}

#[cfg(test)]
mod tests {

    #[test]
    fn host_addresses_include_loopback() {
        let ips = host_addresses().unwrap();
        assert!(ips.contains(&IpAddr::from([127, 0, 0, 1])), "{ips:?}");
    }

    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["192.0.2.1:3478", "[2001:db8::1]:5349", "[fe80::1%3]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut s = zeroed_storage();
            let len = to_sockaddr(&a, &mut s);
            assert_eq!(from_sockaddr(&s, len), Some(a));
        }
    }

    #[test]
    fn batch_moves_datagrams_over_loopback() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        let mut b = Batch::new(8, 64, 32);
        let mut got = 0;
        for _ in 0..100 {
            got += b.recv(rx.as_raw_fd(), 16).unwrap();
            if got == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 5);
        let r = b.received(0);
        assert_eq!((r.from, r.len, r.truncated), (Some(tx.local_addr().unwrap()), 10, false));
        // Echo slot 0's payload back, and a reply from reply area 0.
        b.slot_and_reply(0).1[..3].copy_from_slice(b"abc");
        b.send_slot(rx.as_raw_fd(), tx.local_addr().unwrap(), 0, 16..26);
        b.send_reply(rx.as_raw_fd(), tx.local_addr().unwrap(), 0, 3);
        assert_eq!(b.flush(), (2, 0));
        let mut buf = [0u8; 64];
        tx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        assert_eq!(tx.recv(&mut buf).unwrap(), 10);
        assert_eq!(&buf[..10], &[0; 10]);
        assert_eq!(tx.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
    }
}
