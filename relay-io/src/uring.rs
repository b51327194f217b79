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
use crate::shard::{BackendKind, Datagram, ShardState, SockKind};
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

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts.
        unsafe {
            std::alloc::dealloc(self.bufs.as_ptr(), self.bufs_layout);
            std::alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
        }
    }
}

/// Where a send's bytes live.
#[derive(Clone, Copy, Debug)]
enum SendBuf {
    Ring(u16),
    Reply(usize),
}

/// Everything a SendMsg SQE points at, kept in place until it completes.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    buf: SendBuf,
}

/// Fixed pools for in-flight sends and reply buffers.
struct Sends {
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
    replies: Box<[u8]>,
    free_replies: Vec<usize>,
}

impl Sends {
    fn new(n: usize, replies: usize) -> Sends {
        let slots = (0..n)
            .map(|_| SendSlot {
                hdr: zeroed_msghdr(),
                iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
                name: zeroed_storage(),
                buf: SendBuf::Reply(0),
            })
            .collect();
        Sends {
            slots,
            free: (0..n as u32).rev().collect(),
            replies: vec![0u8; replies * REPLY_LEN].into_boxed_slice(),
            free_replies: (0..replies).rev().collect(),
        }
    }
}

struct Uring {
    ring: IoUring,
    bufs: BufRing,
    sends: Sends,
    msg_template: Box<libc::msghdr>,
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
    let buf_len = PEER_HEADROOM + max_datagram + PEER_TAILROOM + 1;
    let buffers: u16 = 4096;
    let ring = build_ring(4096)?;
    let bufs = BufRing::new(buffers, buf_len)?;
    bufs.register(&ring)?;
    let mut msg_template = Box::new(zeroed_msghdr());
    msg_template.msg_namelen = NAME_LEN as libc::socklen_t;
    let mut u = Uring {
        ring,
        bufs,
        sends: Sends::new(usize::from(buffers) + 1024, 1024),
        msg_template,
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
        ready
    }

    fn finish(&mut self, st: &mut ShardState) {
        self.flush_sends(st);
    }
}

impl Uring {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry pushed points at memory owned by `self` (the
        // msghdr template, send slots, buffers, timespec) that stays in
        // place until its completion is reaped.
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            // Queue full: hand what is queued to the kernel first.
            if self.ring.submit().is_err() {
                break;
            }
        }
    }

    fn arm_recv(&mut self, st: &ShardState, index: usize) {
        let fd = st.udp.socks[index].socket.as_raw_fd();
        let e =
            opcode::RecvMsgMulti::new(Fd(fd), &*self.msg_template, BUF_GROUP).build().user_data(RECV | index as u64);
        self.push(e);
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
        self.push(e);
        self.timer_armed = true;
    }

    /// Before exiting: lets queued sends (the last responses) complete,
    /// waiting at most 100 ms.
    fn flush_sends(&mut self, st: &mut ShardState) {
        let deadline = Instant::now() + Duration::from_millis(100);
        while self.sends.free.len() < self.sends.slots.len() && Instant::now() < deadline {
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
        if res < 0 {
            st.send_failures += 1;
        }
        let buf = self.sends.slots[slot as usize].buf;
        self.release(buf);
        self.sends.free.push(slot);
    }

    fn release(&mut self, buf: SendBuf) {
        match buf {
            SendBuf::Ring(bid) => self.bufs.give(bid),
            SendBuf::Reply(i) => self.sends.free_replies.push(i),
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
        let len = res as usize;
        let kind = st.udp.socks[index].kind;
        let fd = st.udp.socks[index].socket.as_raw_fd();
        let buf = self.bufs.buf(bid);
        let Ok(out) = io_uring::types::RecvMsgOut::parse(&buf[..len], &self.msg_template) else {
            self.bufs.give(bid);
            return;
        };
        let payload_len = out.payload_data().len();
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            self.bufs.give(bid);
            return;
        }
        let mut name = zeroed_storage();
        let name_len = out.incoming_name_len() as usize;
        // Copy the peer address out of the buffer into a sockaddr_storage.
        {
            let src = out.name_data();
            let n = src.len().min(std::mem::size_of::<libc::sockaddr_storage>());
            copy_into_storage(&mut name, &src[..n]);
        }
        let Some(from) = from_sockaddr(&name, name_len as libc::socklen_t) else {
            self.bufs.give(bid);
            return;
        };
        // A client's packet may be answered: it needs a reply buffer (none
        // free: dropped, as a full socket buffer would).
        let reply = match kind {
            SockKind::Listener(_) => match self.sends.free_replies.pop() {
                Some(r) => Some(r),
                None => {
                    self.bufs.give(bid);
                    return;
                }
            },
            SockKind::Relay(_) => None,
        };
        let reply_buf = match reply {
            Some(r) => &mut self.sends.replies[r * REPLY_LEN..(r + 1) * REPLY_LEN],
            None => &mut [][..],
        };
        let buf = self.bufs.buf(bid);
        let tx = st.on_datagram(now, Datagram { fd, kind, from, len: payload_len }, buf, reply_buf);
        self.transmit(st, bid, reply, tx, now);
    }

    /// Carries out what a datagram in buffer `bid` led to: a SendMsg from
    /// that buffer (which goes back to the ring when the send completes)
    /// or from reply buffer `reply`, or a copy onto a stream's send queue;
    /// the buffers not sent from go back at once.
    fn transmit(&mut self, st: &mut ShardState, bid: u16, reply: Option<usize>, tx: Option<Transmit>, now: Instant) {
        let reply_unused = |u: &mut Uring| {
            if let Some(r) = reply {
                u.sends.free_replies.push(r);
            }
        };
        let Some(tx) = tx else {
            reply_unused(self);
            self.bufs.give(bid);
            return;
        };
        match (tx.via, tx.buf, reply) {
            (Via::Udp { fd, dest }, Buf::Reply, Some(r)) => {
                self.bufs.give(bid);
                self.send(fd, dest, SendBuf::Reply(r), r * REPLY_LEN + tx.range.start, tx.range.len(), st);
            }
            (Via::Udp { fd, dest }, Buf::Packet, _) => {
                reply_unused(self);
                self.send(fd, dest, SendBuf::Ring(bid), tx.range.start, tx.range.len(), st);
            }
            (Via::Stream { conn }, Buf::Packet, _) => {
                reply_unused(self);
                st.deliver_stream(conn, &self.bufs.buf(bid)[tx.range], now);
                self.bufs.give(bid);
            }
            // Not produced for datagrams (replies go to UDP clients; no
            // hand-over copy is made).
            _ => {
                reply_unused(self);
                self.bufs.give(bid);
            }
        }
    }

    /// Queues a SendMsg of `len` bytes at `offset` of `buf` to `dest`.
    fn send(
        &mut self,
        fd: i32,
        dest: std::net::SocketAddr,
        buf: SendBuf,
        offset: usize,
        len: usize,
        st: &mut ShardState,
    ) {
        let Some(slot) = self.sends.free.pop() else {
            st.send_failures += 1;
            self.release(buf);
            return;
        };
        let base = match buf {
            SendBuf::Ring(bid) => self.bufs.buf(bid).as_mut_ptr(),
            SendBuf::Reply(_) => self.sends.replies.as_mut_ptr(),
        };
        let s = &mut self.sends.slots[slot as usize];
        s.buf = buf;
        let name_len = to_sockaddr(&dest, &mut s.name);
        // SAFETY: offset + len lies within the buffer (a receive buffer of
        // `len` bytes or the reply area), checked by the callers' ranges.
        s.iov = libc::iovec { iov_base: unsafe { base.add(offset) }.cast(), iov_len: len };
        s.hdr = zeroed_msghdr();
        s.hdr.msg_name = (&mut s.name as *mut libc::sockaddr_storage).cast();
        s.hdr.msg_namelen = name_len;
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        let e = opcode::SendMsg::new(Fd(fd), &s.hdr).build().user_data(SEND | u64::from(slot));
        self.push(e);
    }
}

fn copy_into_storage(dst: &mut libc::sockaddr_storage, src: &[u8]) {
    // SAFETY: src.len() <= size_of::<sockaddr_storage>() (checked by the
    // caller), and both regions are valid and distinct.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), (dst as *mut libc::sockaddr_storage).cast::<u8>(), src.len())
    };
}
