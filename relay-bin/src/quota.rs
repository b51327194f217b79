//! turn-relay's allocation quota book: the [`QuotaBook`] every shard's
//! server shares (relay-core asks it before each allocation and takes no
//! lock itself).
//!
//! [`Quotas`] counts allocations in total and per user, on the allocation
//! path only (Allocate, and an allocation's end), never per packet: the
//! total is one atomic, and per-user counts live in maps striped over 64
//! short-held locks, an entry existing only while its user holds
//! allocations. The server passes the identity to count (for TURN REST
//! user names `expiry:user`, the user part).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use relay_core::server::quota::{QuotaBook, QuotaError, QuotaToken};

/// Lock stripes of the per-user maps.
const STRIPES: usize = 64;

/// Allocation counts, in total and per user, shared by all shards
/// (`limits.max_allocations`, `limits.max_allocations_per_user`).
///
/// Users are told apart by a 64-bit hash keyed at random per `Quotas`, so
/// two names share a count only by a chance collision (about `n²/2⁶⁵` for
/// `n` users holding allocations at once); a token carries its user's key.
/// Memory follows the users holding allocations now, not every user ever
/// seen.
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

    /// Allocations held on the server.
    pub fn active_total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    /// Allocations counted for `user` (0 when users are not counted).
    #[cfg(test)]
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

    fn key(&self, user: &[u8]) -> u64 {
        self.hasher.hash_one(user)
    }

    /// The stripe holding `key`. A poisoned lock (a panic while it was
    /// held, which the code here cannot do) is used as is: counts stay
    /// consistent because every update is a single step.
    fn stripe(&self, key: u64) -> MutexGuard<'_, HashMap<u64, u32>> {
        // The high bits pick the stripe; the map hashes the key again.
        let m = &self.users[(key >> 58) as usize % self.users.len()];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl QuotaBook for Quotas {
    /// Takes one allocation for `user`, or says which limit refuses it
    /// (the server's when both are reached). The user's count is checked
    /// first, under its stripe's lock, so a refused user never holds a unit
    /// of the total, even for a moment.
    fn acquire(&self, user: &[u8]) -> Result<QuotaToken, QuotaError> {
        let max = if self.max_total == 0 { u32::MAX } else { self.max_total };
        let take_total = || {
            self.total
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                .map(drop)
                .map_err(|_| QuotaError::TotalReached)
        };
        if self.users.is_empty() {
            take_total()?;
            return Ok(QuotaToken::new(0));
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
        Ok(QuotaToken::new(key))
    }

    /// The total, counted whatever the limits.
    fn total_allocations(&self) -> Option<u64> {
        Some(u64::from(self.active_total()))
    }

    /// `limits.max_allocations` held (never with 0, unlimited).
    fn is_full(&self) -> bool {
        self.max_total != 0 && self.active_total() >= self.max_total
    }

    /// Gives an allocation back.
    ///
    /// The token must come from this `Quotas`; one from another is ignored
    /// where detectable (and trips a debug assertion).
    fn release(&self, token: QuotaToken) {
        if !self.users.is_empty() {
            let key = token.key();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_by_the_shards() {
        fn shared<T: Send + Sync>() {}
        shared::<Quotas>();
        let book: std::sync::Arc<dyn QuotaBook> = std::sync::Arc::new(Quotas::new(1, 1));
        let t = book.acquire(b"alice").unwrap();
        assert_eq!(book.acquire(b"bob").unwrap_err(), QuotaError::TotalReached);
        book.release(t);
        assert!(format!("{book:?}").starts_with("Quotas"));
    }

    #[test]
    fn per_user_and_total_limits() {
        let q = Quotas::new(5, 2);
        let a1 = q.acquire(b"alice").unwrap();
        let a2 = q.acquire(b"alice").unwrap();
        assert_eq!(q.acquire(b"alice").unwrap_err(), QuotaError::UserReached);
        assert!(!q.is_full(), "a user at their limit does not fill the server");
        assert_eq!(q.active_for(b"alice"), 2);
        assert_eq!(q.active_total(), 2, "a refused user gives the total back");
        let b1 = q.acquire(b"bob").unwrap();
        let b2 = q.acquire(b"bob").unwrap();
        let c1 = q.acquire(b"carol").unwrap();
        assert_eq!(q.acquire(b"dave").unwrap_err(), QuotaError::TotalReached);
        assert!(q.is_full());
        assert_eq!(q.active_total(), 5);
        assert_eq!((q.active_for(b"dave"), q.active_users()), (0, 3));

        q.release(a1);
        assert!(!q.is_full());
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
        assert!(!q.is_full(), "0: no total limit");
        // Without a per-user limit users are not counted (no lock taken).
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
}
