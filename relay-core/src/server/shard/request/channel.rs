//! ChannelBind (RFC 8656 §11): a channel number for a peer, which also
//! installs or refreshes its permission; numbers and peers of expired
//! bindings rest in quarantine before reuse (§12).

use super::Request;
use crate::server::error::StunError;
use crate::server::table::Channel;
use crate::server::{ClientAction, Server};
use crate::wire::channel_data;
use crate::wire::{Attribute, AttributeType};

impl Server {
    pub(super) fn channel_bind(&mut self, rq: &mut Request<'_, '_>) -> ClientAction {
        let id = match self.authenticate_existing(rq) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let (msg, now) = (rq.msg, rq.now);
        let tid = msg.transaction_id();
        let number = match msg.get(AttributeType::CHANNEL_NUMBER).map(|a| a.decode(&tid)) {
            Some(Ok(Attribute::ChannelNumber(n))) if channel_data::is_valid_channel(n) => n,
            _ => return self.error(rq, StunError::BadRequest),
        };
        let mut peers = msg.get_all(AttributeType::XOR_PEER_ADDRESS);
        let peer = match (peers.next().map(|a| a.decode(&tid)), peers.next()) {
            (Some(Ok(Attribute::XorPeerAddress(p))), None) => p,
            _ => return self.error(rq, StunError::BadRequest),
        };
        if let Err(e) = self.check_peer(id, &peer) {
            return self.error(rq, e);
        }
        let quarantine = self.config.channel_quarantine;
        let max_channels = self.config.max_channels;
        let channel_expires = now + self.config.channel_lifetime;
        let Some(a) = self.table.get_mut(id) else { return ClientAction::None };
        // An entry (live or in quarantine) holding this number or this peer.
        let held = |c: &Channel| c.expires + quarantine > now;
        let same = a.channels.iter().position(|c| c.number == number && c.peer == peer && held(c));
        let conflict = a.channels.iter().any(|c| held(c) && ((c.number == number) != (c.peer == peer)));
        if conflict {
            return self.error(rq, StunError::BadRequest);
        }
        match same {
            Some(i) => {
                let c = &mut a.channels[i];
                if !c.counted {
                    c.counted = true;
                    self.stats.channels_active += 1;
                }
                c.expires = channel_expires;
            }
            None => {
                if a.channels.len() >= max_channels {
                    return self.error(rq, StunError::InsufficientCapacity);
                }
                a.channels.push(Channel { number, peer, expires: channel_expires, counted: true, fast: false });
                self.stats.channels_active += 1;
            }
        }
        // Binding a channel installs or refreshes the permission.
        let perm_expires = now + self.config.permission_lifetime;
        self.install_permission(id, peer.ip(), perm_expires);
        self.schedule_by(id, perm_expires.min(channel_expires));
        self.sync_fast(id, now);
        self.success(rq, |_| Ok(()))
    }
}
