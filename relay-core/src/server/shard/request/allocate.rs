//! Allocate (RFC 8656 §7): a relay address (two with
//! ADDITIONAL-ADDRESS-FAMILY) from the shard's pool, within the quotas;
//! EVEN-PORT, RESERVATION-TOKEN, DONT-FRAGMENT and LIFETIME.

use super::Request;
use crate::server::error::StunError;
use crate::server::quota::TokenBucket;
use crate::server::relays::PoolError;
use crate::server::table::Allocation;
use crate::server::{ClientAction, Event, Server};
use crate::wire::attr::transport;
use crate::wire::{AddressFamily, Attribute, ErrorCode};

impl Server {
    pub(super) fn allocate(&mut self, rq: &mut Request<'_, '_>) -> ClientAction {
        let existing = self.table.lookup(rq.client);
        let username = match self.authenticate(rq, existing) {
            Ok(u) => u,
            Err(r) => return r,
        };
        // Set by a successful authentication.
        let Some((key, _)) = rq.seal.key else { return ClientAction::None };
        let (msg, now) = (rq.msg, rq.now);
        let tid = msg.transaction_id();
        if let Some(id) = existing {
            // A retransmission gets the original answer; anything else 437.
            if self.table.get(id).is_some_and(|a| a.allocate_tid == tid) {
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

        if !self.accepting {
            return self.error(rq, StunError::InsufficientCapacity);
        }
        let quota = match self.quotas.acquire(quota_identity(username).as_bytes()) {
            Ok(q) => q,
            Err(e) => return self.error(rq, e.error()),
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

/// Whose quota an allocation counts against: for TURN REST usernames
/// (`expiry:user`) the user, not the credential, so that a user cannot
/// escape the per-user limit by fetching fresh credentials.
fn quota_identity(username: &str) -> &str {
    match username.split_once(':') {
        Some((expiry, user)) if !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) => user,
        _ => username,
    }
}
