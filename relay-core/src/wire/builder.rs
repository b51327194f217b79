//! Writing STUN messages into a caller's buffer, with no heap allocation.
//!
//! The header's length field is kept current after every attribute, so
//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are computed
//! over exactly the prefix RFC 8489 §14.5–§14.7 specify.

use super::attr::{Attribute, AttributeType};
use super::integrity::{fingerprint_of, hmac_sha1_parts, hmac_sha256_parts};
use super::message::{ATTR_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN, MessageType, TransactionId, padded};

/// Why a message could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The buffer cannot hold the message.
    #[error("buffer of {available} bytes cannot hold {needed}")]
    BufferTooSmall {
        /// Bytes the message would need.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The message would exceed the 16-bit length field.
    #[error("message would exceed the maximum STUN length")]
    MessageTooLong,
    /// An attribute was added after FINGERPRINT or after an integrity
    /// attribute (only integrity attributes and FINGERPRINT may follow).
    #[error("{0:?} cannot follow MESSAGE-INTEGRITY or FINGERPRINT")]
    Sealed(AttributeType),
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Seal {
    Open,
    Integrity,
    IntegritySha256,
    Fingerprint,
}

/// Builds one message in `buf`. Call [`MessageBuilder::finish`] for its length.
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
    padding: u8,
    seal: Seal,
}

impl<'b> MessageBuilder<'b> {
    /// Starts a message of type `ty` with transaction id `tid`.
    pub fn new(buf: &'b mut [u8], ty: MessageType, tid: TransactionId) -> Result<Self, EncodeError> {
        if buf.len() < HEADER_LEN {
            return Err(EncodeError::BufferTooSmall { needed: HEADER_LEN, available: buf.len() });
        }
        buf[0..2].copy_from_slice(&ty.to_u16().to_be_bytes());
        buf[2..4].fill(0);
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(&tid.0);
        Ok(MessageBuilder { buf, len: HEADER_LEN, tid, padding: 0, seal: Seal::Open })
    }

    /// Sets the byte used to pad values to 4 bytes (zero by default; RFC 8489
    /// lets senders choose, RFC 5769's vectors use 0x20).
    pub fn padding_byte(&mut self, byte: u8) -> &mut Self {
        self.padding = byte;
        self
    }

    /// The transaction id being written.
    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when only the header has been written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Reserves an attribute of `value_len` bytes, writes its header and
    /// padding, updates the length field, and returns the value's slice.
    fn reserve(&mut self, ty: AttributeType, value_len: usize) -> Result<&mut [u8], EncodeError> {
        let seal = match ty {
            AttributeType::MESSAGE_INTEGRITY => Seal::Integrity,
            AttributeType::MESSAGE_INTEGRITY_SHA256 => Seal::IntegritySha256,
            AttributeType::FINGERPRINT => Seal::Fingerprint,
            _ => Seal::Open,
        };
        if self.seal == Seal::Fingerprint || (self.seal > Seal::Open && seal <= self.seal) {
            return Err(EncodeError::Sealed(ty));
        }
        if value_len > 0xFFFF {
            return Err(EncodeError::MessageTooLong);
        }
        let start = self.len;
        let end = start + ATTR_HEADER_LEN + padded(value_len);
        if end > MAX_MESSAGE_LEN {
            return Err(EncodeError::MessageTooLong);
        }
        if end > self.buf.len() {
            return Err(EncodeError::BufferTooSmall { needed: end, available: self.buf.len() });
        }
        self.seal = self.seal.max(seal);
        self.buf[start..start + 2].copy_from_slice(&ty.0.to_be_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(value_len as u16).to_be_bytes());
        let value_start = start + ATTR_HEADER_LEN;
        self.buf[value_start + value_len..end].fill(self.padding);
        self.len = end;
        let body = (end - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
        Ok(&mut self.buf[value_start..value_start + value_len])
    }

    /// Appends a typed attribute.
    pub fn add(&mut self, attr: &Attribute<'_>) -> Result<&mut Self, EncodeError> {
        let tid = self.tid;
        let out = self.reserve(attr.attribute_type(), attr.value_len())?;
        attr.write_value(out, &tid);
        Ok(self)
    }

    /// Appends an attribute from its raw value bytes.
    pub fn add_raw(&mut self, ty: AttributeType, value: &[u8]) -> Result<&mut Self, EncodeError> {
        self.reserve(ty, value.len())?.copy_from_slice(value);
        Ok(self)
    }

    /// Appends MESSAGE-INTEGRITY: HMAC-SHA1 with `key` over the message so far,
    /// its length field covering this attribute (RFC 8489 §14.5).
    pub fn add_message_integrity(&mut self, key: &[u8]) -> Result<&mut Self, EncodeError> {
        let start = self.len;
        self.reserve(AttributeType::MESSAGE_INTEGRITY, 20)?;
        let mac = hmac_sha1_parts(key, &self.buf[..start], (self.len - HEADER_LEN) as u16);
        self.buf[start + ATTR_HEADER_LEN..self.len].copy_from_slice(&mac);
        Ok(self)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes), RFC 8489 §14.6.
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> Result<&mut Self, EncodeError> {
        let start = self.len;
        self.reserve(AttributeType::MESSAGE_INTEGRITY_SHA256, 32)?;
        let mac = hmac_sha256_parts(key, &self.buf[..start], (self.len - HEADER_LEN) as u16);
        self.buf[start + ATTR_HEADER_LEN..self.len].copy_from_slice(&mac);
        Ok(self)
    }

    /// Appends FINGERPRINT (RFC 8489 §14.7); nothing may follow it.
    pub fn add_fingerprint(&mut self) -> Result<&mut Self, EncodeError> {
        let start = self.len;
        self.reserve(AttributeType::FINGERPRINT, 4)?;
        let crc = fingerprint_of(&self.buf[..start], (self.len - HEADER_LEN) as u16);
        self.buf[start + ATTR_HEADER_LEN..self.len].copy_from_slice(&crc.to_be_bytes());
        Ok(self)
    }

    /// The message written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the message and returns its total length in bytes.
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{Class, Message, Method};

    const TID: TransactionId = TransactionId([9; 12]);

    #[test]
    fn builds_and_parses_back() {
        let mut buf = [0u8; 256];
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Success, Method::ALLOCATE), TID).unwrap();
        b.add(&Attribute::XorRelayedAddress("203.0.113.4:49152".parse().unwrap()))
            .unwrap()
            .add(&Attribute::Lifetime(600))
            .unwrap()
            .add(&Attribute::Software("turn-relay"))
            .unwrap();
        let n = b.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.method(), Method::ALLOCATE);
        assert_eq!(m.class(), Class::Success);
        let attrs: Vec<_> = m.attributes().map(|a| a.decode(&TID).unwrap()).collect();
        assert_eq!(
            attrs,
            vec![
                Attribute::XorRelayedAddress("203.0.113.4:49152".parse().unwrap()),
                Attribute::Lifetime(600),
                Attribute::Software("turn-relay"),
            ]
        );
    }

    #[test]
    fn buffer_too_small_is_an_error_not_a_panic() {
        let mut tiny = [0u8; 10];
        assert!(matches!(
            MessageBuilder::new(&mut tiny, MessageType::new(Class::Request, Method::BINDING), TID),
            Err(EncodeError::BufferTooSmall { needed: 20, available: 10 })
        ));
        let mut buf = [0u8; 24];
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::BINDING), TID).unwrap();
        assert!(matches!(b.add(&Attribute::Lifetime(1)), Err(EncodeError::BufferTooSmall { needed: 28, .. })));
        assert_eq!(b.len(), HEADER_LEN, "a failed add leaves the message unchanged");
    }

    #[test]
    fn nothing_but_integrity_and_fingerprint_after_integrity() {
        let mut buf = [0u8; 256];
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::BINDING), TID).unwrap();
        b.add_message_integrity(b"key").unwrap();
        assert_eq!(b.add(&Attribute::Lifetime(1)).unwrap_err(), EncodeError::Sealed(AttributeType::LIFETIME));
        assert!(b.add_message_integrity(b"key").is_err());
        b.add_message_integrity_sha256(b"key").unwrap();
        b.add_fingerprint().unwrap();
        assert!(b.add_fingerprint().is_err());
        let n = b.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        m.verify_fingerprint().unwrap();
        m.verify_message_integrity(b"key").unwrap();
        m.verify_message_integrity_sha256(b"key").unwrap();
    }

    #[test]
    fn oversized_values_are_refused() {
        let mut buf = vec![0u8; 70_000];
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Indication, Method::SEND), TID).unwrap();
        let big = vec![0u8; 0x10000];
        assert_eq!(b.add(&Attribute::Data(&big)).unwrap_err(), EncodeError::MessageTooLong);
        let almost = vec![0u8; 0xFFF8];
        b.add(&Attribute::Data(&almost)).unwrap();
        assert_eq!(b.add(&Attribute::Lifetime(1)).unwrap_err(), EncodeError::MessageTooLong);
    }
}
