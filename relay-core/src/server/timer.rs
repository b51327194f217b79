//! A hashed timer wheel with one-second slots.
//!
//! Every allocation has at most one live entry, at the earliest of its
//! deadlines (allocation, permissions, channels). Entries are never removed:
//! each carries the generation it was scheduled with, and the owner ignores
//! an entry whose generation is no longer current. Extending a deadline
//! (Refresh) therefore costs nothing here; the stale entry fires early, finds
//! nothing due and is replaced. Advancing one tick touches only the entries
//! in that tick's slot, so expiry is O(1) amortised per entry and never scans
//! the table.

use std::time::{Duration, Instant};

/// One scheduled wake-up: an owner index and the generation it was
/// scheduled under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerEntry {
    /// The tick (whole seconds since the wheel's start) it is due at.
    pub due: u64,
    /// The owner's key (an allocation's slab index).
    pub key: u32,
    /// The owner's generation when scheduled.
    pub generation: u32,
}

/// A timer wheel of `2^k` one-second slots.
#[derive(Debug)]
pub struct TimerWheel {
    start: Instant,
    slots: Box<[Vec<TimerEntry>]>,
    /// The last tick fully processed.
    now_tick: u64,
    len: usize,
}

impl TimerWheel {
    /// A wheel starting at `start`; `slots` is rounded up to a power of two.
    /// Deadlines further away than `slots` seconds wait for whole rounds.
    pub fn new(start: Instant, slots: usize) -> TimerWheel {
        let n = slots.max(2).next_power_of_two();
        TimerWheel { start, slots: (0..n).map(|_| Vec::new()).collect(), now_tick: 0, len: 0 }
    }

    /// The tick an instant falls in (rounded up, so a deadline never fires
    /// early).
    pub fn tick_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start);
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    /// Schedules `key` (at `generation`) for `at`.
    pub fn schedule(&mut self, at: Instant, key: u32, generation: u32) {
        let due = self.tick_of(at).max(self.now_tick + 1);
        let mask = self.slots.len() as u64 - 1;
        self.slots[(due & mask) as usize].push(TimerEntry { due, key, generation });
        self.len += 1;
    }

    /// Number of pending entries (stale ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the next tick is due, if anything is scheduled.
    pub fn next_wakeup(&self) -> Option<Instant> {
        (self.len > 0).then(|| self.start + Duration::from_secs(self.now_tick + 1))
    }

    /// Advances to `now`, handing each due entry to `fire`. Entries due in a
    /// later round stay in their slot.
    pub fn advance(&mut self, now: Instant, mut fire: impl FnMut(TimerEntry)) {
        let target = now.saturating_duration_since(self.start).as_secs();
        let mask = self.slots.len() as u64 - 1;
        // After a long pause, one pass over every slot is enough.
        let first = (self.now_tick + 1).max(target.saturating_sub(mask));
        if self.now_tick < first - 1 {
            self.now_tick = first - 1;
        }
        while self.now_tick < target {
            self.now_tick += 1;
            let slot = &mut self.slots[(self.now_tick & mask) as usize];
            if slot.is_empty() {
                continue;
            }
            let mut i = 0;
            while i < slot.len() {
                if slot[i].due <= target {
                    let e = slot.swap_remove(i);
                    self.len -= 1;
                    fire(e);
                } else {
                    i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(w: &mut TimerWheel, now: Instant) -> Vec<u32> {
        let mut v = Vec::new();
        w.advance(now, |e| v.push(e.key));
        v.sort();
        v
    }

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, 8);
        w.schedule(t0 + Duration::from_millis(1500), 1, 0);
        w.schedule(t0 + Duration::from_secs(3), 2, 0);
        assert!(collect(&mut w, t0 + Duration::from_millis(1999)).is_empty());
        assert_eq!(collect(&mut w, t0 + Duration::from_secs(2)), vec![1]);
        assert_eq!(collect(&mut w, t0 + Duration::from_secs(3)), vec![2]);
        assert!(w.is_empty());
        assert_eq!(w.next_wakeup(), None);
    }

    #[test]
    fn deadlines_beyond_one_round_wait_for_their_round() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, 4);
        w.schedule(t0 + Duration::from_secs(10), 7, 3);
        for s in 1..10 {
            assert!(collect(&mut w, t0 + Duration::from_secs(s)).is_empty(), "fired early at {s}");
        }
        let mut got = Vec::new();
        w.advance(t0 + Duration::from_secs(10), |e| got.push(e));
        assert_eq!(got, vec![TimerEntry { due: 10, key: 7, generation: 3 }]);
    }

    #[test]
    fn a_long_pause_fires_everything_due_once() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, 16);
        for k in 0..100u32 {
            w.schedule(t0 + Duration::from_secs(u64::from(k) * 3 + 1), k, 0);
        }
        let fired = collect(&mut w, t0 + Duration::from_secs(1000));
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, 8);
        w.advance(t0 + Duration::from_secs(5), |_| {});
        w.schedule(t0, 1, 0);
        assert_eq!(w.next_wakeup(), Some(t0 + Duration::from_secs(6)));
        assert_eq!(collect(&mut w, t0 + Duration::from_secs(6)), vec![1]);
    }
}
