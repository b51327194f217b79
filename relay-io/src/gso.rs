//! Batched UDP: generic segmentation offload on send (`UDP_SEGMENT`) and
//! generic receive offload on receive (`UDP_GRO`), written once for both
//! backends and the load generator.
//!
//! **Sending.** Every UDP datagram a loop turn sends is queued in a
//! [`Coalescer`] as an iovec list pointing at its bytes where they already
//! lie (a payload inside its receive buffer, a frame written in place, a
//! header from a small side array): nothing is copied. At the end of the
//! turn, [`Coalescer::plan`] groups the datagrams that leave the same
//! socket for the same destination with the same size (the last of a
//! group may be shorter) into [`Plan`]s — one `sendmsg` each, with a
//! `UDP_SEGMENT` control message when a plan holds more than one datagram:
//! the kernel walks its stack once for the whole group and cuts the
//! segments at the end. Order within a flow is kept; flows are not ordered
//! against each other (UDP never promised that). A plan holds at most
//! [`MAX_SEGMENTS`] datagrams and [`MAX_BYTES`] bytes, the kernel's limits.
//!
//! **Fallback.** A GSO send the kernel refuses (see [`refused`]) is sent
//! again one datagram per message from where it lies; a socket whose GSO
//! sends fail with `EIO` (a device that cannot segment) is marked with
//! [`Coalescer::fall_back`] and sends one datagram per message from then
//! on, counted; a kernel without `UDP_SEGMENT` turns GSO off at start.
//!
//! **Receiving.** With [`enable_gro`] the kernel may deliver several
//! datagrams of one flow in one buffer, all of [`gro_segment`]'s size but
//! the last; the backends hand each segment to the server as the datagram
//! it was.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// `UDP_SEGMENT` (linux/udp.h): the GSO segment size, as a socket option or
/// a control message.
pub const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (linux/udp.h): deliver coalesced datagrams, with their
/// segment size in a control message.
pub const UDP_GRO: libc::c_int = 104;

/// Most datagrams one GSO send carries: the kernel's `UDP_MAX_SEGMENTS`
/// as it long was (newer kernels take 128; 64 is accepted by all).
pub const MAX_SEGMENTS: usize = 64;
/// Most datagrams a coalesced (GRO) receive may hold: a sender on a newer
/// kernel may have sent 128 in one GSO message (`UDP_MAX_SEGMENTS` was
/// raised to 128), which reaches a GRO socket on the same host whole.
pub const MAX_GRO_SEGMENTS: usize = 128;
/// Most payload bytes one GSO send may carry: an IP datagram's 65,535
/// bytes less the UDP header and the larger (IPv6) IP header.
pub const MAX_BYTES: usize = u16::MAX as usize - 8 - 40;
/// Parts (iovecs) one datagram may have: a header, the payload, padding.
pub const MAX_PARTS: usize = 3;
/// Bytes a receive's control area needs for the `UDP_GRO` message (with
/// room to spare).
pub const GRO_CONTROL_LEN: usize = 64;

/// Zero bytes for padding parts (a Data indication's, ChannelData's on
/// streams): sent from here, so that no buffer needs tailroom.
pub static ZEROS: [u8; 4] = [0; 4];

/// Turns on `UDP_GRO` for a socket.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a live c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// True when the kernel knows `UDP_SEGMENT` for this socket (4.18 and
/// later); whether the device can do it is only learnt from a send.
pub fn gso_supported(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: writes at most `len` bytes into a live c_int.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_UDP, UDP_SEGMENT, (&mut v as *mut libc::c_int).cast(), &mut len) };
    r == 0
}

/// The `UDP_SEGMENT` control message of one GSO send, laid out as
/// `CMSG_SPACE(sizeof(u16))` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

// The data must follow the header exactly where CMSG_DATA puts it.
const _: () = assert!(std::mem::offset_of!(SegmentCmsg, size) == size_of::<libc::cmsghdr>());

impl SegmentCmsg {
    /// A control message for segments of `size` bytes.
    pub fn new(size: u16) -> SegmentCmsg {
        // SAFETY: cmsghdr is plain data; all-zero is a valid value.
        let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
        hdr.cmsg_len = (size_of::<libc::cmsghdr>() + size_of::<u16>()) as _;
        hdr.cmsg_level = libc::SOL_UDP;
        hdr.cmsg_type = UDP_SEGMENT;
        SegmentCmsg { hdr, size, _pad: [0; 6] }
    }

    /// The bytes to point `msg_control` at (`msg_controllen` is their
    /// length).
    pub fn space() -> usize {
        size_of::<SegmentCmsg>()
    }
}

/// What a GSO send refused with `errno` means: `Some(fall_back)` when its
/// datagrams should go again one by one — `EIO`: the device cannot
/// segment (no checksum offload, on kernels that do not segment in
/// software; IPsec), so the socket falls back for good (`true`);
/// `EMSGSIZE` or `EINVAL`: a segment larger than the path's MTU, which a
/// single send may still fragment (`false`: only this send) — and `None`
/// when the datagrams are lost as any datagram would be (a full buffer,
/// an unreachable destination).
pub fn refused(errno: i32) -> Option<bool> {
    match errno {
        libc::EIO => Some(true),
        libc::EMSGSIZE | libc::EINVAL => Some(false),
        _ => None,
    }
}

/// The segment size of a coalesced receive, read from its control bytes
/// (`msg_control` as the kernel filled it): `None` when the datagram came
/// alone.
pub fn gro_segment(control: &[u8]) -> Option<usize> {
    let hdr = size_of::<libc::cmsghdr>();
    let align = size_of::<usize>();
    let mut at = 0;
    while at + hdr <= control.len() {
        let word = |o: usize, n: usize| &control[at + o..at + o + n];
        let len = usize::from_ne_bytes(word(0, size_of::<usize>()).try_into().ok()?);
        let level = i32::from_ne_bytes(word(size_of::<usize>(), 4).try_into().ok()?);
        let ty = i32::from_ne_bytes(word(size_of::<usize>() + 4, 4).try_into().ok()?);
        if len < hdr || at + len > control.len() {
            return None;
        }
        if level == libc::SOL_UDP && ty == UDP_GRO && len >= hdr + 4 {
            let v = i32::from_ne_bytes(control[at + hdr..at + hdr + 4].try_into().ok()?);
            return usize::try_from(v).ok().filter(|&v| v > 0);
        }
        at += len.next_multiple_of(align);
    }
    None
}

/// The segments of a received buffer of `len` bytes that the kernel
/// coalesced with segment size `segment` (0: one datagram): their ranges,
/// relative to the buffer's payload.
pub fn segments(len: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let step = if segment == 0 || segment >= len { len.max(1) } else { segment };
    (0..len.max(1)).step_by(step).map(move |s| s..(s + step).min(len))
}

/// One queued datagram: where it goes, and its bytes as up to
/// [`MAX_PARTS`] iovecs.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    /// The socket it leaves from.
    pub fd: RawFd,
    /// Where it goes.
    pub dest: SocketAddr,
    /// Its bytes, in order.
    pub iov: [libc::iovec; MAX_PARTS],
    /// How many of `iov` are used.
    pub parts: u8,
    /// Its length (the parts' sum).
    pub len: usize,
    /// The backend's tag for the memory it lies in (released when its
    /// send completes).
    pub owner: u32,
}

impl Outgoing {
    /// A datagram of one part.
    pub fn new(fd: RawFd, dest: SocketAddr, bytes: &[u8], owner: u32) -> Outgoing {
        let mut d = Outgoing { fd, dest, iov: [EMPTY_IOV; MAX_PARTS], parts: 0, len: 0, owner };
        d.push(bytes);
        d
    }

    /// Appends a part (an empty one is skipped; a fourth is a bug).
    pub fn push(&mut self, bytes: &[u8]) {
        self.push_raw(bytes.as_ptr().cast_mut(), bytes.len());
    }

    /// Appends `len` bytes at `ptr` as a part (for memory the caller owns
    /// and keeps in place until the send completes).
    pub fn push_raw(&mut self, ptr: *mut u8, len: usize) {
        if len == 0 {
            return;
        }
        debug_assert!(usize::from(self.parts) < MAX_PARTS);
        let i = usize::from(self.parts).min(MAX_PARTS - 1);
        self.iov[i] = libc::iovec { iov_base: ptr.cast(), iov_len: len };
        self.parts = (i + 1) as u8;
        self.len += len;
    }

    /// Its iovecs.
    pub fn iov(&self) -> &[libc::iovec] {
        &self.iov[..usize::from(self.parts)]
    }
}

/// An empty iovec.
pub const EMPTY_IOV: libc::iovec = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };

/// One send: datagrams of one flow, `size` bytes each but the last.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The socket.
    pub fd: RawFd,
    /// The destination.
    pub dest: SocketAddr,
    /// The segment size (the first datagram's length).
    pub size: usize,
    /// Where its datagrams' indices start in [`Coalescer::members`].
    pub first: usize,
    /// How many datagrams.
    pub count: usize,
    /// Their bytes together.
    pub bytes: usize,
}

impl Plan {
    /// More than one datagram: sent with `UDP_SEGMENT`.
    pub fn is_gso(&self) -> bool {
        self.count > 1
    }
}

/// Counters of batched sending and receiving, per shard (or generator
/// thread).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GsoStats {
    /// Datagrams that left in a GSO send with others.
    pub batched: u64,
    /// Datagrams that left alone.
    pub single: u64,
    /// GSO sends (each carrying two or more datagrams).
    pub gso_sends: u64,
    /// Sockets that fell back to single sends (a GSO send failed with
    /// `EIO`; a kernel without `UDP_SEGMENT` turns GSO off at start, with
    /// a log line, and is not counted here).
    pub fallbacks: u64,
    /// Datagrams received coalesced (each segment of a GRO buffer).
    pub gro_segments: u64,
    /// Buffers received holding more than one datagram.
    pub gro_buffers: u64,
}

impl GsoStats {
    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &GsoStats) {
        self.batched += other.batched;
        self.single += other.single;
        self.gso_sends += other.gso_sends;
        self.fallbacks += other.fallbacks;
        self.gro_segments += other.gro_segments;
        self.gro_buffers += other.gro_buffers;
    }

    /// Counts a received buffer of `segments` datagrams.
    #[inline]
    pub fn received(&mut self, segments: usize) {
        if segments > 1 {
            self.gro_buffers += 1;
            self.gro_segments += segments as u64;
        }
    }
}

/// The datagrams of one loop turn, grouped into sends. Allocated once:
/// queuing, planning and clearing allocate nothing.
pub struct Coalescer {
    queue: Vec<Outgoing>,
    /// Sort keys: socket, flow hash, then queue index (so that a flow's
    /// datagrams keep their order).
    keys: Vec<u128>,
    /// Queue indices, plan by plan.
    members: Vec<u32>,
    plans: Vec<Plan>,
    /// Sockets (by descriptor) that must not use GSO.
    no_gso: Vec<bool>,
    enabled: bool,
    /// The counters.
    pub stats: GsoStats,
}

impl Coalescer {
    /// Room for `capacity` datagrams per turn; `enabled` false sends every
    /// datagram alone (the setting that turns batching off).
    pub fn new(capacity: usize, enabled: bool) -> Coalescer {
        let capacity = capacity.max(1);
        Coalescer {
            queue: Vec::with_capacity(capacity),
            keys: Vec::with_capacity(capacity),
            members: Vec::with_capacity(capacity),
            plans: Vec::with_capacity(capacity),
            no_gso: Vec::new(),
            enabled,
            stats: GsoStats::default(),
        }
    }

    /// Allows or forbids GSO on socket `fd` (called at start for every
    /// socket, and when a socket falls back).
    pub fn set_gso(&mut self, fd: RawFd, on: bool) {
        let Ok(i) = usize::try_from(fd) else { return };
        if self.no_gso.len() <= i {
            self.no_gso.resize(i + 1, false);
        }
        self.no_gso[i] = !on;
    }

    /// Marks `fd` as unable to send with GSO, counting the fallback.
    pub fn fall_back(&mut self, fd: RawFd) {
        if self.gso_allowed(fd) {
            self.stats.fallbacks += 1;
        }
        self.set_gso(fd, false);
    }

    /// True when `fd` may send with GSO.
    #[inline]
    pub fn gso_allowed(&self, fd: RawFd) -> bool {
        self.enabled && usize::try_from(fd).is_ok_and(|i| !self.no_gso.get(i).copied().unwrap_or(false))
    }

    /// No room for another datagram this turn: plan and send first.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.queue.len() == self.queue.capacity()
    }

    /// Nothing queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a datagram; false (and nothing queued) when full.
    #[inline]
    pub fn push(&mut self, d: Outgoing) -> bool {
        if self.is_full() {
            return false;
        }
        self.queue.push(d);
        true
    }

    /// Groups the queue into sends; returns how many. Sends of one socket
    /// come together, so that a backend may hand them to the kernel in one
    /// `sendmmsg`.
    pub fn plan(&mut self) -> usize {
        self.keys.clear();
        self.members.clear();
        self.plans.clear();
        // Runs of consecutive datagrams of one flow (a coalesced receive's
        // segments come as one): the sort is over runs, not datagrams, and
        // each flow is compared once per run.
        let n = self.queue.len();
        let mut i = 0;
        while i < n {
            let (fd, dest) = (self.queue[i].fd, self.queue[i].dest);
            let mut j = i + 1;
            while j < n && self.queue[j].fd == fd && self.queue[j].dest == dest {
                j += 1;
            }
            // Socket, flow hash, then the run's start: runs of one flow keep
            // their order.
            let key = (u128::from(fd as u32) << 96)
                | (u128::from(flow_hash(&dest)) << 64)
                | ((i as u128) << 32)
                | (j - i) as u128;
            self.keys.push(key);
            i = j;
        }
        if !self.keys.is_sorted() {
            self.keys.sort_unstable();
        }
        // Whether the last plan may take another datagram (a shorter one
        // ends it: GSO cuts every segment at the first one's size).
        let mut open = false;
        for k in 0..self.keys.len() {
            let start = (self.keys[k] >> 32) as u32 as usize;
            let len = self.keys[k] as u32 as usize;
            let (fd, dest) = (self.queue[start].fd, self.queue[start].dest);
            let gso = self.gso_allowed(fd);
            // The last plan is this flow's: it may go on.
            let mut same_flow = self.plans.last().is_some_and(|p| p.fd == fd && p.dest == dest);
            for idx in start..start + len {
                let dlen = self.queue[idx].len;
                match self.plans.last_mut() {
                    Some(p)
                        if open
                            && same_flow
                            && gso
                            && dlen > 0
                            && dlen <= p.size
                            && p.count < MAX_SEGMENTS
                            && p.bytes + dlen <= MAX_BYTES =>
                    {
                        p.count += 1;
                        p.bytes += dlen;
                        open = dlen == p.size;
                    }
                    _ => {
                        let first = self.members.len();
                        self.plans.push(Plan { fd, dest, size: dlen, first, count: 1, bytes: dlen });
                        open = true;
                        same_flow = true;
                    }
                }
                self.members.push(idx as u32);
            }
        }
        self.plans.len()
    }

    /// The sends [`Coalescer::plan`] made.
    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    /// Plan `p`'s datagrams, in order.
    pub fn members<'a>(&'a self, p: &Plan) -> impl Iterator<Item = &'a Outgoing> + 'a {
        self.members[p.first..p.first + p.count].iter().map(|&i| &self.queue[i as usize])
    }

    /// Writes plan `p`'s iovecs (every part of every datagram, in order)
    /// into `out`; returns how many (at most `out.len()`).
    pub fn fill_iov(&self, p: &Plan, out: &mut [libc::iovec]) -> usize {
        let mut n = 0;
        for d in self.members(p) {
            for v in d.iov() {
                if n == out.len() {
                    return n;
                }
                out[n] = *v;
                n += 1;
            }
        }
        n
    }

    /// Empties the queue (after the plans are sent).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.plans.clear();
        self.members.clear();
        self.keys.clear();
    }

    /// Counts a send the kernel took: `datagrams` in one message (a GSO
    /// send when more than one). Backends count on success only, so that
    /// the counters never go back (a refused GSO send is counted as the
    /// single sends it became).
    #[inline]
    pub fn count_sent(&mut self, datagrams: usize) {
        if datagrams > 1 {
            self.stats.gso_sends += 1;
            self.stats.batched += datagrams as u64;
        } else {
            self.stats.single += datagrams as u64;
        }
    }
}

/// A cheap, well-mixed hash of a destination (grouping only: collisions
/// cost batching, never correctness, since plans compare the address).
#[inline]
fn flow_hash(a: &SocketAddr) -> u32 {
    let x = match a {
        SocketAddr::V4(v) => (u64::from(u32::from(*v.ip())) << 16) | u64::from(v.port()),
        SocketAddr::V6(v) => {
            let o = u128::from(*v.ip());
            ((o as u64) ^ ((o >> 64) as u64).rotate_left(17)) ^ u64::from(v.port())
        }
    };
    let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(fd: RawFd, dest: &str, bytes: &'static [u8], owner: u32) -> Outgoing {
        Outgoing::new(fd, dest.parse().unwrap(), bytes, owner)
    }

    static A: [u8; 100] = [1; 100];
    static B: [u8; 60] = [2; 60];

    fn plans(c: &mut Coalescer) -> Vec<(RawFd, usize, Vec<u32>)> {
        c.plan();
        c.plans().iter().map(|p| (p.fd, p.size, c.members(p).map(|d| d.owner).collect())).collect()
    }

    #[test]
    fn groups_by_socket_destination_and_size_keeping_flow_order() {
        let mut c = Coalescer::new(64, true);
        c.push(dg(5, "192.0.2.1:1", &A, 0));
        c.push(dg(6, "192.0.2.1:1", &A, 1));
        c.push(dg(5, "192.0.2.1:1", &A, 2));
        c.push(dg(5, "192.0.2.2:1", &A, 3));
        c.push(dg(5, "192.0.2.1:1", &B, 4)); // shorter: the last of the run
        c.push(dg(5, "192.0.2.1:1", &A, 5)); // after a shorter one: a new plan
        let mut p = plans(&mut c);
        p.sort();
        assert_eq!(p, vec![(5, 100, vec![0, 2, 4]), (5, 100, vec![3]), (5, 100, vec![5]), (6, 100, vec![1])]);
        // Counted when sent, not when planned.
        assert_eq!(c.stats, GsoStats::default());
        c.count_sent(3);
        c.count_sent(1);
        assert_eq!((c.stats.gso_sends, c.stats.batched, c.stats.single), (1, 3, 1));
    }

    #[test]
    fn runs_of_one_flow_split_by_another_join_one_plan() {
        let mut c = Coalescer::new(64, true);
        for (i, dest) in ["192.0.2.1:1", "192.0.2.1:1", "192.0.2.2:1", "192.0.2.2:1", "192.0.2.1:1", "192.0.2.1:1"]
            .iter()
            .enumerate()
        {
            c.push(dg(5, dest, &A, i as u32));
        }
        let mut p = plans(&mut c);
        p.sort();
        assert_eq!(p, vec![(5, 100, vec![0, 1, 4, 5]), (5, 100, vec![2, 3])]);
    }

    #[test]
    fn a_longer_datagram_starts_a_new_plan_and_limits_hold() {
        let mut c = Coalescer::new(200, true);
        c.push(dg(5, "192.0.2.1:1", &B, 0));
        c.push(dg(5, "192.0.2.1:1", &A, 1));
        c.push(dg(5, "192.0.2.1:1", &A, 2));
        let p = plans(&mut c);
        assert_eq!(p, vec![(5, 60, vec![0]), (5, 100, vec![1, 2])]);
        c.clear();
        for i in 0..150 {
            c.push(dg(5, "192.0.2.1:1", &A, i));
        }
        let p = plans(&mut c);
        assert_eq!(p.iter().map(|p| p.2.len()).collect::<Vec<_>>(), vec![64, 64, 22]);
        // Kept in order across plans.
        assert!(p.iter().flat_map(|p| p.2.clone()).eq(0..150));
    }

    #[test]
    fn the_byte_limit_cuts_plans() {
        static BIG: [u8; 1400] = [3; 1400];
        let mut c = Coalescer::new(64, true);
        for i in 0..60 {
            c.push(dg(5, "192.0.2.1:1", &BIG, i));
        }
        c.plan();
        for p in c.plans() {
            assert!(p.bytes <= MAX_BYTES);
        }
        assert_eq!(c.plans().len(), 2);
    }

    #[test]
    fn disabled_or_fallen_back_sockets_send_alone() {
        let mut c = Coalescer::new(64, false);
        c.push(dg(5, "192.0.2.1:1", &A, 0));
        c.push(dg(5, "192.0.2.1:1", &A, 1));
        assert_eq!(plans(&mut c).len(), 2);
        let mut c = Coalescer::new(64, true);
        c.fall_back(5);
        c.fall_back(5);
        assert_eq!(c.stats.fallbacks, 1);
        c.push(dg(5, "192.0.2.1:1", &A, 0));
        c.push(dg(5, "192.0.2.1:1", &A, 1));
        c.push(dg(6, "192.0.2.1:1", &A, 2));
        c.push(dg(6, "192.0.2.1:1", &A, 3));
        let p = plans(&mut c);
        assert_eq!(p, vec![(5, 100, vec![0]), (5, 100, vec![1]), (6, 100, vec![2, 3])]);
    }

    #[test]
    fn iovecs_of_a_plan_are_every_part_in_order() {
        static H: [u8; 4] = [0x40, 0, 0, 100];
        let mut c = Coalescer::new(8, true);
        for i in 0..3 {
            let mut d = Outgoing::new(5, "192.0.2.1:1".parse().unwrap(), &H, i);
            d.push(&A);
            d.push(&[]);
            c.push(d);
        }
        c.plan();
        let p = c.plans()[0];
        assert_eq!((p.count, p.size, p.bytes), (3, 104, 312));
        let mut iov = [EMPTY_IOV; 16];
        assert_eq!(c.fill_iov(&p, &mut iov), 6);
        assert_eq!(iov[0].iov_len, 4);
        assert_eq!(iov[1].iov_len, 100);
    }

    #[test]
    fn refused_sends() {
        assert_eq!(refused(libc::EIO), Some(true));
        assert_eq!(refused(libc::EMSGSIZE), Some(false));
        assert_eq!(refused(libc::EINVAL), Some(false));
        assert_eq!(refused(libc::EAGAIN), None);
        assert_eq!(refused(libc::ECONNREFUSED), None);
    }

    #[test]
    fn segments_of_a_coalesced_buffer() {
        assert_eq!(segments(250, 100).collect::<Vec<_>>(), vec![0..100, 100..200, 200..250]);
        assert_eq!(segments(200, 100).collect::<Vec<_>>(), vec![0..100, 100..200]);
        assert_eq!(segments(80, 0).collect::<Vec<_>>(), vec![0..80]);
        assert_eq!(segments(80, 100).collect::<Vec<_>>(), vec![0..80]);
        assert_eq!(segments(0, 0).collect::<Vec<_>>(), vec![0..0]);
    }

    #[test]
    fn control_message_parsing() {
        let hdr = size_of::<libc::cmsghdr>();
        let mut c = [0u8; 64];
        c[..8].copy_from_slice(&((hdr + 4) as u64).to_ne_bytes());
        c[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        c[12..16].copy_from_slice(&UDP_GRO.to_ne_bytes());
        c[16..20].copy_from_slice(&1200i32.to_ne_bytes());
        assert_eq!(gro_segment(&c[..24]), Some(1200));
        assert_eq!(gro_segment(&[]), None);
        // A length running past the buffer, or too short: nothing.
        c[..8].copy_from_slice(&1000u64.to_ne_bytes());
        assert_eq!(gro_segment(&c[..24]), None);
        c[..8].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(gro_segment(&c[..24]), None);
        let m = SegmentCmsg::new(1200);
        assert_eq!(m.hdr.cmsg_len, hdr + 2);
        assert_eq!(SegmentCmsg::space(), hdr + 8);
    }
}
