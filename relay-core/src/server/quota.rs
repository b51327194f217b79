//! Allocation quotas shared by all shards, and per-allocation bandwidth limits.
//!
//! [`Quotas`] counts allocations in total and per user with atomics only: it
//! is shared through an `Arc` by every shard, and acquiring or releasing is a
//! handful of compare-and-swap operations, never a lock.
//!
//! [`TokenBucket`] limits one allocation's relayed bytes per second; it is
//! plain data owned by the allocation.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Why [`Quotas::acquire`] refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The server holds its maximum number of allocations.
    #[error("the server's allocation quota is reached")]
    TotalReached,
    /// The user holds their maximum number of allocations.
    #[error("the user's allocation quota is reached")]
    UserReached,
    /// The per-user table has no room for another distinct user.
    #[error("no room to count another user's allocations")]
    UserTableFull,
}

impl QuotaError {
    /// The STUN error code to answer with: 508 (Insufficient Capacity) when
    /// the server is full, 486 (Allocation Quota Reached) otherwise (RFC 8656 §7.2).
    pub const fn stun_code(self) -> u16 {
        match self {
            QuotaError::TotalReached => 508,
            QuotaError::UserReached | QuotaError::UserTableFull => 486,
        }
    }
}

/// Proof of one acquired allocation; give it back with [`Quotas::release`]
/// when the allocation ends. Dropping it without releasing leaks the count.
#[derive(Debug)]
#[must_use = "a quota token must be given back with Quotas::release"]
pub struct QuotaToken {
    /// The user's slot in the table, or [`UNTRACKED`].
    slot: u32,
}

impl QuotaToken {
    /// Whether the allocation is counted for its user (it is not when the
    /// per-user limit is unlimited and the user could not be tracked).
    pub fn is_user_counted(&self) -> bool {
        self.slot != UNTRACKED
    }
}

/// A token whose user is not counted.
const UNTRACKED: u32 = u32::MAX;
/// Low bits of a slot: the user's allocation count.
const COUNT_BITS: u32 = 16;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// The most users [`Quotas::new`] accepts to track.
const MAX_USERS: usize = 1 << 30;

/// Allocation counts, in total and per user, shared by all shards.
///
/// Per user, a fixed open-addressing table of `AtomicU64` slots (linear
/// probing) holds in its high 48 bits a nonzero keyed hash of the user name
/// and in its low 16 bits the user's count. A slot, once claimed by a user,
/// keeps that user's hash for the table's lifetime, also when the count falls
/// to zero: the same user reuses it, and a user is never counted in two slots
/// (there are no tombstones to race with). So `user_slots` bounds the number
/// of *distinct* users ever counted: pass a stable identity to
/// [`acquire`](Quotas::acquire) (for REST API user names `expiry:user`, the
/// `user` part), and size the table generously. The table has twice as many
/// slots as `user_slots` (rounded up to a power of two) to keep probes short.
///
/// Users are told apart by a 48-bit hash keyed at random per `Quotas`, so two
/// names share a count only by a chance collision (about `n²/2⁴⁹` for `n`
/// users). A user's count saturates at 65,535.
pub struct Quotas {
    max_total: u32,
    max_per_user: u32,
    total: AtomicU32,
    /// Length a power of two, or zero when users are not counted.
    slots: Box<[AtomicU64]>,
    /// How many distinct users the table may take.
    user_capacity: u32,
    /// How many slots are claimed.
    users: AtomicU32,
    hasher: RandomState,
}

impl core::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Quotas")
            .field("max_total", &self.max_total)
            .field("max_per_user", &self.max_per_user)
            .field("active_total", &self.active_total())
            .field("users", &self.users.load(Ordering::Relaxed))
            .field("user_capacity", &self.user_capacity)
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// Quotas of `max_total` allocations on the server and `max_per_user`
    /// per user (0: unlimited, for either), counting up to `user_slots`
    /// distinct users (at most 2³⁰).
    ///
    /// With a per-user limit, a user the table has no room for is refused
    /// ([`QuotaError::UserTableFull`]), and so is every user when
    /// `user_slots` is 0. With no per-user limit such allocations are
    /// admitted, uncounted for their user.
    pub fn new(max_total: u32, max_per_user: u32, user_slots: usize) -> Self {
        let user_slots = user_slots.min(MAX_USERS);
        let len = if user_slots == 0 { 0 } else { (2 * user_slots).next_power_of_two() };
        Quotas {
            max_total,
            max_per_user,
            total: AtomicU32::new(0),
            slots: (0..len).map(|_| AtomicU64::new(0)).collect(),
            user_capacity: user_slots as u32,
            users: AtomicU32::new(0),
            hasher: RandomState::new(),
        }
    }

    /// Takes one allocation for `user`, or says which limit refuses it.
    pub fn acquire(&self, user: &[u8]) -> Result<QuotaToken, QuotaError> {
        let max = if self.max_total == 0 { u32::MAX } else { self.max_total };
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| QuotaError::TotalReached)?;
        match self.acquire_user(user) {
            Ok(slot) => Ok(QuotaToken { slot }),
            Err(e) => {
                self.total.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Gives an allocation back.
    ///
    /// The token must come from this `Quotas`; one from another is ignored
    /// where detectable (and trips a debug assertion).
    pub fn release(&self, token: QuotaToken) {
        if token.slot != UNTRACKED {
            let released = self.slots.get(token.slot as usize).is_some_and(|slot| {
                slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| (v & COUNT_MASK != 0).then(|| v - 1)).is_ok()
            });
            debug_assert!(released, "QuotaToken released twice or to another Quotas");
        }
        let released = self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        debug_assert!(released, "QuotaToken released to another Quotas");
    }

    /// Allocations held on the server.
    pub fn active_total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    /// Allocations counted for `user`.
    pub fn active_for(&self, user: &[u8]) -> u32 {
        let Some((tag, start)) = self.locate(user) else { return 0 };
        let mask = self.slots.len() - 1;
        for probe in 0..self.slots.len() {
            let v = self.slots[(start + probe) & mask].load(Ordering::Acquire);
            if v == 0 {
                return 0;
            }
            if v >> COUNT_BITS == tag {
                return (v & COUNT_MASK) as u32;
            }
        }
        0
    }

    /// The configured server limit (0: unlimited).
    pub fn max_total(&self) -> u32 {
        self.max_total
    }

    /// The configured per-user limit (0: unlimited).
    pub fn max_per_user(&self) -> u32 {
        self.max_per_user
    }

    /// The user's hash tag (48 bits, nonzero) and first slot; `None` when
    /// users are not counted.
    fn locate(&self, user: &[u8]) -> Option<(u64, usize)> {
        if self.slots.is_empty() {
            return None;
        }
        let h = self.hasher.hash_one(user);
        let tag = (h >> COUNT_BITS).max(1);
        Some((tag, h as usize & (self.slots.len() - 1)))
    }

    /// Counts one allocation for `user`: the slot index, or [`UNTRACKED`].
    fn acquire_user(&self, user: &[u8]) -> Result<u32, QuotaError> {
        let limited = self.max_per_user != 0;
        let refuse = |e| if limited { Err(e) } else { Ok(UNTRACKED) };
        let max = if limited { u64::from(self.max_per_user).min(COUNT_MASK) } else { COUNT_MASK };
        let Some((tag, start)) = self.locate(user) else { return refuse(QuotaError::UserTableFull) };
        let mask = self.slots.len() - 1;
        for probe in 0..self.slots.len() {
            let index = (start + probe) & mask;
            let slot = &self.slots[index];
            let mut v = slot.load(Ordering::Acquire);
            loop {
                if v == 0 {
                    // The user is not in the table (claimed slots never empty again): claim this one.
                    if self
                        .users
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n < self.user_capacity).then_some(n + 1)
                        })
                        .is_err()
                    {
                        return refuse(QuotaError::UserTableFull);
                    }
                    match slot.compare_exchange(0, tag << COUNT_BITS | 1, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return Ok(index as u32),
                        Err(now) => {
                            // Another user (or this one, on another thread) took it first.
                            self.users.fetch_sub(1, Ordering::AcqRel);
                            v = now;
                        }
                    }
                } else if v >> COUNT_BITS == tag {
                    if v & COUNT_MASK >= max {
                        return refuse(QuotaError::UserReached);
                    }
                    match slot.compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return Ok(index as u32),
                        Err(now) => v = now,
                    }
                } else {
                    break;
                }
            }
        }
        // Unreachable while at most half the slots are claimed.
        refuse(QuotaError::UserTableFull)
    }
}

/// Nanoseconds per second: the bucket counts in billionths of a byte.
const NANOS: u64 = 1_000_000_000;

/// A token bucket limiting one allocation's bandwidth.
///
/// It fills at `bytes_per_sec` up to `burst_bytes` and starts full; a packet
/// passes when the bucket holds its size, which is then taken out. Credit is
/// kept in billionths of a byte, so frequent small refills lose nothing.
/// A packet larger than the burst never passes: make the burst at least the
/// largest packet relayed (64 KiB covers every UDP datagram).
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Bytes per second; 0: unlimited.
    rate: u64,
    /// Capacity, in billionths of a byte.
    burst: u64,
    /// Credit, in billionths of a byte.
    credit: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `bytes_per_sec` (0: unlimited) up to
    /// `burst_bytes` (0: one second's worth; at most about 18 GB).
    pub fn new(bytes_per_sec: u64, burst_bytes: u64, now: Instant) -> Self {
        let burst_bytes = if burst_bytes == 0 { bytes_per_sec } else { burst_bytes };
        let burst = burst_bytes.saturating_mul(NANOS);
        TokenBucket { rate: bytes_per_sec, burst, credit: burst, last: now }
    }

    /// An unlimited bucket.
    pub fn unlimited(now: Instant) -> Self {
        TokenBucket::new(0, 0, now)
    }

    /// Whether the bucket limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Whether `bytes` may pass at `now`, taking them from the bucket if so.
    /// A `now` earlier than a previous call's counts as that call's time.
    #[inline]
    pub fn allow(&mut self, now: Instant, bytes: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        let cost = (bytes as u64).saturating_mul(NANOS);
        if self.credit >= cost {
            self.credit -= cost;
            true
        } else {
            false
        }
    }

    /// Whole bytes available at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        self.refill(now);
        self.credit / NANOS
    }

    #[inline]
    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_nanos();
            let credit = u128::from(self.credit).saturating_add(elapsed.saturating_mul(u128::from(self.rate)));
            self.credit = credit.min(u128::from(self.burst)) as u64;
            self.last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn shared_types_are_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Quotas>();
        shared::<QuotaToken>();
        shared::<TokenBucket>();
    }

    #[test]
    fn error_codes() {
        assert_eq!(QuotaError::TotalReached.stun_code(), 508);
        assert_eq!(QuotaError::UserReached.stun_code(), 486);
        assert_eq!(QuotaError::UserTableFull.stun_code(), 486);
    }

    #[test]
    fn per_user_and_total_limits() {
        let q = Quotas::new(5, 2, 16);
        let a1 = q.acquire(b"alice").unwrap();
        let a2 = q.acquire(b"alice").unwrap();
        assert_eq!(q.acquire(b"alice").unwrap_err(), QuotaError::UserReached);
        assert_eq!(q.active_for(b"alice"), 2);
        assert_eq!(q.active_total(), 2, "a refused user gives the total back");
        let b1 = q.acquire(b"bob").unwrap();
        let b2 = q.acquire(b"bob").unwrap();
        let c1 = q.acquire(b"carol").unwrap();
        assert_eq!(q.acquire(b"dave").unwrap_err(), QuotaError::TotalReached);
        assert_eq!(q.active_total(), 5);
        assert_eq!(q.active_for(b"dave"), 0);

        q.release(a1);
        assert_eq!(q.active_for(b"alice"), 1);
        let a3 = q.acquire(b"alice").unwrap();
        for t in [a2, a3, b1, b2, c1] {
            q.release(t);
        }
        assert_eq!(q.active_total(), 0);
        for user in [&b"alice"[..], b"bob", b"carol", b"dave"] {
            assert_eq!(q.active_for(user), 0);
        }
        // A slot whose count fell to zero is reused by its user.
        let users_before = q.users.load(Ordering::Relaxed);
        let again = q.acquire(b"alice").unwrap();
        assert_eq!(q.users.load(Ordering::Relaxed), users_before);
        q.release(again);
    }

    #[test]
    fn unlimited() {
        let q = Quotas::new(0, 0, 4);
        let tokens: Vec<_> = (0..1000).map(|i| q.acquire(format!("user{}", i % 10).as_bytes()).unwrap()).collect();
        assert_eq!(q.active_total(), 1000);
        // Four users are counted; the others are admitted uncounted.
        let counted: u32 = (0..10).map(|i| q.active_for(format!("user{i}").as_bytes())).sum();
        assert_eq!(counted, 400);
        assert_eq!(tokens.iter().filter(|t| t.is_user_counted()).count(), 400);
        for t in tokens {
            q.release(t);
        }
        assert_eq!(q.active_total(), 0);
        assert_eq!((0..10).map(|i| q.active_for(format!("user{i}").as_bytes())).sum::<u32>(), 0);
    }

    #[test]
    fn user_table_full() {
        let q = Quotas::new(0, 3, 2);
        let a = q.acquire(b"a").unwrap();
        let b = q.acquire(b"b").unwrap();
        assert_eq!(q.acquire(b"c").unwrap_err(), QuotaError::UserTableFull);
        assert_eq!(q.active_total(), 2);
        q.release(a);
        q.release(b);
        // Slots keep their users: a third user still has no room, the first two do.
        assert_eq!(q.acquire(b"c").unwrap_err(), QuotaError::UserTableFull);
        let a = q.acquire(b"a").unwrap();
        q.release(a);

        let q = Quotas::new(10, 1, 0);
        assert_eq!(q.acquire(b"a").unwrap_err(), QuotaError::UserTableFull);
        assert_eq!(q.active_total(), 0);
    }

    #[test]
    fn count_saturates_without_corrupting_the_tag() {
        let q = Quotas::new(0, 0, 1);
        let tokens: Vec<_> = (0..COUNT_MASK + 5).map(|_| q.acquire(b"x").unwrap()).collect();
        assert_eq!(q.active_for(b"x"), COUNT_MASK as u32);
        assert_eq!(tokens.iter().filter(|t| !t.is_user_counted()).count(), 5);
        for t in tokens {
            q.release(t);
        }
        assert_eq!(q.active_for(b"x"), 0);
        assert_eq!(q.active_total(), 0);
    }

    /// A small xorshift generator, so the stress test needs no dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn concurrent_acquire_release_never_exceeds_limits() {
        const USERS: usize = 6;
        const PER_USER: u32 = 3;
        const TOTAL: u32 = 10;
        const THREADS: u64 = 4;
        const ITERATIONS: usize = 50_000;
        let q = Quotas::new(TOTAL, PER_USER, USERS);
        let names: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
        // Incremented after a successful acquire, decremented before release:
        // never above the count `Quotas` holds, so never above the limits.
        let held: Vec<AtomicU32> = (0..USERS).map(|_| AtomicU32::new(0)).collect();
        let held_total = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (q, names, held, held_total) = (&q, &names, &held, &held_total);
                s.spawn(move || {
                    let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (t + 1).wrapping_mul(0x1234_5678_9ABC_DEF1);
                    let mut mine: Vec<(usize, QuotaToken)> = Vec::new();
                    for _ in 0..ITERATIONS {
                        let r = next(&mut rng);
                        if mine.len() < 4 && r & 1 == 0 {
                            let u = (r >> 8) as usize % USERS;
                            if let Ok(token) = q.acquire(names[u].as_bytes()) {
                                assert!(held[u].fetch_add(1, Ordering::SeqCst) < PER_USER);
                                assert!(held_total.fetch_add(1, Ordering::SeqCst) < TOTAL);
                                mine.push((u, token));
                            }
                        } else if !mine.is_empty() {
                            let (u, token) = mine.swap_remove((r >> 8) as usize % mine.len());
                            held[u].fetch_sub(1, Ordering::SeqCst);
                            held_total.fetch_sub(1, Ordering::SeqCst);
                            q.release(token);
                        }
                        assert!(q.active_total() <= TOTAL);
                        assert!(q.active_for(names[(r >> 16) as usize % USERS].as_bytes()) <= PER_USER);
                    }
                    for (u, token) in mine {
                        held[u].fetch_sub(1, Ordering::SeqCst);
                        held_total.fetch_sub(1, Ordering::SeqCst);
                        q.release(token);
                    }
                });
            }
        });
        assert_eq!(q.active_total(), 0);
        for name in &names {
            assert_eq!(q.active_for(name.as_bytes()), 0);
        }
        // Every user was counted in exactly one slot.
        let tags: HashSet<u64> =
            q.slots.iter().map(|s| s.load(Ordering::Relaxed)).filter(|&v| v != 0).map(|v| v >> COUNT_BITS).collect();
        assert_eq!(tags.len(), USERS);
        assert_eq!(q.users.load(Ordering::Relaxed), USERS as u32);
    }

    #[test]
    fn bucket_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 0, t0);
        assert!(b.is_unlimited());
        for _ in 0..100 {
            assert!(b.allow(t0, 1 << 20));
        }
    }

    #[test]
    fn bucket_rate_and_burst() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = TokenBucket::new(1000, 1500, t0);
        assert_eq!(b.available(t0), 1500);
        assert!(b.allow(t0, 1500), "starts full");
        assert!(!b.allow(t0, 1));
        assert!(b.allow(ms(1), 1), "1 ms refills one byte");
        assert!(!b.allow(ms(1), 1));
        assert!(!b.allow(ms(500), 600));
        assert!(b.allow(ms(601), 600));
        // Long idle: capped at the burst.
        assert_eq!(b.available(ms(60_000)), 1500);
        assert!(!b.allow(ms(60_000), 1501));
        assert!(b.allow(ms(60_000), 1500));
        // An earlier time neither refills nor panics.
        assert!(!b.allow(ms(59_000), 1));
        assert!(b.allow(ms(60_001), 1));
    }

    #[test]
    fn bucket_keeps_fractions() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 2, t0);
        assert!(b.allow(t0, 2));
        // 3 bytes per second, one byte per 333⅓ ms, checked every 10 ms for 10 s.
        let passed = (1..=1000).filter(|&i| b.allow(t0 + Duration::from_millis(10 * i), 1)).count();
        assert_eq!(passed, 30);
    }

    #[test]
    fn bucket_default_burst_is_one_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, 0, t0);
        assert_eq!(b.available(t0), 10_000);
        let mut huge = TokenBucket::new(u64::MAX, u64::MAX, t0);
        assert!(huge.allow(t0 + Duration::from_secs(1 << 40), usize::MAX));
    }
}
