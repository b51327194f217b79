//! Binding (RFC 8489 §3): XOR-MAPPED-ADDRESS, and MAPPED-ADDRESS for RFC
//! 3489-era clients (RFC 5780 §6.1 asks for both); the RFC 5780 attributes
//! and CHANGE-REQUEST are decided in [`crate::server::rfc5780`].

use super::Request;
use crate::server::error::StunError;
use crate::server::rfc5780::{self, Refusal};
use crate::server::{ClientAction, Server};
use crate::wire::{Attribute, AttributeType};

impl Server {
    pub(super) fn binding(&mut self, rq: &mut Request<'_, '_>) -> ClientAction {
        let plan = match rfc5780::plan(self.rfc5780.as_ref(), rq.client, rq.msg) {
            Ok(p) => p,
            Err(Refusal::BadRequest) => return self.error(rq, StunError::BadRequest),
            Err(Refusal::Unsupported(ty)) => {
                return self.error_with(rq, StunError::UnknownAttribute, |b| {
                    b.add_raw(AttributeType::UNKNOWN_ATTRIBUTES, &ty.0.to_be_bytes())?;
                    Ok(())
                });
            }
        };
        let remote = rq.client.remote;
        let room = rfc5780::padding_room(rq.out.len(), self.config.software.as_ref().map_or(0, String::len));
        let action = self.success(rq, |b| {
            b.add(&Attribute::XorMappedAddress(remote))?;
            b.add(&Attribute::MappedAddress(remote))?;
            if let Some(origin) = plan.origin {
                b.add(&Attribute::ResponseOrigin(origin))?;
            }
            if let Some(other) = plan.other {
                b.add(&Attribute::OtherAddress(other))?;
            }
            if let Some(n) = plan.padding {
                b.add(&Attribute::Padding(&rfc5780::ZEROS[..n.min(room)]))?;
            }
            Ok(())
        });
        match action {
            ClientAction::Reply { len } if plan.from != rq.client.local || plan.to != remote => {
                ClientAction::ReplyFrom { local: plan.from, to: plan.to, len }
            }
            other => other,
        }
    }
}
