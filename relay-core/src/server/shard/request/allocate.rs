//! Allocate (RFC 8656 §7): a relay address (two with
//! ADDITIONAL-ADDRESS-FAMILY) from the shard's pool, within the quotas;
//! EVEN-PORT, RESERVATION-TOKEN, DONT-FRAGMENT and LIFETIME; while draining
//! or loaded, a 300 to an alternate server instead ([`crate::server::alternate`]).
//!
//! The redirect comes before authentication when the Allocate has no
//! MESSAGE-INTEGRITY (a new client's first request), after it otherwise
//! (sealed with the client's key).
//!
//! A full node redirects too, where it has an alternate for the client:
//! the server's allocation quota reached (what would be 508) is a 300
//! counted as `quota`, relay ports of the requested family used up (508 as
//! well) a 300 counted as `load`. Both are known before the challenge (the
//! quota book's [`is_full`](crate::server::quota::QuotaBook::is_full), the
//! pool's free count), so a browser's first Allocate is moved unsealed like
//! a draining node's. A node that fills between the challenge and the
//! authenticated request still redirects then, sealed. The per-user quota
//! (486) is not redirected: it is a limit on the user, not a lack of room,
//! and each node counts it for itself, so a redirect would hand the user a
//! fresh quota on every node of the fleet (nor can it be known before the
//! user is).
//!
//! An Allocate with RESERVATION-TOKEN is never redirected: the token names
//! a port this node holds for the client (the pair of an EVEN-PORT
//! allocation made here), which no other node has. It is served, or
//! answered 508 while draining or full, as without alternates.

use super::Request;
use crate::server::alternate;
use crate::server::error::StunError;
use crate::server::quota::{QuotaError, TokenBucket};
use crate::server::relays::PoolError;
use crate::server::stats::RedirectReason;
use crate::server::table::Allocation;
use crate::server::{ClientAction, Event, Server};
use crate::wire::attr::transport;
use crate::wire::{AddressFamily, Attribute, ErrorCode};

impl Server {
    pub(super) fn allocate(&mut self, rq: &mut Request<'_, '_>) -> ClientAction {
        let existing = self.table.lookup(rq.client);
        // The 5-tuple held by another stream connection's allocation (two
        // connections naming one client): 437, after this one's own
        // authentication.
        let taken = self.table.lookup_key(rq.client);
        // Draining, loaded or full, and a new client that has not
        // authenticated yet: the 300 at once, before the challenge
        // (unsealed, without REALM or NONCE; see server::alternate for
        // why). Without alternates nothing is decoded here.
        if taken.is_none()
            && !rq.msg.has_integrity()
            && !self.config.alternates.is_empty()
            && let Some(family) = redirectable(rq.msg)
            && let Some(reason) = self.redirect_reason(family)
            && let Some(redirect) = self.try_alternate(rq, reason)
        {
            return redirect;
        }
        let username = match self.authenticate(rq, existing) {
            Ok(u) => u,
            Err(r) => return r,
        };
        // Set by a successful authentication.
        let Some((key, _)) = rq.seal.key else { return ClientAction::None };
        let (msg, now) = (rq.msg, rq.now);
        let tid = msg.transaction_id();
        if let Some(id) = taken {
            // A retransmission gets the original answer; anything else 437.
            if existing == Some(id) && self.table.get(id).is_some_and(|a| a.allocate_tid == tid) {
                return self.allocate_success(rq, id);
            }
            return self.error(rq, StunError::AllocationMismatch);
        }

        let mut requested_transport = None;
        let mut lifetime = None;
        let mut dont_fragment = false;
        let mut even_port = None;
        let mut token = None;
        let mut family = None;
        let mut additional = None;
        for attr in msg.attributes() {
            match attr.decode(&tid) {
                Ok(Attribute::RequestedTransport(p)) => requested_transport = Some(p),
                Ok(Attribute::Lifetime(s)) => lifetime = Some(s),
                Ok(Attribute::DontFragment) => dont_fragment = true,
                Ok(Attribute::EvenPort(r)) => even_port = Some(r),
                Ok(Attribute::ReservationToken(t)) => token = Some(*t),
                Ok(Attribute::RequestedAddressFamily(f)) => family = Some(f),
                Ok(Attribute::AdditionalAddressFamily(f)) => additional = Some(f),
                Ok(_) => {}
                Err(_) => return self.error(rq, StunError::BadRequest),
            }
        }
        match requested_transport {
            None => return self.error(rq, StunError::BadRequest),
            Some(transport::UDP) => {}
            Some(_) => return self.error(rq, StunError::UnsupportedTransport),
        }
        // RFC 8656 §7.2 steps 5-7: attribute combinations.
        let bad_combination = (token.is_some() && (even_port.is_some() || family.is_some() || additional.is_some()))
            || (family.is_some() && additional.is_some());
        if bad_combination {
            return self.error(rq, StunError::BadRequest);
        }
        let family = match family.map(AddressFamily::from_code) {
            None => AddressFamily::V4,
            Some(Some(f)) => f,
            Some(None) => return self.error(rq, StunError::AddressFamilyNotSupported),
        };
        let want_v6_too = match additional.map(AddressFamily::from_code) {
            None => false,
            Some(Some(AddressFamily::V6)) => true,
            // ADDITIONAL-ADDRESS-FAMILY may only name IPv6.
            Some(_) => return self.error(rq, StunError::BadRequest),
        };

        // Draining, loaded or full: to an alternate (after authentication,
        // so the 300 is sealed; see server::alternate), else draining is
        // 508. Never with a reservation token: it names a port of this node.
        if token.is_none()
            && let Some(reason) = self.redirect_reason(family)
            && let Some(redirect) = self.try_alternate(rq, reason)
        {
            return redirect;
        }
        if !self.accepting {
            return self.error(rq, StunError::InsufficientCapacity);
        }
        let quota = match self.quotas.acquire(quota_identity(username).as_bytes()) {
            Ok(q) => q,
            Err(e) => {
                // The node is full (not the user), filled since
                // `redirect_reason` looked (another shard took the last
                // place): another node may have room.
                if e == QuotaError::TotalReached
                    && token.is_none()
                    && let Some(redirect) = self.try_alternate(rq, RedirectReason::Quota)
                {
                    return redirect;
                }
                return self.error(rq, e.error());
            }
        };

        // Size the table for every relay address once, before the first
        // allocation (relays are all registered by then).
        let total = self.pool.capacity(AddressFamily::V4) + self.pool.capacity(AddressFamily::V6);
        if total > self.reserved_for {
            self.table.reserve_total(total);
            self.reserved_for = total;
        }
        let id = self.table.vacant_key();
        let reserve = (even_port == Some(true)).then(|| (self.rng.next_u64().to_le_bytes(), now));
        let first = match (token, even_port) {
            (Some(t), _) => self.pool.acquire_reserved(&t, id, now),
            (None, Some(_)) => self.pool.acquire_even(family, id, reserve),
            (None, None) => self.pool.acquire(family, id),
        };
        let first = match first {
            Ok(r) => r,
            Err(e) => {
                self.quotas.release(quota);
                // Every relay port of the family taken: full, as far as
                // this client goes (a reservation token is this node's own,
                // and a family it lacks is not a matter of load).
                if e == PoolError::Exhausted
                    && let Some(redirect) = self.try_alternate(rq, RedirectReason::Load)
                {
                    return redirect;
                }
                let e = if e == PoolError::FamilyUnsupported {
                    StunError::AddressFamilyNotSupported
                } else {
                    StunError::InsufficientCapacity
                };
                return self.error(rq, e);
            }
        };
        let mut relays = [None, None];
        let first_family = self.pool.addr(first).map(|a| AddressFamily::of(&a)).unwrap_or(family);
        relays[usize::from(first_family == AddressFamily::V6)] = Some(first);
        let mut additional_family_failed = false;
        if want_v6_too {
            match self.pool.acquire(AddressFamily::V6, id) {
                Ok(r) => relays[1] = Some(r),
                Err(_) => additional_family_failed = true,
            }
        }
        let lifetime = self.granted_lifetime(lifetime);
        let expires = now + lifetime;
        let bucket = TokenBucket::new(self.config.bandwidth_limit, self.config.bandwidth_burst, now);
        let inserted = self.table.insert(Allocation {
            client: *rq.client,
            relays,
            expires,
            username: username.into(),
            key,
            permissions: Default::default(),
            channels: Default::default(),
            quota: Some(quota),
            bucket,
            allocate_tid: tid,
            reservation: reserve.map(|(t, _)| t),
            additional_family_failed,
            generation: 0,
            scheduled: expires,
            created: now,
            traffic: Default::default(),
        });
        debug_assert_eq!(inserted, id);
        self.schedule(id, expires);
        for relay in relays.into_iter().flatten() {
            self.events.push_back(Event::RelayOpened { relay, dont_fragment });
        }
        self.stats.allocations_created += 1;
        self.stats.allocations_active += 1;
        self.allocate_success(rq, id)
    }

    /// A 300 (Try Alternate) sending `rq`'s client to one of the
    /// alternates (and, second, one of the other address family when there
    /// is one), counted under `reason` when it is sent (an unauthenticated
    /// answer over the source's reflection budget is not); `None` when none
    /// suits the client (see [`alternate::choose`]).
    fn try_alternate(&mut self, rq: &mut Request<'_, '_>, reason: RedirectReason) -> Option<ClientAction> {
        let choice = alternate::choose(&self.config.alternates, rq.client, self.policy.own())?;
        let (to, other) = (choice.address, choice.other_family);
        let domain = choice.domain.map(str::to_owned);
        let action = self.error_with(rq, StunError::TryAlternate, |b| {
            b.add(&Attribute::AlternateServer(to))?;
            if let Some(o) = other {
                b.add(&Attribute::AlternateServer(o))?;
            }
            if let Some(d) = &domain {
                b.add(&Attribute::AlternateDomain(d))?;
            }
            Ok(())
        });
        if matches!(action, ClientAction::Reply { .. }) {
            self.stats.redirects[reason as usize] += 1;
        }
        Some(action)
    }

    /// Why a new allocation of a relay address of `family` should go to an
    /// alternate now, if it should: draining, a load threshold reached (the
    /// relay ports threshold counts that family's ports of the shard), the
    /// server's allocation quota reached (`quota`), or no relay port of
    /// the family free (`load`). Never without alternates. Nothing here
    /// depends on the user, so it holds before the challenge as after.
    fn redirect_reason(&self, family: AddressFamily) -> Option<RedirectReason> {
        let c = &self.config;
        if c.alternates.is_empty() {
            return None;
        }
        if !self.accepting {
            return Some(RedirectReason::Draining);
        }
        if let Some(limit) = c.redirect_above_allocations {
            let held = self.quotas.total_allocations().unwrap_or(self.table.len() as u64);
            if held >= limit {
                return Some(RedirectReason::Load);
            }
        }
        // Per family: on a dual-stack shard the IPv4 ports can run out
        // while the IPv6 ones are idle. A family the shard lacks is no
        // matter of load (440).
        if let Some(fraction) = c.redirect_above_relay_ports {
            let ports = self.pool.capacity(family);
            if ports > 0 && (self.pool.in_use_of(family) + 1) as f64 > fraction * ports as f64 {
                return Some(RedirectReason::Load);
            }
        }
        // Full: what would be 508 once authenticated. The total quota only
        // (a user's is no lack of room, and unknown before the challenge).
        if self.quotas.is_full() {
            return Some(RedirectReason::Quota);
        }
        // Every port of the family held, reserved or resting. A family the
        // shard lacks is 440, as above.
        if self.pool.supports(family) && self.pool.free_of(family) == 0 {
            return Some(RedirectReason::Load);
        }
        None
    }

    fn allocate_success(&mut self, rq: &mut Request<'_, '_>, id: u32) -> ClientAction {
        let Some(a) = self.table.get(id) else { return ClientAction::None };
        let relays = a.relays.map(|r| r.and_then(|r| self.pool.addr(r)));
        let remaining = a.expires.saturating_duration_since(rq.now).as_secs() as u32;
        let reservation = a.reservation;
        let failed = a.additional_family_failed;
        let remote = rq.client.remote;
        self.success(rq, |b| {
            for r in relays.into_iter().flatten() {
                b.add(&Attribute::XorRelayedAddress(r))?;
            }
            b.add(&Attribute::Lifetime(remaining))?;
            if let Some(t) = &reservation {
                b.add(&Attribute::ReservationToken(t))?;
            }
            b.add(&Attribute::XorMappedAddress(remote))?;
            if failed {
                let e = StunError::AddressFamilyNotSupported;
                let code = ErrorCode { code: e.code(), reason: e.reason() };
                b.add(&Attribute::AddressErrorCode(AddressFamily::V6.code(), code))?;
            }
            Ok(())
        })
    }
}

/// The relay address family an Allocate asks for, when it may be
/// redirected before authentication: a UDP relay (REQUESTED-TRANSPORT 17),
/// no RESERVATION-TOKEN, a known REQUESTED-ADDRESS-FAMILY (IPv4 without
/// one), and every attribute well formed (anything else is answered as it
/// would be without alternates, after the challenge).
fn redirectable(msg: &crate::wire::Message<'_>) -> Option<AddressFamily> {
    let tid = msg.transaction_id();
    let (mut udp, mut family) = (false, AddressFamily::V4);
    for a in msg.attributes() {
        match a.decode(&tid).ok()? {
            Attribute::RequestedTransport(p) => udp = p == transport::UDP,
            Attribute::ReservationToken(_) => return None,
            Attribute::RequestedAddressFamily(f) => family = AddressFamily::from_code(f)?,
            _ => {}
        }
    }
    udp.then_some(family)
}

/// Whose quota an allocation counts against: for TURN REST usernames
/// (`expiry:user`) the user, not the credential, so that a user cannot
/// escape the per-user limit by fetching fresh credentials.
fn quota_identity(username: &str) -> &str {
    match username.split_once(':') {
        Some((expiry, user)) if !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) => user,
        _ => username,
    }
}
