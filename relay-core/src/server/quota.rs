//! Allocation quotas shared by all shards, and per-allocation bandwidth limits.
//!
//! [`Quotas`] counts allocations in total and per user. It is shared through
//! an `Arc` by every shard and used on the allocation path only (Allocate,
//! and an allocation's end), never per packet: the total is one atomic, and
//! per-user counts live in maps striped over 64 short-held locks, an entry
//! existing only while its user holds allocations.
//!
//! [`TokenBucket`] limits one allocation's relayed bytes per second; it is
//! plain data owned by the allocation.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
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
}

impl QuotaError {
    /// The error to answer with: 508 (Insufficient Capacity) when the
    /// server is full, 486 (Allocation Quota Reached) otherwise (RFC 8656 §7.2).
    pub const fn error(self) -> super::error::StunError {
        match self {
            QuotaError::TotalReached => super::error::StunError::InsufficientCapacity,
            QuotaError::UserReached => super::error::StunError::AllocationQuotaReached,
        }
    }
}

/// Proof of one acquired allocation; give it back with [`Quotas::release`]
/// when the allocation ends. Dropping it without releasing leaks the count.
#[derive(Debug)]
#[must_use = "a quota token must be given back with Quotas::release"]
pub struct QuotaToken {
    /// The user's key, when the allocation is counted for its user (it is
    /// not when there is no per-user limit).
    user: Option<u64>,
}

impl QuotaToken {
    /// Whether the allocation is counted for its user.
    pub fn is_user_counted(&self) -> bool {
        self.user.is_some()
    }
}

/// Lock stripes of the per-user maps.
const STRIPES: usize = 64;

/// Allocation counts, in total and per user, shared by all shards.
///
/// Users are told apart by a 64-bit hash keyed at random per `Quotas`, so
/// two names share a count only by a chance collision (about `n²/2⁶⁵` for
/// `n` users holding allocations at once). Pass a stable identity to
/// [`acquire`](Quotas::acquire): for REST API user names `expiry:user`,
/// the `user` part. Memory follows the users holding allocations now, not
/// every user ever seen.
pub struct Quotas {
    max_total: u32,
    max_per_user: u32,
    total: AtomicU32,
    /// Per-user counts by key, striped by key; empty when users are not
    /// counted (no per-user limit).
    users: Box<[Mutex<HashMap<u64, u32>>]>,
    hasher: RandomState,
}

impl core::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Quotas")
            .field("max_total", &self.max_total)
            .field("max_per_user", &self.max_per_user)
            .field("active_total", &self.active_total())
            .field("active_users", &self.active_users())
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// Quotas of `max_total` allocations on the server and `max_per_user`
    /// per user (0: unlimited, for either). Users are counted only when
    /// `max_per_user` limits them.
    pub fn new(max_total: u32, max_per_user: u32) -> Self {
        let stripes = if max_per_user == 0 { 0 } else { STRIPES };
        Quotas {
            max_total,
            max_per_user,
            total: AtomicU32::new(0),
            users: (0..stripes).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one allocation for `user`, or says which limit refuses it
    /// (the server's when both are reached). The user's count is checked
    /// first, under its stripe's lock, so a refused user never holds a unit
    /// of the total, even for a moment.
    pub fn acquire(&self, user: &[u8]) -> Result<QuotaToken, QuotaError> {
        let max = if self.max_total == 0 { u32::MAX } else { self.max_total };
        let take_total = || {
            self.total
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                .map(drop)
                .map_err(|_| QuotaError::TotalReached)
        };
        if self.users.is_empty() {
            take_total()?;
            return Ok(QuotaToken { user: None });
        }
        let key = self.key(user);
        let mut map = self.stripe(key);
        if map.get(&key).copied().unwrap_or(0) >= self.max_per_user {
            // Both limits reached: the server's is the one to report.
            let full = self.total.load(Ordering::Acquire) >= max;
            return Err(if full { QuotaError::TotalReached } else { QuotaError::UserReached });
        }
        take_total()?;
        *map.entry(key).or_insert(0) += 1;
        Ok(QuotaToken { user: Some(key) })
    }

    /// Gives an allocation back.
    ///
    /// The token must come from this `Quotas`; one from another is ignored
    /// where detectable (and trips a debug assertion).
    pub fn release(&self, token: QuotaToken) {
        if let Some(key) = token.user
            && !self.users.is_empty()
        {
            let mut map = self.stripe(key);
            let released = match map.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    true
                }
                Some(_) => map.remove(&key).is_some(),
                None => false,
            };
            debug_assert!(released, "QuotaToken released twice or to another Quotas");
        }
        let released = self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        debug_assert!(released, "QuotaToken released to another Quotas");
    }

    /// Allocations held on the server.
    pub fn active_total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    /// Allocations counted for `user` (0 when users are not counted).
    pub fn active_for(&self, user: &[u8]) -> u32 {
        if self.users.is_empty() {
            return 0;
        }
        let key = self.key(user);
        self.stripe(key).get(&key).copied().unwrap_or(0)
    }

    /// Users holding at least one counted allocation.
    pub fn active_users(&self) -> usize {
        self.users.iter().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// The configured server limit (0: unlimited).
    pub fn max_total(&self) -> u32 {
        self.max_total
    }

    /// The configured per-user limit (0: unlimited).
    pub fn max_per_user(&self) -> u32 {
        self.max_per_user
    }

    fn key(&self, user: &[u8]) -> u64 {
        self.hasher.hash_one(user)
    }

    /// The stripe holding `key`. A poisoned lock (a panic while it was
    /// held, which the code above cannot do) is used as is: counts stay
    /// consistent because every update is a single step.
    fn stripe(&self, key: u64) -> MutexGuard<'_, HashMap<u64, u32>> {
        // The high bits pick the stripe; the map hashes the key again.
        let m = &self.users[(key >> 58) as usize % self.users.len()];
        m.lock().unwrap_or_else(|p| p.into_inner())
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
        assert_eq!(QuotaError::TotalReached.error().code(), 508);
        assert_eq!(QuotaError::UserReached.error().code(), 486);
    }

    #[test]
    fn per_user_and_total_limits() {
        let q = Quotas::new(5, 2);
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
        assert_eq!((q.active_for(b"dave"), q.active_users()), (0, 3));

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
        // A user without allocations takes no room.
        assert_eq!(q.active_users(), 0);
    }

    #[test]
    fn unlimited() {
        let q = Quotas::new(0, 0);
        let tokens: Vec<_> = (0..1000).map(|i| q.acquire(format!("user{}", i % 10).as_bytes()).unwrap()).collect();
        assert_eq!(q.active_total(), 1000);
        // Without a per-user limit users are not counted (no lock taken).
        assert!(tokens.iter().all(|t| !t.is_user_counted()));
        assert_eq!((q.active_for(b"user1"), q.active_users()), (0, 0));
        for t in tokens {
            q.release(t);
        }
        assert_eq!(q.active_total(), 0);
    }

    #[test]
    fn millions_of_distinct_users_over_time_never_fill_anything() {
        // The former table kept a slot per user ever seen and refused new
        // users once full: a long-lived server with REST users would end up
        // answering 486 to everyone new.
        let q = Quotas::new(0, 1);
        for i in 0..200_000u32 {
            let user = i.to_le_bytes();
            let t = q.acquire(&user).unwrap();
            assert_eq!(q.acquire(&user).unwrap_err(), QuotaError::UserReached);
            q.release(t);
        }
        assert_eq!((q.active_total(), q.active_users()), (0, 0));
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
        let q = Quotas::new(TOTAL, PER_USER);
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
        assert_eq!(q.active_users(), 0);
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
