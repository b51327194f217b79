//! Application data on the client side of a TURN allocation: Send
//! indications out, ChannelData and Data indications in. ChannelData is
//! written with [`crate::wire::channel_data::encode`] (padded over a
//! stream); nothing here allocates or copies the payload.

use std::net::SocketAddr;
use std::ops::Range;

use crate::wire::channel_data::{CHANNEL_DATA_HEADER_LEN, ChannelData};
use crate::wire::{Attribute, Class, EncodeError, Message, MessageBuilder, MessageType, Method, TransactionId};

/// Application data the client received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A ChannelData message: its channel and where the payload lies in the
    /// buffer.
    Channel(u16, Range<usize>),
    /// A Data indication: the peer and where the payload lies in the buffer.
    Indication(SocketAddr, Range<usize>),
}

/// Writes a Send indication for `peer` carrying `data` into `out`; returns
/// its length. Indications carry no credentials (RFC 8656 §10.1).
pub fn encode_send_indication(
    out: &mut [u8],
    tid: TransactionId,
    peer: SocketAddr,
    data: &[u8],
) -> Result<usize, EncodeError> {
    let mut b = MessageBuilder::new(out, MessageType::new(Class::Indication, Method::SEND), tid)?;
    b.add(&Attribute::XorPeerAddress(peer))?;
    b.add(&Attribute::Data(data))?;
    Ok(b.finish())
}

/// Reads application data out of a datagram (or frame) from the server:
/// ChannelData or a Data indication. `None` for anything else.
pub fn parse_data(buf: &[u8]) -> Option<Received> {
    let first = *buf.first()?;
    if (0x40..=0x4F).contains(&first) {
        let cd = ChannelData::parse(buf).ok()?;
        let start = CHANNEL_DATA_HEADER_LEN;
        return Some(Received::Channel(cd.channel, start..start + cd.payload.len()));
    }
    let m = Message::parse(buf).ok()?;
    if m.message_type() != MessageType::new(Class::Indication, Method::DATA) {
        return None;
    }
    let tid = m.transaction_id();
    let (mut peer, mut data) = (None, None);
    for a in m.attributes() {
        match a.decode(&tid) {
            Ok(Attribute::XorPeerAddress(p)) => peer = Some(p),
            Ok(Attribute::Data(d)) => data = Some(d),
            _ => {}
        }
    }
    let (peer, d) = (peer?, data?);
    let start = d.as_ptr() as usize - buf.as_ptr() as usize;
    Some(Received::Indication(peer, start..start + d.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::channel_data;

    #[test]
    fn channel_data_and_indications_point_at_their_payload() {
        let mut buf = [0u8; 64];
        let n = channel_data::encode(&mut buf, 0x4001, b"abc", true).unwrap();
        assert_eq!(parse_data(&buf[..n]), Some(Received::Channel(0x4001, 4..7)));
        // A Send indication is not data from the server.
        let peer: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let n = encode_send_indication(&mut buf, TransactionId([1; 12]), peer, b"xy").unwrap();
        assert_eq!(parse_data(&buf[..n]), None);
        let mut b =
            MessageBuilder::new(&mut buf, MessageType::new(Class::Indication, Method::DATA), TransactionId([2; 12]))
                .unwrap();
        b.add(&Attribute::XorPeerAddress(peer)).unwrap();
        b.add(&Attribute::Data(b"hello")).unwrap();
        let n = b.finish();
        let Some(Received::Indication(p, r)) = parse_data(&buf[..n]) else { panic!() };
        assert_eq!((p, &buf[r]), (peer, &b"hello"[..]));
    }
}
