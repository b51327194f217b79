//! NAT behaviour discovery on the server side (RFC 5780 §6–7).
//!
//! A server told its alternate address set with [`Server::set_rfc5780`]
//! (primary `A1:P1`, other `A2:P2`, and so the four listen addresses
//! `A1:P1`, `A1:P2`, `A2:P1`, `A2:P2`) puts OTHER-ADDRESS and
//! RESPONSE-ORIGIN in Binding responses and answers CHANGE-REQUEST from the
//! other IP and/or port. RESPONSE-PORT and PADDING work with or without an
//! alternate address, as RFC 5780 §5 intends ("to allow the use of PADDING
//! and RESPONSE-PORT in applications where servers do not have multiple IP
//! addresses").
//!
//! Only UDP clients get the address-changing behaviour: STUN forbids a
//! server to open a TCP connection to a client (RFC 5780 §3), so over TCP
//! and TLS a CHANGE-REQUEST with a flag set, or a RESPONSE-PORT, is answered
//! 420 like a server without an alternate address answers it.
//!
//! [`Server::set_rfc5780`]: super::Server::set_rfc5780

use std::net::{IpAddr, SocketAddr};

use super::table::Client;
use crate::wire::attr::ChangeRequest;
use crate::wire::{Attribute, AttributeType, Message};

/// The server's two addresses for RFC 5780.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc5780 {
    /// `A1:P1`: the address clients are given.
    pub primary: SocketAddr,
    /// `A2:P2`: the OTHER-ADDRESS of a request sent to `A1:P1`.
    pub other: SocketAddr,
}

/// Why an alternate address set is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rfc5780Error {
    /// The two addresses are of different families.
    #[error("the primary and the other address must be of one family")]
    FamilyMismatch,
    /// The two addresses share an IP, or a port, or one is unspecified.
    #[error("the other address needs an IP and a port of its own, both specified")]
    NotDistinct,
}

impl Rfc5780 {
    /// Checks the pair: one family, two distinct specified IPs, two
    /// distinct non-zero ports.
    pub fn new(primary: SocketAddr, other: SocketAddr) -> Result<Rfc5780, Rfc5780Error> {
        if primary.is_ipv4() != other.is_ipv4() {
            return Err(Rfc5780Error::FamilyMismatch);
        }
        let specified = |a: &SocketAddr| !a.ip().is_unspecified() && a.port() != 0;
        if primary.ip() == other.ip() || primary.port() == other.port() || !specified(&primary) || !specified(&other) {
            return Err(Rfc5780Error::NotDistinct);
        }
        Ok(Rfc5780 { primary, other })
    }

    /// The four addresses the server must listen on.
    pub fn listen_addresses(&self) -> [SocketAddr; 4] {
        let (a1, a2, p1, p2) = (self.primary.ip(), self.other.ip(), self.primary.port(), self.other.port());
        [SocketAddr::new(a1, p1), SocketAddr::new(a1, p2), SocketAddr::new(a2, p1), SocketAddr::new(a2, p2)]
    }

    /// For a request received on `local` (`Da:Dp`), the other IP and port
    /// (`Ca`, `Cp`); `None` when `local` is not one of the four addresses.
    fn changed(&self, local: SocketAddr) -> Option<(IpAddr, u16)> {
        let (a1, a2, p1, p2) = (self.primary.ip(), self.other.ip(), self.primary.port(), self.other.port());
        let ca = match local.ip() {
            ip if ip == a1 => a2,
            ip if ip == a2 => a1,
            _ => return None,
        };
        let cp = match local.port() {
            p if p == p1 => p2,
            p if p == p2 => p1,
            _ => return None,
        };
        Some((ca, cp))
    }
}

/// How a Binding response is to be built and sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Send from this local address.
    pub from: SocketAddr,
    /// Send to this address.
    pub to: SocketAddr,
    /// RESPONSE-ORIGIN to include.
    pub origin: Option<SocketAddr>,
    /// OTHER-ADDRESS to include.
    pub other: Option<SocketAddr>,
    /// PADDING value length to include (the request's, rounded up to 4).
    pub padding: Option<usize>,
}

/// Why a Binding request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400 Bad Request.
    BadRequest,
    /// 420 Unknown Attribute, naming this attribute.
    Unsupported(AttributeType),
}

/// Decides the RFC 5780 side of a Binding response.
pub(crate) fn plan(config: Option<&Rfc5780>, client: &Client, msg: &Message<'_>) -> Result<Plan, Refusal> {
    let tid = msg.transaction_id();
    let mut change = None;
    let mut response_port = None;
    let mut padding = None;
    for attr in msg.attributes() {
        match attr.ty {
            AttributeType::CHANGE_REQUEST | AttributeType::RESPONSE_PORT | AttributeType::PADDING => {}
            _ => continue,
        }
        match attr.decode(&tid) {
            Ok(Attribute::ChangeRequest(c)) => change = Some(c),
            Ok(Attribute::ResponsePort(p)) => response_port = Some(p),
            Ok(Attribute::Padding(v)) => padding = Some(v.len().next_multiple_of(4)),
            _ => return Err(Refusal::BadRequest),
        }
    }
    let udp = !client.transport.is_stream();
    // The alternate address set applies to a UDP request received on one
    // of its four addresses.
    let alternate = config.filter(|_| udp).and_then(|c| c.changed(client.local));
    let mut plan = Plan {
        from: client.local,
        to: client.remote,
        origin: config.map(|_| client.local),
        other: alternate.map(|(ca, cp)| SocketAddr::new(ca, cp)),
        padding,
    };
    if let Some(ChangeRequest { change_ip, change_port }) = change {
        match alternate {
            Some((ca, cp)) => {
                let ip = if change_ip { ca } else { client.local.ip() };
                let port = if change_port { cp } else { client.local.port() };
                plan.from = SocketAddr::new(ip, port);
                plan.origin = Some(plan.from);
            }
            // RFC 5780 §6.1: "If the Request contains the CHANGE-REQUEST
            // attribute and the server does not have an alternate address
            // and port as described above, the server MUST generate an
            // error response of type 420." (§6: it "MUST respond with a 420
            // (Unknown Attribute) to any Request with a CHANGE-REQUEST
            // attribute".) Over TCP/TLS a request with no flag set can still
            // be answered from where it arrived.
            None if config.is_none() || change_ip || change_port => {
                return Err(Refusal::Unsupported(AttributeType::CHANGE_REQUEST));
            }
            None => {}
        }
    }
    if let Some(port) = response_port {
        // RFC 5780 §7.5: "The server MUST NOT process a request containing
        // a RESPONSE-PORT and a PADDING attribute"; §6.1: 400.
        if padding.is_some() || port == 0 {
            return Err(Refusal::BadRequest);
        }
        if !udp {
            return Err(Refusal::Unsupported(AttributeType::RESPONSE_PORT));
        }
        plan.to = SocketAddr::new(client.remote.ip(), port);
    }
    Ok(plan)
}

/// Zero bytes for PADDING values.
pub(crate) static ZEROS: [u8; 1500] = [0; 1500];

/// The largest PADDING that fits a response in `out_len` bytes with
/// `software_len` bytes of SOFTWARE: the header, four IPv6 address
/// attributes, the PADDING header, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
/// are set aside.
pub(crate) fn padding_room(out_len: usize, software_len: usize) -> usize {
    let reserved = 20 + 4 * 24 + 4 + 36 + 8 + 4 + software_len.next_multiple_of(4);
    (out_len.saturating_sub(reserved) & !3).min(ZEROS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn changed_address_follows_table_1() {
        let c = Rfc5780::new(a("192.0.2.1:3478"), a("192.0.2.2:3479")).unwrap();
        assert_eq!(c.changed(a("192.0.2.1:3478")), Some(("192.0.2.2".parse().unwrap(), 3479)));
        assert_eq!(c.changed(a("192.0.2.2:3478")), Some(("192.0.2.1".parse().unwrap(), 3479)));
        assert_eq!(c.changed(a("192.0.2.1:3479")), Some(("192.0.2.2".parse().unwrap(), 3478)));
        assert_eq!(c.changed(a("192.0.2.3:3478")), None);
        assert_eq!(c.changed(a("192.0.2.1:9")), None);
        assert_eq!(c.listen_addresses().len(), 4);
    }

    #[test]
    fn pairs_are_validated() {
        assert_eq!(Rfc5780::new(a("192.0.2.1:3478"), a("[::1]:3479")), Err(Rfc5780Error::FamilyMismatch));
        assert_eq!(Rfc5780::new(a("192.0.2.1:3478"), a("192.0.2.1:3479")), Err(Rfc5780Error::NotDistinct));
        assert_eq!(Rfc5780::new(a("192.0.2.1:3478"), a("192.0.2.2:3478")), Err(Rfc5780Error::NotDistinct));
        assert_eq!(Rfc5780::new(a("0.0.0.0:3478"), a("192.0.2.2:3479")), Err(Rfc5780Error::NotDistinct));
    }

    #[test]
    fn padding_room_leaves_space() {
        assert_eq!(padding_room(1500, 0), 1332);
        assert_eq!(padding_room(100, 0), 0);
        assert_eq!(padding_room(1500, 10) % 4, 0);
    }
}
