//! Refresh (RFC 8656 §8): a new lifetime for the allocation, or its end
//! with LIFETIME 0.

use super::Request;
use crate::server::error::StunError;
use crate::server::{ClientAction, Server};
use crate::wire::{AddressFamily, Attribute};

impl Server {
    pub(super) fn refresh(&mut self, rq: &mut Request<'_, '_>) -> ClientAction {
        let id = match self.authenticate_existing(rq) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let tid = rq.msg.transaction_id();
        let mut lifetime = None;
        for attr in rq.msg.attributes() {
            match attr.decode(&tid) {
                Ok(Attribute::Lifetime(s)) => lifetime = Some(s),
                Ok(Attribute::RequestedAddressFamily(f)) => {
                    let has = match AddressFamily::from_code(f) {
                        Some(AddressFamily::V4) => self.table.get(id).is_some_and(|a| a.relays[0].is_some()),
                        Some(AddressFamily::V6) => self.table.get(id).is_some_and(|a| a.relays[1].is_some()),
                        None => false,
                    };
                    if !has {
                        return self.error(rq, StunError::PeerAddressFamilyMismatch);
                    }
                }
                Ok(_) => {}
                Err(_) => return self.error(rq, StunError::BadRequest),
            }
        }
        let now = rq.now;
        if lifetime == Some(0) {
            self.stats.allocations_deleted += 1;
            self.delete(id, now);
            return self.success(rq, |b| {
                b.add(&Attribute::Lifetime(0))?;
                Ok(())
            });
        }
        let granted = self.granted_lifetime(lifetime);
        if let Some(a) = self.table.get_mut(id) {
            a.expires = now + granted;
        }
        self.schedule_by(id, now + granted);
        self.success(rq, |b| {
            b.add(&Attribute::Lifetime(granted.as_secs() as u32))?;
            Ok(())
        })
    }
}
