//! The thin layer over Linux system calls that std and socket2 do not cover:
//! socket address conversion, batched `recvmmsg`/`sendmmsg`, epoll, eventfd
//! and a few socket options. Every `unsafe` block is small and says why it
//! is sound; everything above this module is safe code.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::gso::{
    Coalescer, EMPTY_IOV, GRO_CONTROL_LEN, GsoStats, MAX_GRO_SEGMENTS, MAX_PARTS, Outgoing, Plan, SegmentCmsg, ZEROS,
    gro_segment, refused,
};

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
    Ok(interface_addresses()?.into_iter().map(|(_, ip)| ip).collect())
}

/// Every interface address: (interface name, IP), from getifaddrs(3).
pub fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
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
        if let Some(ip) = ifaddr_ip(ifa.ifa_addr)
            && !ifa.ifa_name.is_null()
        {
            // SAFETY: ifa_name is a NUL-terminated string owned by the
            // list; it is copied before the list is freed.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            out.push((name.to_string_lossy().into_owned(), ip));
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

/// What `recvmmsg` delivered into one slot.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// The sender.
    pub from: Option<SocketAddr>,
    /// Bytes received (at the batch's receive offset).
    pub len: usize,
    /// The datagram did not fit the slot and was cut.
    pub truncated: bool,
    /// With GRO on: the segment size when the kernel coalesced several
    /// datagrams of the flow into the slot (see [`crate::gso::segments`]),
    /// else 0.
    pub segment: usize,
}

/// Bytes of the side header area of one coalesced segment (see
/// [`Batch::segment`]): room for any header the server puts in front of a
/// peer's payload.
pub const SIDE_HEAD: usize = relay_core::server::PEER_HEADROOM;

/// Memory and headers for one `recvmmsg` batch and the sends it leads to,
/// allocated once per shard: receiving, processing and sending a batch
/// allocates nothing.
///
/// `data` holds `n` receive slots followed by `n` reply slots. Outgoing
/// datagrams are queued as iovecs into that memory (and the side header
/// areas of coalesced segments) in a [`Coalescer`], which groups them into
/// GSO sends when [`Batch::set_gso`] allows; [`Batch::flush`] hands them
/// to the kernel in one `sendmmsg` per socket.
pub struct Batch {
    data: Box<[u8]>,
    slot_len: usize,
    reply_len: usize,
    n: usize,
    names: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Receive control areas (`GRO_CONTROL_LEN` per slot) with GRO on.
    control: Box<[u8]>,
    /// Side header areas, `MAX_GRO_SEGMENTS` of [`SIDE_HEAD`] bytes per
    /// slot, with GRO on.
    heads: Box<[[u8; SIDE_HEAD]]>,
    received: Box<[Received]>,
    out: Coalescer,
    send_names: Box<[libc::sockaddr_storage]>,
    send_iovs: Box<[libc::iovec]>,
    send_hdrs: Box<[libc::mmsghdr]>,
    cmsgs: Box<[SegmentCmsg]>,
    /// Datagrams sent and failed in flushes made to free the queue,
    /// reported by the next [`Batch::flush`].
    pending: (usize, usize),
}

// SAFETY: the raw pointers inside the header arrays and the queued iovecs
// point at memory the batch owns (or at statics); nothing is shared between
// threads.
unsafe impl Send for Batch {}

impl Batch {
    /// A batch of `n` slots of `slot_len` bytes and `n` replies of
    /// `reply_len` bytes; GSO and GRO off.
    pub fn new(n: usize, slot_len: usize, reply_len: usize) -> Batch {
        let cap = 4 * n.max(1);
        Batch {
            data: vec![0u8; n * (slot_len + reply_len)].into_boxed_slice(),
            slot_len,
            reply_len,
            n,
            names: (0..n).map(|_| zeroed_storage()).collect(),
            iovs: (0..n).map(|_| EMPTY_IOV).collect(),
            hdrs: (0..n).map(|_| zeroed_mmsghdr()).collect(),
            control: Box::new([]),
            heads: Box::new([]),
            received: vec![Received { from: None, len: 0, truncated: false, segment: 0 }; n].into_boxed_slice(),
            out: Coalescer::new(cap, false),
            send_names: (0..cap).map(|_| zeroed_storage()).collect(),
            send_iovs: (0..cap * MAX_PARTS).map(|_| EMPTY_IOV).collect(),
            send_hdrs: (0..cap).map(|_| zeroed_mmsghdr()).collect(),
            cmsgs: (0..cap).map(|_| SegmentCmsg::new(0)).collect(),
            pending: (0, 0),
        }
    }

    /// Turns GSO sends on or off (off: one message per datagram).
    pub fn set_gso(&mut self, on: bool) {
        let stats = self.out.stats;
        self.out = Coalescer::new(self.out_capacity(), on);
        self.out.stats = stats;
    }

    fn out_capacity(&self) -> usize {
        self.send_hdrs.len()
    }

    /// Turns GRO receives on for this batch (the sockets need
    /// [`crate::gso::enable_gro`], and slots room for a coalesced buffer:
    /// up to 64 KiB): allocates the control and side header areas.
    pub fn set_gro(&mut self, on: bool) {
        if on {
            self.control = vec![0u8; self.n * GRO_CONTROL_LEN].into_boxed_slice();
            self.heads = vec![[0u8; SIDE_HEAD]; self.n * MAX_GRO_SEGMENTS].into_boxed_slice();
        } else {
            self.control = Box::new([]);
            self.heads = Box::new([]);
        }
    }

    /// Slots per batch.
    pub fn capacity(&self) -> usize {
        self.n
    }

    /// The batching counters.
    pub fn gso_stats(&self) -> GsoStats {
        self.out.stats
    }

    /// The coalescer (per-socket GSO settings).
    pub fn coalescer(&mut self) -> &mut Coalescer {
        &mut self.out
    }

    /// Receives up to `n` datagrams from `fd` without blocking, each into its
    /// slot at `offset`. Returns how many arrived (0 when none is waiting).
    /// With GRO a slot may hold several ([`Received::segment`]); counting
    /// them ([`GsoStats::received`]) is the caller's.
    pub fn recv(&mut self, fd: RawFd, offset: usize) -> io::Result<usize> {
        let n = self.n;
        let base = self.data.as_mut_ptr();
        let gro = !self.control.is_empty();
        for i in 0..n {
            let start = base.wrapping_add(i * self.slot_len + offset);
            self.iovs[i] = libc::iovec { iov_base: start.cast(), iov_len: self.slot_len - offset };
            let h = &mut self.hdrs[i];
            h.msg_hdr = zeroed_msghdr();
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if gro {
                h.msg_hdr.msg_control = self.control[i * GRO_CONTROL_LEN..].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = GRO_CONTROL_LEN as _;
            }
            h.msg_len = 0;
        }
        // SAFETY: the first n headers point at n distinct, live name,
        // buffer and control regions owned by `self`, which outlive the
        // call.
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
            let segment = if gro {
                #[allow(clippy::unnecessary_cast)] // socklen_t on some C libraries
                let len = (h.msg_hdr.msg_controllen as usize).min(GRO_CONTROL_LEN);
                gro_segment(&self.control[i * GRO_CONTROL_LEN..i * GRO_CONTROL_LEN + len]).unwrap_or(0)
            } else {
                0
            };
            self.received[i] = Received {
                from: from_sockaddr(&self.names[i], h.msg_hdr.msg_namelen),
                len: h.msg_len as usize,
                // A cut control area could hide a coalesced buffer's
                // segment size: dropped as a cut datagram is.
                truncated: h.msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
                segment,
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

    /// Slot `i` (whole, read-only), reply area `i`, and the side header area
    /// of its coalesced segment `j` (GRO on; `j` < [`MAX_GRO_SEGMENTS`]).
    pub fn segment(&mut self, i: usize, j: usize) -> (&[u8], &mut [u8], &mut [u8; SIDE_HEAD]) {
        let (slots, replies) = self.data.split_at_mut(self.n * self.slot_len);
        let s = &slots[i * self.slot_len..(i + 1) * self.slot_len];
        let r = &mut replies[i * self.reply_len..(i + 1) * self.reply_len];
        (s, r, &mut self.heads[i * MAX_GRO_SEGMENTS + j])
    }

    /// Queues `range` of slot `i` to `dest` from `fd`.
    pub fn send_slot(&mut self, fd: RawFd, dest: SocketAddr, i: usize, range: std::ops::Range<usize>) {
        debug_assert!(range.end <= self.slot_len);
        self.queue(fd, dest, i * self.slot_len + range.start, range.len());
    }

    /// Queues the first `len` bytes of reply area `i` to `dest` from `fd`.
    pub fn send_reply(&mut self, fd: RawFd, dest: SocketAddr, i: usize, len: usize) {
        debug_assert!(len <= self.reply_len);
        self.queue(fd, dest, self.n * self.slot_len + i * self.reply_len, len);
    }

    /// Queues a coalesced segment of slot `i`: the last `head` bytes of
    /// segment `j`'s side header area, `range` of the slot, then `pad`
    /// zero bytes.
    pub fn send_segment(
        &mut self,
        fd: RawFd,
        dest: SocketAddr,
        (i, j): (usize, usize),
        head: usize,
        range: std::ops::Range<usize>,
        pad: usize,
    ) {
        debug_assert!(range.end <= self.slot_len && head <= SIDE_HEAD && pad <= ZEROS.len());
        let mut d = Outgoing::new(fd, dest, &[], 0);
        if let Some(h) = self.heads.get(i * MAX_GRO_SEGMENTS + j) {
            d.push(&h[SIDE_HEAD - head.min(SIDE_HEAD)..]);
        }
        let at = i * self.slot_len + range.start;
        d.push_raw(self.data.as_mut_ptr().wrapping_add(at), range.len());
        d.push(&ZEROS[..pad.min(ZEROS.len())]);
        self.push(d);
    }

    /// Queues `data[at..at + len]` as one datagram.
    fn queue(&mut self, fd: RawFd, dest: SocketAddr, at: usize, len: usize) {
        let mut d = Outgoing::new(fd, dest, &[], 0);
        d.push_raw(self.data.as_mut_ptr().wrapping_add(at), len);
        self.push(d);
    }

    fn push(&mut self, d: Outgoing) {
        if self.out.is_full() {
            let (sent, failed) = self.flush();
            self.pending = (sent, failed);
        }
        self.out.push(d);
    }

    /// Sends everything queued: the coalescer's plans, one `sendmmsg` per
    /// socket, a GSO plan as one message with `UDP_SEGMENT`. Returns (sent,
    /// failed) datagram counts; a full socket buffer drops the datagram, as
    /// UDP does. A GSO message the socket refuses is re-sent one datagram
    /// at a time, and on `EIO` the socket falls back to single sends.
    pub fn flush(&mut self) -> (usize, usize) {
        let (mut sent, mut failed) = std::mem::take(&mut self.pending);
        let total = self.out.plan();
        let mut i = 0;
        while i < total {
            let fd = self.out.plans()[i].fd;
            let mut j = i;
            let mut iov_at = 0;
            while j < total && self.out.plans()[j].fd == fd {
                let p = self.out.plans()[j];
                let k = j - i;
                let len = to_sockaddr(&p.dest, &mut self.send_names[k]);
                let n = self.out.fill_iov(&p, &mut self.send_iovs[iov_at..]);
                let h = &mut self.send_hdrs[k];
                h.msg_hdr = zeroed_msghdr();
                h.msg_hdr.msg_name = (&mut self.send_names[k] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = len;
                h.msg_hdr.msg_iov = &mut self.send_iovs[iov_at];
                h.msg_hdr.msg_iovlen = n as _;
                if p.is_gso() {
                    self.cmsgs[k] = SegmentCmsg::new(p.size as u16);
                    h.msg_hdr.msg_control = (&mut self.cmsgs[k] as *mut SegmentCmsg).cast();
                    h.msg_hdr.msg_controllen = SegmentCmsg::space() as _;
                }
                iov_at += n;
                j += 1;
            }
            let mut done = 0;
            let count = j - i;
            while done < count {
                // SAFETY: headers done..count point at live names, iovecs
                // and control messages owned by `self`, whose iovecs point
                // at `data`, the side header areas or `ZEROS`.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.send_hdrs[done..].as_mut_ptr(),
                        (count - done) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                let plan = self.out.plans()[i + done];
                match cvt(r) {
                    Ok(0) => {
                        failed += self.out.plans()[i + done..j].iter().map(|p| p.count).sum::<usize>();
                        break;
                    }
                    Ok(k) => {
                        for m in i + done..i + done + k {
                            let n = self.out.plans()[m].count;
                            self.out.count_sent(n);
                            sent += n;
                        }
                        done += k;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if plan.is_gso() && e.raw_os_error().and_then(refused).is_some() => {
                        // Refused as a GSO send (see gso::refused): one by
                        // one, and for good on this socket after EIO.
                        if e.raw_os_error().and_then(refused) == Some(true) {
                            self.out.fall_back(fd);
                        }
                        let (s, f) = self.send_one_by_one(&plan);
                        sent += s;
                        failed += f;
                        done += 1;
                    }
                    Err(_) => {
                        // Skip the message that failed (full buffer,
                        // unreachable peer) and go on with the rest.
                        failed += plan.count;
                        done += 1;
                    }
                }
            }
            i = j;
        }
        self.out.clear();
        (sent, failed)
    }

    /// Sends a plan's datagrams one `sendmsg` each.
    fn send_one_by_one(&mut self, p: &Plan) -> (usize, usize) {
        let (mut sent, mut failed) = (0, 0);
        let mut name = zeroed_storage();
        let name_len = to_sockaddr(&p.dest, &mut name);
        let mut iov = [EMPTY_IOV; MAX_PARTS];
        for d in self.out.members(p) {
            iov[..d.iov().len()].copy_from_slice(d.iov());
            let mut h = zeroed_msghdr();
            h.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = name_len;
            h.msg_iov = iov.as_mut_ptr();
            h.msg_iovlen = d.iov().len() as _;
            // SAFETY: the header points at a live name and iovecs whose
            // memory the batch owns (queued from it) for the call.
            let r = unsafe { libc::sendmsg(p.fd, &h, libc::MSG_DONTWAIT) };
            if r < 0 { failed += 1 } else { sent += 1 }
        }
        for _ in 0..sent {
            self.out.count_sent(1);
        }
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

/// Moves the calling thread into the network namespace `ip netns` named
/// `name` (`/run/netns/<name>`); threads it starts afterwards are in it too.
/// For tests and tools that build their own namespaces.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns(2) takes a live descriptor of a network namespace and
    // changes only the calling thread's namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The index of the interface `name` in the calling thread's network
/// namespace (if_nametoindex(3)), or `None` when there is none.
pub fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

#[cfg(test)]
mod interface_tests {
    use super::*;

    #[test]
    fn loopback_is_an_interface_with_its_address() {
        let all = interface_addresses().unwrap();
        assert!(all.iter().any(|(n, ip)| n == "lo" && *ip == IpAddr::from([127, 0, 0, 1])), "{all:?}");
        assert_eq!(interface_index("lo"), Some(1));
        assert_eq!(interface_index("no-such-device"), None);
    }
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
        assert_eq!((r.from, r.len, r.truncated, r.segment), (Some(tx.local_addr().unwrap()), 10, false, 0));
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

    /// GSO on send and GRO on receive over loopback: ten equal datagrams
    /// and a shorter one leave in one message and arrive, to a socket
    /// with GRO, in one buffer whose segments are the datagrams; to one
    /// without, as eleven datagrams.
    #[test]
    fn gso_sends_and_gro_receives_over_loopback() {
        gso_and_gro_on("127.0.0.1:0");
    }

    /// The same over IPv6 (`::1`): the control messages and limits hold
    /// for both families.
    #[test]
    fn gso_sends_and_gro_receives_over_ipv6_loopback() {
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            return test_kit::skip("gso_sends_and_gro_receives_over_ipv6_loopback", "no IPv6 loopback here");
        }
        gso_and_gro_on("[::1]:0");
    }

    fn gso_and_gro_on(local: &str) {
        let timeout = Some(std::time::Duration::from_secs(2));
        let tx = std::net::UdpSocket::bind(local).unwrap();
        let plain = std::net::UdpSocket::bind(local).unwrap();
        let gro = std::net::UdpSocket::bind(local).unwrap();
        plain.set_read_timeout(timeout).unwrap();
        if !crate::gso::gso_supported(tx.as_raw_fd()) {
            return test_kit::skip("gso_sends_and_gro_receives_over_loopback", "the kernel lacks UDP_SEGMENT");
        }
        crate::gso::enable_gro(gro.as_raw_fd()).unwrap();
        let mut b = Batch::new(16, 0, 100);
        b.set_gso(true);
        for dest in [plain.local_addr().unwrap(), gro.local_addr().unwrap()] {
            for j in 0..11 {
                let len = if j == 10 { 40 } else { 100 };
                b.slot_and_reply(j).1[..len].fill(j as u8);
                b.send_reply(tx.as_raw_fd(), dest, j, len);
            }
            assert_eq!(b.flush(), (11, 0));
        }
        assert_eq!((b.gso_stats().gso_sends, b.gso_stats().batched), (2, 22));
        let mut buf = [0u8; 2048];
        for j in 0..11u8 {
            let n = plain.recv(&mut buf).unwrap();
            assert_eq!((n, buf[0]), (if j == 10 { 40 } else { 100 }, j));
        }
        let mut rx = Batch::new(4, 65536, 0);
        rx.set_gro(true);
        let mut got = 0;
        for _ in 0..200 {
            got = rx.recv(gro.as_raw_fd(), 0).unwrap();
            if got > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 1, "one coalesced buffer");
        let r = rx.received(0);
        assert_eq!((r.len, r.segment, r.truncated), (1040, 100, false));
        let slot = rx.slot_and_reply(0).0;
        for (j, seg) in crate::gso::segments(r.len, r.segment).enumerate() {
            assert!(slot[seg.clone()].iter().all(|&x| x == j as u8), "segment {j}");
            assert_eq!(seg.len(), if j == 10 { 40 } else { 100 });
        }
    }

    /// A flush made to free a full queue is counted in the next flush.
    #[test]
    fn a_full_queue_flushes_and_the_counts_are_kept() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut b = Batch::new(2, 0, 10);
        // Room for 4 × 2 queued datagrams: 20 queued flush twice on the way.
        for k in 0..20 {
            b.send_reply(tx.as_raw_fd(), rx.local_addr().unwrap(), k % 2, 10);
        }
        assert_eq!(b.flush(), (20, 0));
    }

    /// A batch with GSO off sends every datagram alone, as before.
    #[test]
    fn gso_off_sends_one_message_per_datagram() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut b = Batch::new(4, 0, 10);
        for j in 0..4 {
            b.send_reply(tx.as_raw_fd(), rx.local_addr().unwrap(), j, 10);
        }
        assert_eq!(b.flush(), (4, 0));
        assert_eq!((b.gso_stats().gso_sends, b.gso_stats().single), (0, 4));
    }
}
