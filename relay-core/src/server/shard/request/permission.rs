//! CreatePermission (RFC 8656 §9): permissions by peer IP, all or nothing,
//! each peer checked against the allocation's families and the peer
//! policy.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::Request;
use crate::server::error::StunError;
use crate::server::stats::Drop;
use crate::server::table::Permission;
use crate::server::{ClientAction, Server};
use crate::wire::{Attribute, AttributeType};

impl Server {
    pub(super) fn create_permission(&mut self, rq: &mut Request<'_, '_>) -> ClientAction {
        let id = match self.authenticate_existing(rq) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let msg = rq.msg;
        let tid = msg.transaction_id();
        // Validate every address before installing any (all or nothing).
        let mut count = 0usize;
        let mut new = 0usize;
        for attr in msg.get_all(AttributeType::XOR_PEER_ADDRESS) {
            let Ok(Attribute::XorPeerAddress(peer)) = attr.decode(&tid) else {
                return self.error(rq, StunError::BadRequest);
            };
            if let Err(e) = self.check_peer(id, &peer) {
                return self.error(rq, e);
            }
            count += 1;
            if self.table.get(id).is_some_and(|a| !a.permissions.iter().any(|p| p.ip == peer.ip())) {
                new += 1;
            }
        }
        if count == 0 {
            return self.error(rq, StunError::BadRequest);
        }
        if self.table.get(id).is_some_and(|a| a.permissions.len() + new > self.config.max_permissions) {
            return self.error(rq, StunError::InsufficientCapacity);
        }
        let expires = rq.now + self.config.permission_lifetime;
        for attr in msg.get_all(AttributeType::XOR_PEER_ADDRESS) {
            if let Ok(Attribute::XorPeerAddress(peer)) = attr.decode(&tid) {
                self.install_permission(id, peer.ip(), expires);
            }
        }
        self.schedule_by(id, expires);
        // A permission coming back puts its channels on the fast path again.
        self.sync_fast(id, rq.now);
        self.success(rq, |_| Ok(()))
    }

    /// Checks a peer for a permission or channel: the allocation must have
    /// a relay of its family (443) and the policy must allow it (403,
    /// counted as a denied peer).
    pub(super) fn check_peer(&mut self, id: u32, peer: &SocketAddr) -> Result<(), StunError> {
        let a = self.table.get(id).ok_or(StunError::AllocationMismatch)?;
        if a.relay_for(peer).is_none() {
            return Err(StunError::PeerAddressFamilyMismatch);
        }
        if let Err(denied) = self.policy.check(*peer) {
            self.stats.drop(Drop::DeniedPeer);
            return Err(denied.error());
        }
        Ok(())
    }

    /// Installs or extends the permission for `ip`.
    pub(super) fn install_permission(&mut self, id: u32, ip: IpAddr, expires: Instant) {
        let Some(a) = self.table.get_mut(id) else { return };
        match a.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = p.expires.max(expires),
            None => {
                a.permissions.push(Permission { ip, expires });
                self.stats.permissions_active += 1;
            }
        }
    }
}
