//! The shard's pool of relayed transport addresses.
//!
//! The I/O layer binds its relay sockets when the shard starts and registers
//! each address here ([`RelayPool::add`]), receiving a [`RelayId`] it uses to
//! name the socket in both directions. Allocating and releasing is then pure
//! bookkeeping: no syscall on the Allocate path. A released address first
//! rests in quarantine for a configurable time, then joins the back of a FIFO
//! free list, so the address reused next is the one idle the longest: a late
//! peer packet for an old allocation never reaches a new one (it finds no
//! owner and is dropped, which also drains the socket).
//!
//! EVEN-PORT and RESERVATION-TOKEN (RFC 8656 §7.2) are served from the same
//! pool: an even port is searched for in the free list, and with the R bit
//! the next port up on the same IP is held for 30 seconds under a token.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::AddressFamily;

/// How long a RESERVATION-TOKEN holds its port (RFC 8656 §7.2 suggests 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// How far into the free list an EVEN-PORT search looks before giving up.
const EVEN_PORT_SEARCH: usize = 256;

/// Names one relay socket of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u32);

impl RelayId {
    /// The index, for tables the I/O layer keeps per relay.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the free list (possibly more than once: stale entries are skipped
    /// by comparing the epoch).
    Free { epoch: u32 },
    /// Held by an allocation (its slab key).
    InUse { alloc: u32 },
    /// Released, resting until it joins the free list.
    Quarantined,
    /// Held for a RESERVATION-TOKEN.
    Reserved { token: [u8; 8], until: Instant },
}

#[derive(Debug)]
struct Relay {
    addr: SocketAddr,
    state: State,
    epoch: u32,
}

/// Why no relay address could be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The shard has no relay address of that family at all (440).
    #[error("no relay address of the requested family")]
    FamilyUnsupported,
    /// Every address of the family is taken (508).
    #[error("relay addresses exhausted")]
    Exhausted,
    /// The reservation token is unknown or expired (508).
    #[error("reservation token invalid")]
    BadToken,
}

/// The relay addresses of one shard.
#[derive(Debug, Default)]
pub struct RelayPool {
    relays: Vec<Relay>,
    by_addr: HashMap<SocketAddr, RelayId>,
    free: [VecDeque<(RelayId, u32)>; 2],
    total: [usize; 2],
    /// Addresses held by allocations, per family.
    in_use: [usize; 2],
    /// Addresses free to allocate, per family (not in use, reserved or
    /// resting).
    available: [usize; 2],
    reservations: VecDeque<(RelayId, Instant)>,
    quarantine: Duration,
    resting: VecDeque<(RelayId, Instant)>,
}

const fn fam(f: AddressFamily) -> usize {
    match f {
        AddressFamily::V4 => 0,
        AddressFamily::V6 => 1,
    }
}

impl RelayPool {
    /// An empty pool whose released addresses rest for `quarantine` before
    /// reuse.
    pub fn new(quarantine: Duration) -> RelayPool {
        RelayPool { quarantine, ..RelayPool::default() }
    }

    /// Registers a bound relay address; returns its id. Registering the same
    /// address twice returns the first id.
    pub fn add(&mut self, addr: SocketAddr) -> RelayId {
        if let Some(&id) = self.by_addr.get(&addr) {
            return id;
        }
        let id = RelayId(self.relays.len() as u32);
        self.relays.push(Relay { addr, state: State::Free { epoch: 0 }, epoch: 0 });
        self.by_addr.insert(addr, id);
        let f = fam(AddressFamily::of(&addr));
        self.free[f].push_back((id, 0));
        self.total[f] += 1;
        self.available[f] += 1;
        id
    }

    /// The address of a relay.
    pub fn addr(&self, id: RelayId) -> Option<SocketAddr> {
        self.relays.get(id.index()).map(|r| r.addr)
    }

    /// The allocation (slab key) a relay serves, if any.
    #[inline]
    pub fn owner(&self, id: RelayId) -> Option<u32> {
        match self.relays.get(id.index())?.state {
            State::InUse { alloc } => Some(alloc),
            _ => None,
        }
    }

    /// Every registered address.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.relays.iter().map(|r| r.addr)
    }

    /// Number of registered addresses of a family.
    pub fn capacity(&self, family: AddressFamily) -> usize {
        self.total[fam(family)]
    }

    /// Number of addresses held by allocations.
    pub fn in_use(&self) -> usize {
        self.in_use[0] + self.in_use[1]
    }

    /// Number of addresses of a family held by allocations.
    pub fn in_use_of(&self, family: AddressFamily) -> usize {
        self.in_use[fam(family)]
    }

    /// Number of addresses of a family free to allocate now: neither held,
    /// nor reserved for a RESERVATION-TOKEN, nor resting in quarantine. At 0
    /// a plain Allocate of the family is refused ([`PoolError::Exhausted`]).
    pub fn free_of(&self, family: AddressFamily) -> usize {
        self.available[fam(family)]
    }

    /// Recounts the addresses free and in use per family against the kept
    /// counts (for [`Server::check_invariants`](crate::server::Server::check_invariants)).
    pub(crate) fn check_counts(&self) -> Result<(), String> {
        let (mut free, mut in_use) = ([0usize; 2], [0usize; 2]);
        for r in &self.relays {
            let f = fam(AddressFamily::of(&r.addr));
            match r.state {
                State::Free { .. } => free[f] += 1,
                State::InUse { .. } => in_use[f] += 1,
                State::Quarantined | State::Reserved { .. } => {}
            }
        }
        if free != self.available || in_use != self.in_use {
            return Err(format!(
                "pool counts free {:?} and in use {:?}, its addresses are {free:?} and {in_use:?}",
                self.available, self.in_use
            ));
        }
        Ok(())
    }

    /// True when the shard has addresses of this family.
    pub fn supports(&self, family: AddressFamily) -> bool {
        self.total[fam(family)] > 0
    }

    fn take(&mut self, id: RelayId, alloc: u32) {
        let r = &mut self.relays[id.index()];
        let f = fam(AddressFamily::of(&r.addr));
        if matches!(r.state, State::Free { .. }) {
            self.available[f] -= 1;
        }
        r.state = State::InUse { alloc };
        r.epoch = r.epoch.wrapping_add(1);
        self.in_use[f] += 1;
    }

    fn is_free(&self, id: RelayId) -> bool {
        matches!(self.relays[id.index()].state, State::Free { .. })
    }

    /// Addresses resting in quarantine.
    pub fn quarantined(&self) -> usize {
        self.resting.len()
    }

    /// Takes the longest-idle free address of `family` for allocation `alloc`.
    pub fn acquire(&mut self, family: AddressFamily, alloc: u32) -> Result<RelayId, PoolError> {
        if !self.supports(family) {
            return Err(PoolError::FamilyUnsupported);
        }
        let f = fam(family);
        while let Some((id, epoch)) = self.free[f].pop_front() {
            if self.relays[id.index()].state == (State::Free { epoch }) {
                self.take(id, alloc);
                return Ok(id);
            }
        }
        Err(PoolError::Exhausted)
    }

    /// Takes a free address with an even port (EVEN-PORT). With `reserve_next`
    /// the next port up on the same IP must be free too; it is reserved under
    /// `token` until `now + RESERVATION_LIFETIME`.
    pub fn acquire_even(
        &mut self,
        family: AddressFamily,
        alloc: u32,
        reserve_next: Option<([u8; 8], Instant)>,
    ) -> Result<RelayId, PoolError> {
        if !self.supports(family) {
            return Err(PoolError::FamilyUnsupported);
        }
        let f = fam(family);
        let mut found = None;
        for (i, &(id, epoch)) in self.free[f].iter().take(EVEN_PORT_SEARCH).enumerate() {
            let r = &self.relays[id.index()];
            if r.state != (State::Free { epoch }) || !r.addr.port().is_multiple_of(2) {
                continue;
            }
            let next = match reserve_next {
                None => None,
                Some(_) => {
                    let mut a = r.addr;
                    let Some(p) = a.port().checked_add(1) else { continue };
                    a.set_port(p);
                    match self.by_addr.get(&a) {
                        Some(&n) if self.is_free(n) => Some(n),
                        _ => continue,
                    }
                }
            };
            found = Some((i, id, next));
            break;
        }
        let (i, id, next) = found.ok_or(PoolError::Exhausted)?;
        self.free[f].remove(i);
        self.take(id, alloc);
        if let (Some(n), Some((token, now))) = (next, reserve_next) {
            let until = now + RESERVATION_LIFETIME;
            self.relays[n.index()].state = State::Reserved { token, until };
            self.available[f] -= 1;
            self.reservations.push_back((n, until));
        }
        Ok(id)
    }

    /// Takes the address reserved under `token` for allocation `alloc`.
    pub fn acquire_reserved(&mut self, token: &[u8; 8], alloc: u32, now: Instant) -> Result<RelayId, PoolError> {
        let pos = self.reservations.iter().position(|&(id, _)| {
            matches!(self.relays[id.index()].state, State::Reserved { token: t, until } if &t == token && until > now)
        });
        let (id, _) = self.reservations.remove(pos.ok_or(PoolError::BadToken)?).ok_or(PoolError::BadToken)?;
        self.take(id, alloc);
        Ok(id)
    }

    /// Puts an allocation's address in quarantine until `now + quarantine`.
    pub fn release(&mut self, id: RelayId, now: Instant) {
        let Some(r) = self.relays.get_mut(id.index()) else { return };
        if !matches!(r.state, State::InUse { .. }) {
            return;
        }
        self.in_use[fam(AddressFamily::of(&r.addr))] -= 1;
        r.state = State::Quarantined;
        self.resting.push_back((id, now + self.quarantine));
    }

    /// Returns an address to the back of the free list.
    fn make_free(&mut self, id: RelayId) {
        let r = &mut self.relays[id.index()];
        r.epoch = r.epoch.wrapping_add(1);
        r.state = State::Free { epoch: r.epoch };
        let f = fam(AddressFamily::of(&r.addr));
        self.free[f].push_back((id, r.epoch));
        self.available[f] += 1;
    }

    /// Frees reservations that expired and quarantines that ended by `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(id, until)) = self.reservations.front() {
            if until > now {
                break;
            }
            self.reservations.pop_front();
            if matches!(self.relays[id.index()].state, State::Reserved { until: u, .. } if u == until) {
                self.make_free(id);
            }
        }
        while let Some(&(id, until)) = self.resting.front() {
            if until > now {
                break;
            }
            self.resting.pop_front();
            if self.relays[id.index()].state == State::Quarantined {
                self.make_free(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ports: impl IntoIterator<Item = u16>) -> RelayPool {
        let mut p = RelayPool::new(Duration::ZERO);
        for port in ports {
            p.add(SocketAddr::from(([203, 0, 113, 1], port)));
        }
        p
    }

    #[test]
    fn fifo_reuse_and_exhaustion() {
        let mut p = pool([50000, 50001]);
        let a = p.acquire(AddressFamily::V4, 1).unwrap();
        let b = p.acquire(AddressFamily::V4, 2).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.acquire(AddressFamily::V4, 3), Err(PoolError::Exhausted));
        assert_eq!(p.acquire(AddressFamily::V6, 3), Err(PoolError::FamilyUnsupported));
        assert_eq!(p.owner(a), Some(1));
        let t0 = Instant::now();
        p.release(a, t0);
        assert_eq!(p.owner(a), None);
        p.release(b, t0);
        p.expire(t0);
        // `a` has been idle longest: it comes back first.
        assert_eq!(p.acquire(AddressFamily::V4, 4).unwrap(), a);
        assert_eq!(p.acquire(AddressFamily::V4, 5).unwrap(), b);
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn addresses_in_use_are_counted_per_family() {
        let t0 = Instant::now();
        let mut p = pool([50000, 50001]);
        p.add(SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 50000)));
        let a = p.acquire(AddressFamily::V4, 1).unwrap();
        p.acquire(AddressFamily::V4, 2).unwrap();
        assert_eq!((p.in_use_of(AddressFamily::V4), p.in_use_of(AddressFamily::V6), p.in_use()), (2, 0, 2));
        let six = p.acquire(AddressFamily::V6, 3).unwrap();
        assert_eq!((p.in_use_of(AddressFamily::V4), p.in_use_of(AddressFamily::V6), p.in_use()), (2, 1, 3));
        p.release(a, t0);
        p.release(six, t0);
        // Released twice: counted once.
        p.release(six, t0);
        assert_eq!((p.in_use_of(AddressFamily::V4), p.in_use_of(AddressFamily::V6), p.in_use()), (1, 0, 1));
        // Reserved and even ports count under their family too.
        let mut p = pool([50002, 50003]);
        let t = [3u8; 8];
        p.acquire_even(AddressFamily::V4, 1, Some((t, t0))).unwrap();
        assert_eq!(p.in_use_of(AddressFamily::V4), 1, "a reserved port is not in use yet");
        p.acquire_reserved(&t, 2, t0).unwrap();
        assert_eq!((p.in_use_of(AddressFamily::V4), p.in_use_of(AddressFamily::V6)), (2, 0));
    }

    #[test]
    fn free_addresses_are_counted_per_family_as_acquire_sees_them() {
        let t0 = Instant::now();
        let mut p = pool([50002, 50003, 50004]);
        p.quarantine = Duration::from_secs(10);
        p.add(SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 50000)));
        let free = |p: &RelayPool| (p.free_of(AddressFamily::V4), p.free_of(AddressFamily::V6));
        assert_eq!(free(&p), (3, 1));
        // An even port with R: one taken, its neighbour reserved.
        let token = [5u8; 8];
        let even = p.acquire_even(AddressFamily::V4, 1, Some((token, t0))).unwrap();
        assert_eq!(free(&p), (1, 1), "a reserved port is not free");
        let last = p.acquire(AddressFamily::V4, 2).unwrap();
        assert_eq!(free(&p), (0, 1));
        assert_eq!(p.acquire(AddressFamily::V4, 3), Err(PoolError::Exhausted));
        // The reservation taken: none freed.
        let reserved = p.acquire_reserved(&token, 3, t0).unwrap();
        assert_eq!(free(&p), (0, 1));
        // Released ports rest first; free again after their quarantine.
        p.release(last, t0);
        p.release(last, t0);
        assert_eq!(free(&p), (0, 1), "resting is not free");
        assert_eq!(p.acquire(AddressFamily::V4, 4), Err(PoolError::Exhausted));
        p.expire(t0 + Duration::from_secs(10));
        assert_eq!(free(&p), (1, 1));
        for id in [even, reserved] {
            p.release(id, t0 + Duration::from_secs(10));
        }
        p.expire(t0 + Duration::from_secs(20));
        assert_eq!(free(&p), (3, 1));
        p.check_counts().unwrap();
        // A reservation that expires unused is free again.
        let mut p = pool([50002, 50003]);
        p.acquire_even(AddressFamily::V4, 1, Some((token, t0))).unwrap();
        assert_eq!(p.free_of(AddressFamily::V4), 0);
        p.expire(t0 + RESERVATION_LIFETIME);
        assert_eq!(p.free_of(AddressFamily::V4), 1);
        assert!(p.acquire(AddressFamily::V4, 2).is_ok());
        assert_eq!(p.free_of(AddressFamily::V4), 0);
        p.check_counts().unwrap();
    }

    #[test]
    fn even_port_with_reservation() {
        let t0 = Instant::now();
        let mut p = pool([50001, 50002, 50003, 50005, 50006]);
        let token = [7u8; 8];
        let id = p.acquire_even(AddressFamily::V4, 1, Some((token, t0))).unwrap();
        assert_eq!(p.addr(id).unwrap().port(), 50002);
        // 50003 is reserved: plain acquisition skips it.
        let ids: Vec<RelayId> = std::iter::from_fn(|| p.acquire(AddressFamily::V4, 9).ok()).collect();
        let got: Vec<u16> = ids.into_iter().map(|id| p.addr(id).unwrap().port()).collect();
        assert_eq!(got, vec![50001, 50005, 50006]);
        assert_eq!(p.acquire_reserved(&[8u8; 8], 2, t0), Err(PoolError::BadToken));
        let r = p.acquire_reserved(&token, 2, t0).unwrap();
        assert_eq!(p.addr(r).unwrap().port(), 50003);
        assert_eq!(p.acquire_reserved(&token, 3, t0), Err(PoolError::BadToken));
    }

    #[test]
    fn reservations_expire() {
        let t0 = Instant::now();
        let mut p = pool([50002, 50003]);
        let token = [1u8; 8];
        p.acquire_even(AddressFamily::V4, 1, Some((token, t0))).unwrap();
        assert_eq!(p.acquire(AddressFamily::V4, 2), Err(PoolError::Exhausted));
        p.expire(t0 + RESERVATION_LIFETIME);
        assert_eq!(p.acquire_reserved(&token, 2, t0 + RESERVATION_LIFETIME), Err(PoolError::BadToken));
        let id = p.acquire(AddressFamily::V4, 2).unwrap();
        assert_eq!(p.addr(id).unwrap().port(), 50003);
    }

    #[test]
    fn released_addresses_rest_in_quarantine() {
        let t0 = Instant::now();
        let mut p = pool([50000]);
        p.quarantine = Duration::from_secs(10);
        let a = p.acquire(AddressFamily::V4, 1).unwrap();
        p.release(a, t0);
        assert_eq!(p.quarantined(), 1);
        p.expire(t0 + Duration::from_secs(9));
        assert_eq!(p.acquire(AddressFamily::V4, 2), Err(PoolError::Exhausted));
        p.expire(t0 + Duration::from_secs(10));
        assert_eq!(p.acquire(AddressFamily::V4, 2), Ok(a));
        assert_eq!(p.quarantined(), 0);
    }

    #[test]
    fn even_port_needs_the_odd_neighbour_free_for_r() {
        let t0 = Instant::now();
        let mut p = pool([50002, 50004, 50005]);
        let id = p.acquire_even(AddressFamily::V4, 1, Some(([0; 8], t0))).unwrap();
        assert_eq!(p.addr(id).unwrap().port(), 50004);
        assert_eq!(p.acquire_even(AddressFamily::V4, 2, Some(([1; 8], t0))), Err(PoolError::Exhausted));
        let id = p.acquire_even(AddressFamily::V4, 2, None).unwrap();
        assert_eq!(p.addr(id).unwrap().port(), 50002);
    }
}
