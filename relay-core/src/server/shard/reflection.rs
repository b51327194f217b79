//! The reflection budget: how many answers to unauthenticated requests a
//! source address gets, so that a flood with a spoofed source reflects a
//! bounded volume toward its victim (docs/security.md).

use std::net::IpAddr;

use crate::rng::mix;

/// A budget of answers to unauthenticated requests per source address: a
/// token bucket per (keyed) hash of the source IP in a fixed table. A
/// flood with a spoofed source can make the shard answer that address at
/// most `rate` times a second (after a `burst`), whatever it sends. Sources
/// sharing a slot share a budget; the key makes that unpredictable.
#[derive(Debug)]
pub(super) struct ReflectionLimiter {
    /// (IP hash, tokens, last refill in whole seconds since the epoch).
    slots: Box<[(u64, u32, u32)]>,
    rate: u32,
    burst: u32,
    key: u64,
}

impl ReflectionLimiter {
    const SLOTS: usize = 4096;

    pub(super) fn new(rate: u32, burst: u32, key: u64) -> ReflectionLimiter {
        let slots = if rate == 0 { Box::default() } else { vec![(0, 0, 0); Self::SLOTS].into_boxed_slice() };
        ReflectionLimiter { slots, rate, burst: burst.max(1), key }
    }

    pub(super) fn allow(&mut self, ip: IpAddr, secs: u32) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let bits: u128 = match ip {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        // The address mixed with the per-process key.
        let h = mix(self.key ^ (bits as u64) ^ ((bits >> 64) as u64).rotate_left(29));
        let tag = h | 1;
        let slot = &mut self.slots[(h as usize >> 3) & (Self::SLOTS - 1)];
        if slot.0 != tag {
            *slot = (tag, self.burst, secs);
        }
        let refill = u64::from(secs.saturating_sub(slot.2)) * u64::from(self.rate);
        slot.1 = (u64::from(slot.1) + refill).min(u64::from(self.burst)) as u32;
        slot.2 = secs;
        if slot.1 == 0 {
            return false;
        }
        slot.1 -= 1;
        true
    }
}
