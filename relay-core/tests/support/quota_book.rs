//! A quota book for tests and the shard fuzz target: limits in total and
//! per user with the contract of `relay_core::server::quota::QuotaBook`,
//! for one thread (one lock around everything; turn-relay's own book, in
//! relay-bin, stripes its per-user counts for many shards). A release the
//! book did not hand out panics, so double releases show.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Mutex;

use relay_core::server::quota::{QuotaBook, QuotaError, QuotaToken};

/// `max_total` allocations and `max_per_user` per user (0: unlimited).
#[derive(Debug, Default)]
pub struct TestQuotas {
    max_total: u32,
    max_per_user: u32,
    /// The total, and the count of each user holding allocations.
    counts: Mutex<(u32, HashMap<u64, u32>)>,
}

impl TestQuotas {
    pub fn new(max_total: u32, max_per_user: u32) -> Self {
        TestQuotas { max_total, max_per_user, counts: Mutex::default() }
    }

    /// Allocations held, and users holding any.
    pub fn active(&self) -> (u32, usize) {
        let c = self.counts.lock().unwrap();
        (c.0, c.1.len())
    }
}

impl QuotaBook for TestQuotas {
    fn acquire(&self, user: &[u8]) -> Result<QuotaToken, QuotaError> {
        let key = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
        let mut c = self.counts.lock().unwrap();
        let (total, users) = &mut *c;
        if self.max_total != 0 && *total >= self.max_total {
            return Err(QuotaError::TotalReached);
        }
        if self.max_per_user != 0 && users.get(&key).copied().unwrap_or(0) >= self.max_per_user {
            return Err(QuotaError::UserReached);
        }
        *total += 1;
        *users.entry(key).or_insert(0) += 1;
        Ok(QuotaToken::new(key))
    }

    fn is_full(&self) -> bool {
        self.max_total != 0 && self.counts.lock().unwrap().0 >= self.max_total
    }

    fn release(&self, token: QuotaToken) {
        let mut c = self.counts.lock().unwrap();
        let (total, users) = &mut *c;
        *total = total.checked_sub(1).expect("a release without an acquire");
        let n = users.get_mut(&token.key()).expect("a token this book handed out");
        *n -= 1;
        if *n == 0 {
            users.remove(&token.key());
        }
    }
}
