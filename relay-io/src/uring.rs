//! The io_uring backend.
//!
//! - One ring per shard, SINGLE_ISSUER with DEFER_TASKRUN (or COOP_TASKRUN,
//!   or neither: detected at start).
//! - Every socket has a multishot RecvMsg drawing from one provided buffer
//!   ring. The `msghdr` template asks for a 32-byte name area, so that each
//!   buffer starts with the 16-byte `io_uring_recvmsg_out`, the peer address,
//!   and then the payload at offset 48 = [`PEER_HEADROOM`]: the bytes in
//!   front of a peer's payload are header the shard has already read, and a
//!   ChannelData or Data indication header is written there in place.
//! - Client → peer ChannelData is sent straight from its receive buffer at
//!   offset 4; peer → client leaves from the same buffer it arrived in. A
//!   buffer goes back to the ring when its send completes.
//! - The loop is [`crate::event_loop::run`]; this backend is its
//!   [`Driver`]. The completions there are at the start of a turn are
//!   taken off the queue `IoConfig::batch` at a time (the loop's scratch
//!   holds one batch, so no burst makes it grow) and handled through
//!   [`ShardState::on_datagram`]; the sends they cause are queued as SQEs
//!   and submitted with one `io_uring_enter` per loop turn; the server's
//!   timers run off a Timeout SQE; other threads wake the shard through an
//!   eventfd the ring polls.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use relay_core::server::{PEER_HEADROOM, PEER_TAILROOM};

use crate::egress::{Buf, REPLY_LEN, Transmit, Via};
use crate::event_loop::{self, Driver, Ready};
use crate::gso::{
    Coalescer, EMPTY_IOV, GRO_CONTROL_LEN, MAX_GRO_SEGMENTS, MAX_PARTS, MAX_SEGMENTS, Outgoing, Plan, SegmentCmsg,
    ZEROS, gro_segment, refused, segments,
};
use crate::shard::{BackendKind, Datagram, Segment, ShardState, SockKind};
use crate::sys::{from_sockaddr, to_sockaddr, zeroed_msghdr, zeroed_storage};

/// Size of `struct io_uring_recvmsg_out`.
const RECVMSG_OUT: usize = 16;
/// Name area asked of the kernel: room for a sockaddr_in6, and chosen so
/// that the payload starts exactly at `PEER_HEADROOM`.
const NAME_LEN: usize = PEER_HEADROOM - RECVMSG_OUT;
const _: () = assert!(NAME_LEN >= std::mem::size_of::<libc::sockaddr_in6>());

const BUF_GROUP: u16 = 0;

// user_data: the kind in the top byte, an index below.
const RECV: u64 = 1 << 56;
const SEND: u64 = 2 << 56;
const WAKE: u64 = 3 << 56;
const TIMER: u64 = 4 << 56;
const STREAMS: u64 = 5 << 56;
const KIND: u64 = 0xff << 56;

/// Checks that this kernel can run the backend.
pub fn probe() -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 0) {
        return Err(format!("kernel {} lacks multishot recvmsg (needs 6.0)", release.trim()));
    }
    let ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => "io_uring_setup not permitted (seccomp profile or kernel.io_uring_disabled)".to_owned(),
        Some(libc::ENOSYS) => "the kernel has no io_uring".to_owned(),
        _ => format!("io_uring_setup failed: {e}"),
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "recvmsg"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::PollAdd::CODE, "poll_add"),
        (opcode::Timeout::CODE, "timeout"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks {name}"));
        }
    }
    Ok(())
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        },
        |b| {
            b.setup_single_issuer().setup_coop_taskrun();
        },
        |_| {},
    ];
    let mut last = None;
    for f in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(entries * 4);
        f(&mut b);
        match b.build(entries) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
}

/// Provided buffers: `count` buffers of `len` bytes and the ring the kernel
/// takes them from. Allocated once; never referenced as a whole, only one
/// buffer at a time while the kernel has handed it over.
struct BufRing {
    bufs: NonNull<u8>,
    bufs_layout: std::alloc::Layout,
    ring: NonNull<BufRingEntry>,
    ring_layout: std::alloc::Layout,
    count: u16,
    len: usize,
    tail: u16,
}

impl BufRing {
    fn new(count: u16, len: usize) -> io::Result<BufRing> {
        let bufs_layout = std::alloc::Layout::from_size_align(usize::from(count) * len, 64)
            .map_err(|_| io::Error::other("buffer layout"))?;
        let ring_layout =
            std::alloc::Layout::from_size_align(usize::from(count) * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|_| io::Error::other("ring layout"))?;
        // SAFETY: both layouts have a non-zero size (count > 0, len > 0).
        let bufs = NonNull::new(unsafe { std::alloc::alloc_zeroed(bufs_layout) }).ok_or(io::ErrorKind::OutOfMemory)?;
        // SAFETY: as above.
        let ring = NonNull::new(unsafe { std::alloc::alloc_zeroed(ring_layout) }.cast::<BufRingEntry>())
            .ok_or(io::ErrorKind::OutOfMemory)?;
        Ok(BufRing { bufs, bufs_layout, ring, ring_layout, count, len, tail: 0 })
    }

    fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the ring memory is page aligned, holds `count` entries and
        // lives until `self` is dropped, after the io_uring (see `run`).
        unsafe { ring.submitter().register_buf_ring_with_flags(self.ring.as_ptr() as u64, self.count, BUF_GROUP, 0) }
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn give(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: `tail & mask` < count indexes the ring allocation; the
        // kernel reads entries only up to the published tail, which is not
        // yet advanced past this one.
        let entry = unsafe { &mut *self.ring.as_ptr().add(usize::from(self.tail & mask)) };
        // SAFETY: bid < count, so the buffer lies within the allocation.
        entry.set_addr(unsafe { self.bufs.as_ptr().add(usize::from(bid) * self.len) } as u64);
        entry.set_len(self.len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in the first entry of the ring, which
        // the kernel reads atomically; the release store publishes the entry
        // written above.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// The whole buffer `bid`, which the kernel handed over in a completion.
    fn buf(&mut self, bid: u16) -> &mut [u8] {
        assert!(bid < self.count);
        // SAFETY: bid is in range; the kernel gave this buffer to us (it is
        // not in the ring until `give`), and `&mut self` keeps the slice
        // unique on our side.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(usize::from(bid) * self.len), self.len) }
    }
}

impl BufRing {
    /// Buffer `bid`, read-only (see [`BufRing::buf`]).
    fn buf_ref(&self, bid: u16) -> &[u8] {
        assert!(bid < self.count);
        // SAFETY: as for `buf`; `&self` keeps it from being written
        // meanwhile on our side.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(usize::from(bid) * self.len), self.len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts.
        unsafe {
            std::alloc::dealloc(self.bufs.as_ptr(), self.bufs_layout);
            std::alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
        }
    }
}

/// What a queued datagram's memory is (a [`Datagram::owner`]): a ring
/// buffer, which goes back to the kernel when the last send from it
/// completes, or a reply buffer.
const OWN_RING: u32 = 0;
const OWN_REPLY: u32 = 1 << 31;

/// Everything a SendMsg SQE points at, kept in place until it completes:
/// one datagram (a single slot), or up to [`MAX_SEGMENTS`] of one flow
/// sent with `UDP_SEGMENT` (a GSO slot).
struct SendSlot {
    hdr: libc::msghdr,
    name: libc::sockaddr_storage,
    cmsg: SegmentCmsg,
    fd: i32,
    /// The datagrams' parts, in order.
    iov: Box<[libc::iovec]>,
    /// Per datagram: its owner and how many of `iov` it has.
    owners: Box<[(u32, u8)]>,
    count: usize,
}

impl SendSlot {
    fn new(datagrams: usize) -> SendSlot {
        SendSlot {
            hdr: zeroed_msghdr(),
            name: zeroed_storage(),
            cmsg: SegmentCmsg::new(0),
            fd: -1,
            iov: vec![EMPTY_IOV; datagrams * MAX_PARTS].into_boxed_slice(),
            owners: vec![(0, 0); datagrams].into_boxed_slice(),
            count: 0,
        }
    }
}

/// Fixed pools for in-flight sends and reply buffers.
struct Sends {
    /// Single slots first, then GSO slots.
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
    free_gso: Vec<u32>,
    singles: usize,
    replies: Box<[u8]>,
    free_replies: Vec<usize>,
}

impl Sends {
    fn new(singles: usize, gso: usize, replies: usize) -> Sends {
        let slots =
            (0..singles).map(|_| SendSlot::new(1)).chain((0..gso).map(|_| SendSlot::new(MAX_SEGMENTS))).collect();
        Sends {
            slots,
            free: (0..singles as u32).rev().collect(),
            free_gso: (singles as u32..(singles + gso) as u32).rev().collect(),
            singles,
            replies: vec![0u8; replies * REPLY_LEN].into_boxed_slice(),
            free_replies: (0..replies).rev().collect(),
        }
    }

    fn idle(&self) -> bool {
        self.free.len() + self.free_gso.len() == self.slots.len()
    }
}

struct Uring {
    ring: IoUring,
    bufs: BufRing,
    /// Sends in flight (and the dispatch itself, while it works on a
    /// buffer) that hold each ring buffer.
    refs: Box<[u16]>,
    /// With GRO: a side header area per segment of each buffer (the
    /// header of a coalesced segment framed out of place).
    heads: Box<[[u8; PEER_HEADROOM]]>,
    sends: Sends,
    /// The turn's datagrams, grouped into sends at its end.
    out: Coalescer,
    msg_template: Box<libc::msghdr>,
    /// Where a received payload starts in its buffer: after the
    /// `io_uring_recvmsg_out`, the name area and (with GRO) the control
    /// area; at least [`PEER_HEADROOM`].
    payload_at: usize,
    rearm: Vec<usize>,
    /// Scratch for `rearm`, swapped each turn so neither reallocates.
    rearm_now: Vec<usize>,
    timer_armed: bool,
    timespec: Box<Timespec>,
    /// Completions taken off the queue, one batch at a time
    /// (`IoConfig::batch`): (user data, result, flags).
    cqes: Vec<(u64, i32, u32)>,
}

/// Runs a shard on io_uring until it is stopped or has drained.
pub fn run(st: &mut ShardState, batch: usize, max_datagram: usize) -> io::Result<()> {
    let gro = st.batching.gro;
    let control = if gro { GRO_CONTROL_LEN } else { 0 };
    let payload_at = RECVMSG_OUT + NAME_LEN + control;
    // With GRO a buffer may hold a whole coalesced burst (up to 64 KiB);
    // fewer of them, since one holds many datagrams. Their memory is
    // touched (resident) only as far as traffic fills it.
    let (payload, buffers): (usize, u16) =
        if gro { (crate::portable::GRO_BUFFER.max(max_datagram), 512) } else { (max_datagram, 4096) };
    let buf_len = payload_at + payload + PEER_TAILROOM + 1;
    let ring = build_ring(4096)?;
    let bufs = BufRing::new(buffers, buf_len)?;
    bufs.register(&ring)?;
    let mut msg_template = Box::new(zeroed_msghdr());
    msg_template.msg_namelen = NAME_LEN as libc::socklen_t;
    msg_template.msg_controllen = control as _;
    let mut out = Coalescer::new(batch.max(1) * 8, st.batching.gso);
    // Every socket's entry now, so that a fallback later allocates nothing.
    for s in &st.udp.socks {
        out.set_gso(s.socket.as_raw_fd(), st.batching.gso);
    }
    let mut u = Uring {
        ring,
        bufs,
        refs: vec![0u16; usize::from(buffers)].into_boxed_slice(),
        heads: if gro {
            vec![[0u8; PEER_HEADROOM]; usize::from(buffers) * MAX_GRO_SEGMENTS].into_boxed_slice()
        } else {
            Box::new([])
        },
        // Single sends: one per buffer and more (with GRO a buffer feeds
        // several); GSO slots: with GRO most sends are plans.
        sends: if gro {
            Sends::new(4096 + 1024, 1024, 1024)
        } else {
            Sends::new(usize::from(buffers) + 1024, 256, 1024)
        },
        out,
        msg_template,
        payload_at,
        rearm: (0..st.udp.socks.len()).collect(),
        rearm_now: Vec::with_capacity(st.udp.socks.len()),
        timer_armed: false,
        timespec: Box::new(Timespec::new()),
        cqes: Vec::with_capacity(batch.max(1)),
    };
    for bid in 0..buffers {
        u.bufs.give(bid);
    }
    u.arm_wake(st);
    if !st.streams.is_empty() {
        u.arm_streams(st);
    }
    let result = event_loop::run(st, &mut u);
    // The ring goes first (its Drop waits for nothing but closes the
    // kernel's view of the buffers), then the buffers.
    drop(u.ring);
    drop(u.bufs);
    result
}

impl Driver for Uring {
    const KIND: BackendKind = BackendKind::IoUring;

    /// Re-arms the receives that ended and the timer, then submits what the
    /// last turn queued and waits, in one `io_uring_enter`.
    fn wait(&mut self, st: &mut ShardState, timeout: Duration) -> io::Result<()> {
        std::mem::swap(&mut self.rearm, &mut self.rearm_now);
        for k in 0..self.rearm_now.len() {
            let i = self.rearm_now[k];
            self.arm_recv(st, i);
        }
        self.rearm_now.clear();
        if !self.timer_armed {
            self.arm_timer(timeout.max(Duration::from_millis(1)));
        }
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Handles the completions there are now, a batch at a time; the sends
    /// they cause are queued for the next turn's submit.
    fn dispatch(&mut self, st: &mut ShardState, now: Instant) -> Ready {
        let mut ready = Ready::default();
        // Those there now: any that arrive meanwhile wait for the next turn.
        let mut left = self.ring.completion().len();
        while left > 0 && self.reap(left) > 0 {
            left -= self.cqes.len();
            for k in 0..self.cqes.len() {
                let (data, res, flags) = self.cqes[k];
                match data & KIND {
                    RECV => self.on_recv(st, (data & !KIND) as usize, res, flags, now),
                    SEND => self.on_send((data & !KIND) as u32, res, st),
                    WAKE => {
                        ready.control = true;
                        if !cqueue::more(flags) {
                            self.arm_wake(st);
                        }
                    }
                    TIMER => self.timer_armed = false,
                    STREAMS => {
                        ready.streams = true;
                        if !cqueue::more(flags) {
                            self.arm_streams(st);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.flush_out(st);
        st.udp_stats = self.out.stats;
        ready
    }

    fn finish(&mut self, st: &mut ShardState) {
        self.flush_out(st);
        self.flush_sends(st);
    }
}

impl Uring {
    /// Queues an SQE; false when it could not be (the submission queue
    /// full and the kernel not taking it), so that the caller undoes what
    /// the entry would have released on completion.
    fn push(&mut self, e: squeue::Entry) -> bool {
        // SAFETY: every entry pushed points at memory owned by `self` (the
        // msghdr template, send slots, buffers, timespec) that stays in
        // place until its completion is reaped.
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            // Queue full: hand what is queued to the kernel first.
            if self.ring.submit().is_err() {
                return false;
            }
        }
        true
    }

    /// A send SQE of `slot` could not be queued: its datagrams are lost
    /// (counted), its holds released and the slot freed.
    fn unsent(&mut self, slot: u32, st: &mut ShardState) {
        let i = slot as usize;
        let count = self.sends.slots[i].count;
        st.send_failures += count as u64;
        for k in 0..count {
            let (owner, _) = self.sends.slots[i].owners[k];
            self.release(owner);
        }
        self.free_slot(slot);
    }

    fn arm_recv(&mut self, st: &ShardState, index: usize) {
        let fd = st.udp.socks[index].socket.as_raw_fd();
        let e =
            opcode::RecvMsgMulti::new(Fd(fd), &*self.msg_template, BUF_GROUP).build().user_data(RECV | index as u64);
        if !self.push(e) {
            self.rearm.push(index);
        }
    }

    fn arm_wake(&mut self, st: &ShardState) {
        let e = opcode::PollAdd::new(Fd(st.wake.raw()), libc::POLLIN as u32).multi(true).build().user_data(WAKE);
        self.push(e);
    }

    fn arm_streams(&mut self, st: &ShardState) {
        let e = opcode::PollAdd::new(Fd(st.streams.fd()), libc::POLLIN as u32).multi(true).build().user_data(STREAMS);
        self.push(e);
    }

    fn arm_timer(&mut self, d: Duration) {
        *self.timespec = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
        let e = opcode::Timeout::new(&*self.timespec).build().user_data(TIMER);
        self.timer_armed = self.push(e);
    }

    /// Before exiting: lets queued sends (the last responses) complete,
    /// waiting at most 100 ms.
    fn flush_sends(&mut self, st: &mut ShardState) {
        let deadline = Instant::now() + Duration::from_millis(100);
        while !self.sends.idle() && Instant::now() < deadline {
            let ts = Timespec::new().nsec(10_000_000);
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            while self.reap(usize::MAX) > 0 {
                for k in 0..self.cqes.len() {
                    let (data, res, _) = self.cqes[k];
                    if data & KIND == SEND {
                        self.on_send((data & !KIND) as u32, res, st);
                    }
                }
            }
        }
    }

    /// Takes up to one batch (and at most `max`) of completions off the
    /// queue into `cqes`; returns how many.
    fn reap(&mut self, max: usize) -> usize {
        self.cqes.clear();
        let n = max.min(self.cqes.capacity());
        self.cqes.extend(self.ring.completion().take(n).map(|c| (c.user_data(), c.result(), c.flags())));
        self.cqes.len()
    }

    fn on_send(&mut self, slot: u32, res: i32, st: &mut ShardState) {
        let i = slot as usize;
        let count = self.sends.slots[i].count;
        let refusal = if res < 0 && count > 1 { refused(-res) } else { None };
        if let Some(fall_back) = refusal {
            // Refused as a GSO send (see gso::refused): the datagrams go
            // one by one, from where they lie (the slot's holds pass to
            // the single sends, counted when they complete), and for good
            // on this socket after EIO.
            let fd = self.sends.slots[i].fd;
            if fall_back {
                self.out.fall_back(fd);
            }
            self.resend_one_by_one(slot, st);
            return;
        }
        if res < 0 {
            st.send_failures += count as u64;
        } else {
            self.out.count_sent(count);
        }
        for k in 0..count {
            let (owner, _) = self.sends.slots[i].owners[k];
            self.release(owner);
        }
        self.free_slot(slot);
    }

    fn free_slot(&mut self, slot: u32) {
        if (slot as usize) < self.sends.singles {
            self.sends.free.push(slot);
        } else {
            self.sends.free_gso.push(slot);
        }
    }

    /// Sends GSO slot `slot`'s datagrams one SendMsg each.
    fn resend_one_by_one(&mut self, slot: u32, st: &mut ShardState) {
        let i = slot as usize;
        let (fd, count) = (self.sends.slots[i].fd, self.sends.slots[i].count);
        let dest = from_sockaddr(&self.sends.slots[i].name, self.sends.slots[i].hdr.msg_namelen);
        let mut first = 0;
        for k in 0..count {
            let (owner, parts) = self.sends.slots[i].owners[k];
            let parts = usize::from(parts);
            let mut d = match dest {
                Some(dest) => Outgoing::new(fd, dest, &[], owner),
                None => {
                    st.send_failures += 1;
                    self.release(owner);
                    first += parts;
                    continue;
                }
            };
            for v in &self.sends.slots[i].iov[first..first + parts] {
                d.push_raw(v.iov_base.cast(), v.iov_len);
            }
            first += parts;
            self.submit_single(&d, st);
        }
        self.free_slot(slot);
    }

    /// Drops one hold on a datagram's memory.
    fn release(&mut self, owner: u32) {
        if owner & OWN_REPLY != 0 {
            self.sends.free_replies.push((owner & !OWN_REPLY) as usize);
        } else {
            self.unhold(owner as u16);
        }
    }

    /// Drops one hold on ring buffer `bid`; the last gives it back.
    fn unhold(&mut self, bid: u16) {
        let r = &mut self.refs[usize::from(bid)];
        debug_assert!(*r > 0, "buffer {bid} released more often than held");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.bufs.give(bid);
        }
    }

    fn on_recv(&mut self, st: &mut ShardState, index: usize, res: i32, flags: u32, now: Instant) {
        if !cqueue::more(flags) {
            // The multishot ended (ENOBUFS, an error, or the kernel's
            // choice): arm it again at the end of this turn.
            self.rearm.push(index);
        }
        let Some(bid) = cqueue::buffer_select(flags) else { return };
        if res < 0 {
            self.bufs.give(bid);
            return;
        }
        // The dispatch's own hold, dropped at the end: every send queued
        // from the buffer adds one.
        debug_assert_eq!(self.refs[usize::from(bid)], 0, "buffer {bid} handed over while held");
        self.refs[usize::from(bid)] = 1;
        self.on_buffer(st, index, bid, res as usize, now);
        self.unhold(bid);
    }

    /// Handles the datagram (or, coalesced, the datagrams) in buffer `bid`.
    fn on_buffer(&mut self, st: &mut ShardState, index: usize, bid: u16, len: usize, now: Instant) {
        let kind = st.udp.socks[index].kind;
        let fd = st.udp.socks[index].socket.as_raw_fd();
        let buf = self.bufs.buf(bid);
        let Ok(out) = io_uring::types::RecvMsgOut::parse(&buf[..len], &self.msg_template) else { return };
        let payload_len = out.payload_data().len();
        // A cut control area could hide a coalesced buffer's segment size:
        // dropped, as a cut datagram is.
        if out.is_payload_truncated() || out.is_name_data_truncated() || out.is_control_data_truncated() {
            return;
        }
        let segment = gro_segment(out.control_data()).unwrap_or(0);
        let mut name = zeroed_storage();
        let name_len = out.incoming_name_len() as usize;
        // Copy the peer address out of the buffer into a sockaddr_storage.
        {
            let src = out.name_data();
            let n = src.len().min(std::mem::size_of::<libc::sockaddr_storage>());
            copy_into_storage(&mut name, &src[..n]);
        }
        let Some(from) = from_sockaddr(&name, name_len as libc::socklen_t) else { return };
        // The server sees the buffer from PEER_HEADROOM in front of the
        // payload (the control area, read above, is free to overwrite).
        let base = self.payload_at - PEER_HEADROOM;
        if segment == 0 || segment >= payload_len {
            let Some(reply) = self.take_reply(kind) else { return };
            let reply_buf = match reply {
                Some(r) => &mut self.sends.replies[r * REPLY_LEN..(r + 1) * REPLY_LEN],
                None => &mut [][..],
            };
            let buf = &mut self.bufs.buf(bid)[base..];
            let tx = st.on_datagram(now, Datagram { fd, kind, from, len: payload_len }, buf, reply_buf);
            self.transmit(st, (bid, 0), reply, tx, now);
            return;
        }
        // Coalesced: every segment as the datagram it was (a sender's GSO
        // message holds at most MAX_GRO_SEGMENTS; any beyond are dropped,
        // counted, rather than framed without a side header area).
        let mut count = 0;
        let mut route = None;
        for (j, seg) in segments(payload_len, segment).enumerate() {
            count += 1;
            if j >= MAX_GRO_SEGMENTS {
                st.server.count_drop(relay_core::server::stats::Drop::TooLarge);
                continue;
            }
            let Some(reply) = self.take_reply(kind) else { continue };
            let reply_buf = match reply {
                Some(r) => &mut self.sends.replies[r * REPLY_LEN..(r + 1) * REPLY_LEN],
                None => &mut [][..],
            };
            let buf = &self.bufs.buf_ref(bid)[base..];
            let head = &mut self.heads[usize::from(bid) * MAX_GRO_SEGMENTS + j];
            let d = Datagram { fd, kind, from, len: seg.len() };
            let at = PEER_HEADROOM + seg.start;
            let tx = st.on_segment(now, d, Segment { buf, at, head }, reply_buf, &mut route);
            self.transmit(st, (bid, j), reply, tx, now);
        }
        self.out.stats.received(count);
    }

    /// A reply buffer for a client's datagram (`Some(None)` for a peer's,
    /// which is never answered); `None` when none is free: the datagram is
    /// dropped, as a full socket buffer would.
    fn take_reply(&mut self, kind: SockKind) -> Option<Option<usize>> {
        match kind {
            SockKind::Listener(_) => self.sends.free_replies.pop().map(Some),
            SockKind::Relay(_) => Some(None),
        }
    }

    /// Carries out what datagram (or segment) `seg` of buffer `bid` led
    /// to: a datagram queued from that buffer (held until its send
    /// completes) or from reply buffer `reply`, or a copy onto a stream's
    /// send queue; an unused reply buffer goes back at once.
    fn transmit(
        &mut self,
        st: &mut ShardState,
        (bid, seg): (u16, usize),
        reply: Option<usize>,
        tx: Option<Transmit>,
        now: Instant,
    ) {
        let reply_unused = |u: &mut Uring| {
            if let Some(r) = reply {
                u.sends.free_replies.push(r);
            }
        };
        let Some(tx) = tx else {
            reply_unused(self);
            return;
        };
        let base = self.payload_at - PEER_HEADROOM;
        match (tx.via, tx.buf, reply) {
            (Via::Udp { fd, dest }, Buf::Reply, Some(r)) => {
                let bytes = &self.sends.replies[r * REPLY_LEN + tx.range.start..r * REPLY_LEN + tx.range.end];
                self.queue(Outgoing::new(fd, dest, bytes, OWN_REPLY | r as u32), st);
            }
            (Via::Udp { fd, dest }, Buf::Packet, _) => {
                reply_unused(self);
                let mut d = Outgoing::new(fd, dest, &[], OWN_RING | u32::from(bid));
                if let Some(head) = self.heads.get(usize::from(bid) * MAX_GRO_SEGMENTS + seg).filter(|_| tx.head > 0) {
                    d.push(&head[PEER_HEADROOM - usize::from(tx.head).min(PEER_HEADROOM)..]);
                }
                d.push(&self.bufs.buf_ref(bid)[base + tx.range.start..base + tx.range.end]);
                d.push(&ZEROS[..usize::from(tx.pad).min(ZEROS.len())]);
                self.refs[usize::from(bid)] += 1;
                self.queue(d, st);
            }
            (Via::Stream { conn }, Buf::Packet, _) => {
                reply_unused(self);
                let buf = &self.bufs.buf_ref(bid)[base..];
                if let Some(head) = self.heads.get(usize::from(bid) * MAX_GRO_SEGMENTS + seg).filter(|_| tx.head > 0) {
                    st.deliver_stream_segment(conn, &tx, buf, head, now);
                } else {
                    st.deliver_stream(conn, &buf[tx.range], now);
                }
            }
            // Not produced for datagrams (replies go to UDP clients; no
            // hand-over copy is made).
            _ => reply_unused(self),
        }
    }

    /// Queues a datagram for the end of the turn (sending what is queued
    /// first when the queue is full).
    fn queue(&mut self, d: Outgoing, st: &mut ShardState) {
        if self.out.is_full() {
            self.flush_out(st);
        }
        self.out.push(d);
    }

    /// Turns the queued datagrams into SendMsg SQEs: a plan of several
    /// datagrams into one with `UDP_SEGMENT` (one by one when no GSO slot
    /// is free), a single datagram into a plain one.
    fn flush_out(&mut self, st: &mut ShardState) {
        if self.out.is_empty() {
            return;
        }
        let n = self.out.plan();
        for k in 0..n {
            let p = self.out.plans()[k];
            let gso_slot = if p.is_gso() { self.sends.free_gso.pop() } else { None };
            match (p.is_gso(), gso_slot) {
                (true, Some(slot)) => self.submit_gso(slot, &p, st),
                (true, None) => {
                    for m in 0..p.count {
                        let d = *self.out.members(&p).nth(m).expect("plan member");
                        self.submit_single(&d, st);
                    }
                }
                (false, _) => {
                    let d = *self.out.members(&p).next().expect("plan member");
                    self.submit_single(&d, st);
                }
            }
        }
        self.out.clear();
    }

    /// Queues a SendMsg of one datagram (its holds pass to the send).
    fn submit_single(&mut self, d: &Outgoing, st: &mut ShardState) {
        let Some(slot) = self.sends.free.pop() else {
            st.send_failures += 1;
            self.release(d.owner);
            return;
        };
        let s = &mut self.sends.slots[slot as usize];
        s.fd = d.fd;
        s.count = 1;
        s.owners[0] = (d.owner, d.parts);
        s.iov[..d.iov().len()].copy_from_slice(d.iov());
        let name_len = to_sockaddr(&d.dest, &mut s.name);
        s.hdr = zeroed_msghdr();
        s.hdr.msg_name = (&mut s.name as *mut libc::sockaddr_storage).cast();
        s.hdr.msg_namelen = name_len;
        s.hdr.msg_iov = s.iov.as_mut_ptr();
        s.hdr.msg_iovlen = d.iov().len() as _;
        let e = opcode::SendMsg::new(Fd(d.fd), &s.hdr).build().user_data(SEND | u64::from(slot));
        if !self.push(e) {
            self.unsent(slot, st);
        }
    }

    /// Queues a SendMsg of plan `p` with `UDP_SEGMENT` from GSO slot `slot`.
    fn submit_gso(&mut self, slot: u32, p: &Plan, st: &mut ShardState) {
        let s = &mut self.sends.slots[slot as usize];
        s.fd = p.fd;
        s.count = p.count;
        for (k, d) in self.out.members(p).enumerate() {
            s.owners[k] = (d.owner, d.parts);
        }
        let n = self.out.fill_iov(p, &mut s.iov);
        s.cmsg = SegmentCmsg::new(p.size as u16);
        let name_len = to_sockaddr(&p.dest, &mut s.name);
        s.hdr = zeroed_msghdr();
        s.hdr.msg_name = (&mut s.name as *mut libc::sockaddr_storage).cast();
        s.hdr.msg_namelen = name_len;
        s.hdr.msg_iov = s.iov.as_mut_ptr();
        s.hdr.msg_iovlen = n as _;
        s.hdr.msg_control = (&mut s.cmsg as *mut SegmentCmsg).cast();
        s.hdr.msg_controllen = SegmentCmsg::space() as _;
        let e = opcode::SendMsg::new(Fd(p.fd), &s.hdr).build().user_data(SEND | u64::from(slot));
        if !self.push(e) {
            self.unsent(slot, st);
        }
    }
}

fn copy_into_storage(dst: &mut libc::sockaddr_storage, src: &[u8]) {
    // SAFETY: src.len() <= size_of::<sockaddr_storage>() (checked by the
    // caller), and both regions are valid and distinct.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), (dst as *mut libc::sockaddr_storage).cast::<u8>(), src.len())
    };
}
