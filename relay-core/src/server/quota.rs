//! Allocation quotas, injected, and per-allocation bandwidth limits.
//!
//! A shard asks a [`QuotaBook`] for room before each allocation and gives
//! the [`QuotaToken`] back when the allocation ends: on the allocation path
//! only, never per packet. The book is shared by every shard (an
//! `Arc<dyn QuotaBook>` in [`ServerParts`](super::ServerParts)) and how it
//! shares its counts is its own business: this crate takes no lock. The
//! server passes the user to count: for TURN REST user names
//! (`expiry:user`) the user part, so that fresh credentials do not escape
//! the per-user limit. turn-relay's book (striped per-user counts and an
//! atomic total) lives in relay-bin; [`Unlimited`] is here for servers and
//! tests without limits.
//!
//! [`TokenBucket`] limits one allocation's relayed bytes per second; it is
//! plain data owned by the allocation.

use std::time::Instant;

/// Why a [`QuotaBook`] refused an allocation.
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

/// Proof of one allocation a [`QuotaBook`] counted; the server keeps it
/// with the allocation and gives it back with [`QuotaBook::release`] when
/// the allocation ends. It cannot be copied, so it is released at most
/// once; dropping it without releasing leaks the count.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a quota token must be given back with QuotaBook::release"]
pub struct QuotaToken(u64);

impl QuotaToken {
    /// A token carrying `key`: what its book needs to find the count again
    /// at release (for a per-user book, the user's key).
    pub const fn new(key: u64) -> Self {
        QuotaToken(key)
    }

    /// The key the book put in.
    pub const fn key(&self) -> u64 {
        self.0
    }
}

/// Allocation counts, in total and per user, shared by all shards.
///
/// Called from every shard's thread at once, on the allocation path only.
/// The contract, which the server's 486/508 answers rely on:
///
/// - [`acquire`](QuotaBook::acquire) takes one allocation for `user` or
///   says which limit refuses it, the server's
///   ([`QuotaError::TotalReached`], answered 508) when both are reached,
///   else the user's ([`QuotaError::UserReached`], 486); a refused
///   acquire holds nothing;
/// - [`release`](QuotaBook::release) gives back exactly what the token's
///   acquire took; a user without allocations takes no room.
pub trait QuotaBook: Send + Sync + core::fmt::Debug {
    /// Takes one allocation for `user` (the identity to count: the server
    /// passes the user part of a REST user name).
    fn acquire(&self, user: &[u8]) -> Result<QuotaToken, QuotaError>;

    /// Gives back the allocation `token` stands for.
    fn release(&self, token: QuotaToken);

    /// The allocations the book holds now, across every shard, when it
    /// counts them (`None`: it does not; a server then counts its own
    /// shard's). The server reads it for `ServerConfig::redirect_above_allocations`.
    fn total_allocations(&self) -> Option<u64> {
        None
    }

    /// Whether the server's total is reached now, so that an
    /// [`acquire`](QuotaBook::acquire) for any user would be refused with
    /// [`QuotaError::TotalReached`] (`false`: room, or no total limit). The
    /// server reads it before the challenge, to send a new client of a full
    /// node to an alternate unauthenticated; a count that moves meanwhile
    /// does no harm (`acquire` still decides). Per-user limits play no part.
    fn is_full(&self) -> bool {
        false
    }
}

/// A book without limits that counts nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl QuotaBook for Unlimited {
    fn acquire(&self, _user: &[u8]) -> Result<QuotaToken, QuotaError> {
        Ok(QuotaToken::new(0))
    }

    fn release(&self, _token: QuotaToken) {}
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
        shared::<Unlimited>();
        shared::<QuotaToken>();
        shared::<TokenBucket>();
        shared::<std::sync::Arc<dyn QuotaBook>>();
    }

    #[test]
    fn error_codes() {
        assert_eq!(QuotaError::TotalReached.error().code(), 508);
        assert_eq!(QuotaError::UserReached.error().code(), 486);
    }

    #[test]
    fn unlimited_refuses_nobody() {
        let book: &dyn QuotaBook = &Unlimited;
        let tokens: Vec<_> = (0..1000u32).map(|i| book.acquire(&i.to_le_bytes()).unwrap()).collect();
        for t in tokens {
            book.release(t);
        }
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
