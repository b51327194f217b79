//! The STUN message header and a zero-copy, validated view over a whole message
//! (RFC 8489 §5 and §14).
//!
//! [`Message::parse`] checks the header and walks the attribute list once, so
//! that everything afterwards (iteration, lookup, integrity) works on offsets
//! that are known to be in bounds. Nothing here allocates.

use super::attr::{AttributeType, RawAttribute};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header: type, length, cookie, transaction id (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// Length of an attribute's type-length header (RFC 8489 §14).
pub const ATTR_HEADER_LEN: usize = 4;
/// The largest message the 16-bit, 4-aligned length field can describe.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 0xFFFC;

/// The class of a STUN message (RFC 8489 §5): two bits spread over the type field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request, answered by a success or error response.
    Request,
    /// An indication: never answered.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    /// The class as the two-bit value C1C0.
    pub const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Class {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }

    /// True for success and error responses.
    pub const fn is_response(self) -> bool {
        matches!(self, Class::Success | Class::Error)
    }
}

/// A 12-bit STUN method (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(u16);

impl Method {
    /// Binding (RFC 8489).
    pub const BINDING: Method = Method(0x001);
    /// Allocate (RFC 8656 §7).
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh (RFC 8656 §8).
    pub const REFRESH: Method = Method(0x004);
    /// Send, indication only (RFC 8656 §11.1).
    pub const SEND: Method = Method(0x006);
    /// Data, indication only (RFC 8656 §11.4).
    pub const DATA: Method = Method(0x007);
    /// CreatePermission (RFC 8656 §10).
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind (RFC 8656 §12).
    pub const CHANNEL_BIND: Method = Method(0x009);
    /// Connect (RFC 6062 §4.3).
    pub const CONNECT: Method = Method(0x00A);
    /// ConnectionBind (RFC 6062 §4.4).
    pub const CONNECTION_BIND: Method = Method(0x00B);
    /// ConnectionAttempt, indication only (RFC 6062 §4.5).
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);

    /// A method from its 12-bit number; `None` when it does not fit in 12 bits.
    pub const fn new(value: u16) -> Option<Method> {
        if value <= 0x0FFF { Some(Method(value)) } else { None }
    }

    /// The 12-bit method number.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// The method's name as the RFCs spell it, or `"Unknown"`.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x001 => "Binding",
            0x003 => "Allocate",
            0x004 => "Refresh",
            0x006 => "Send",
            0x007 => "Data",
            0x008 => "CreatePermission",
            0x009 => "ChannelBind",
            0x00A => "Connect",
            0x00B => "ConnectionBind",
            0x00C => "ConnectionAttempt",
            _ => "Unknown",
        }
    }
}

impl core::fmt::Debug for Method {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}(0x{:03x})", self.name(), self.0)
    }
}

/// The 14-bit message type: a method and a class interleaved (RFC 8489 §5, Figure 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// The message class.
    pub class: Class,
    /// The method.
    pub method: Method,
}

impl MessageType {
    /// A message type from its parts.
    pub const fn new(class: Class, method: Method) -> MessageType {
        MessageType { class, method }
    }

    /// Decodes the 16-bit type field; `None` when either of the two most
    /// significant bits is set (then it is not STUN).
    pub const fn from_u16(raw: u16) -> Option<MessageType> {
        if raw & 0xC000 != 0 {
            return None;
        }
        let method = (raw & 0x000F) | ((raw & 0x00E0) >> 1) | ((raw & 0x3E00) >> 2);
        let class = ((raw >> 4) & 0b01) | ((raw >> 7) & 0b10);
        Some(MessageType { class: Class::from_bits(class), method: Method(method) })
    }

    /// Encodes into the 16-bit type field.
    pub const fn to_u16(self) -> u16 {
        let m = self.method.0;
        let c = self.class.bits();
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
    }
}

/// The 96-bit transaction id (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl core::fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TransactionId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Why bytes are not a well-formed STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer than 20 bytes.
    #[error("{0} bytes is shorter than the 20-byte STUN header")]
    TooShort(usize),
    /// One of the two most significant bits of the first byte is set.
    #[error("the two most significant bits of the message type are not zero")]
    NotStun,
    /// Bytes 4..8 are not 0x2112A442.
    #[error("magic cookie 0x{0:08x} is not 0x2112a442")]
    BadMagicCookie(u32),
    /// The length field is not a multiple of four.
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
    /// The length field disagrees with the bytes after the header.
    #[error("message length field says {declared} but {actual} bytes follow the header")]
    LengthMismatch {
        /// The length field's value.
        declared: u16,
        /// Bytes actually present after the header.
        actual: usize,
    },
    /// An attribute's (padded) value runs past the end of the message.
    #[error("attribute 0x{ty:04x} at offset {offset} runs past the end of the message")]
    AttributeOverflow {
        /// The attribute type.
        ty: u16,
        /// Offset of the attribute header in the message.
        offset: usize,
    },
    /// MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 or FINGERPRINT has a value of the wrong size.
    #[error("attribute 0x{ty:04x} has an invalid length {len}")]
    BadIntegrityLength {
        /// The attribute type.
        ty: u16,
        /// Its value length.
        len: u16,
    },
    /// An attribute follows FINGERPRINT, which must be last (RFC 8489 §14.7).
    #[error("an attribute follows FINGERPRINT")]
    FingerprintNotLast,
}

/// A validated, borrowed view of one STUN message.
///
/// The view covers exactly the message's bytes (header plus the length the
/// header declares). Attributes that follow MESSAGE-INTEGRITY, other than
/// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and attributes that follow
/// MESSAGE-INTEGRITY-SHA256, other than FINGERPRINT, are ignored as RFC 8489
/// §14.5 and §14.6 require: [`Message::attributes`] does not yield them, so
/// it yields the same integrity attributes the verifiers check.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
    ty: MessageType,
    integrity: Option<u32>,
    integrity_sha256: Option<u32>,
    fingerprint: Option<u32>,
}

/// Reads a big-endian u16 at `at`; the caller has checked the bounds.
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Reads a big-endian u32 at `at`; the caller has checked the bounds.
#[inline]
pub(crate) fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Rounds an attribute value length up to the 4-byte boundary.
#[inline]
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<'a> Message<'a> {
    /// Parses and validates one message that fills `buf` exactly (a UDP
    /// datagram, or a frame cut by [`super::demux::next_frame`]).
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort(buf.len()));
        }
        let ty = MessageType::from_u16(be16(buf, 0)).ok_or(ParseError::NotStun)?;
        let declared = be16(buf, 2);
        let cookie = be32(buf, 4);
        if cookie != MAGIC_COOKIE {
            return Err(ParseError::BadMagicCookie(cookie));
        }
        if !declared.is_multiple_of(4) {
            return Err(ParseError::UnalignedLength(declared));
        }
        if declared as usize != buf.len() - HEADER_LEN {
            return Err(ParseError::LengthMismatch { declared, actual: buf.len() - HEADER_LEN });
        }
        let mut msg = Message { buf, ty, integrity: None, integrity_sha256: None, fingerprint: None };
        let mut off = HEADER_LEN;
        while off < buf.len() {
            if msg.fingerprint.is_some() {
                return Err(ParseError::FingerprintNotLast);
            }
            // `buf.len() - off` is a positive multiple of 4, so the header fits.
            let aty = be16(buf, off);
            let alen = be16(buf, off + 2);
            let end = off + ATTR_HEADER_LEN + padded(alen as usize);
            if end > buf.len() {
                return Err(ParseError::AttributeOverflow { ty: aty, offset: off });
            }
            let at = Some(off as u32);
            match AttributeType(aty) {
                AttributeType::MESSAGE_INTEGRITY => {
                    if alen != 20 {
                        return Err(ParseError::BadIntegrityLength { ty: aty, len: alen });
                    }
                    if msg.integrity.is_none() && msg.integrity_sha256.is_none() {
                        msg.integrity = at;
                    }
                }
                AttributeType::MESSAGE_INTEGRITY_SHA256 => {
                    if !(16..=32).contains(&alen) || !alen.is_multiple_of(4) {
                        return Err(ParseError::BadIntegrityLength { ty: aty, len: alen });
                    }
                    if msg.integrity_sha256.is_none() {
                        msg.integrity_sha256 = at;
                    }
                }
                AttributeType::FINGERPRINT => {
                    if alen != 4 {
                        return Err(ParseError::BadIntegrityLength { ty: aty, len: alen });
                    }
                    msg.fingerprint = at;
                }
                _ => {}
            }
            off = end;
        }
        Ok(msg)
    }

    /// The message type (class and method).
    pub fn message_type(&self) -> MessageType {
        self.ty
    }

    /// The message class.
    pub fn class(&self) -> Class {
        self.ty.class
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.ty.method
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.buf[8..HEADER_LEN]);
        TransactionId(id)
    }

    /// The whole message, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Total length in bytes, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when the message has no attributes.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// The attributes in order, without those RFC 8489 §14.5 and §14.6 say to ignore.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes { buf: self.buf, off: HEADER_LEN, after_integrity: false, after_integrity_sha256: false }
    }

    /// The first attribute of type `ty`, if any.
    pub fn get(&self, ty: AttributeType) -> Option<RawAttribute<'a>> {
        self.attributes().find(|a| a.ty == ty)
    }

    /// Every attribute of type `ty` (XOR-PEER-ADDRESS may repeat, RFC 8656 §10).
    pub fn get_all(&self, ty: AttributeType) -> impl Iterator<Item = RawAttribute<'a>> + 'a {
        self.attributes().filter(move |a| a.ty == ty)
    }

    /// Comprehension-required attribute types (0x0000–0x7FFF) that this crate
    /// does not know; a server answers 420 listing them (RFC 8489 §6.3.1).
    pub fn unknown_comprehension_required(&self) -> impl Iterator<Item = AttributeType> + 'a {
        self.attributes().map(|a| a.ty).filter(|t| t.is_comprehension_required() && !t.is_known())
    }

    /// Offset of the MESSAGE-INTEGRITY attribute that counts, if present.
    pub fn integrity_offset(&self) -> Option<usize> {
        self.integrity.map(|o| o as usize)
    }

    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute that counts, if present.
    pub fn integrity_sha256_offset(&self) -> Option<usize> {
        self.integrity_sha256.map(|o| o as usize)
    }

    /// Offset of the FINGERPRINT attribute, if present (it is always last).
    pub fn fingerprint_offset(&self) -> Option<usize> {
        self.fingerprint.map(|o| o as usize)
    }

    /// True when the message carries a MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }
}

/// Iterator over a message's attributes (see [`Message::attributes`]).
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    off: usize,
    after_integrity: bool,
    after_integrity_sha256: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<RawAttribute<'a>> {
        loop {
            // `Message::parse` proved every header and padded value in bounds;
            // `get` keeps this panic-free even so.
            let header = self.buf.get(self.off..self.off + ATTR_HEADER_LEN)?;
            let ty = AttributeType(be16(header, 0));
            let len = be16(header, 2) as usize;
            let start = self.off + ATTR_HEADER_LEN;
            let value = self.buf.get(start..start + len)?;
            let offset = self.off;
            self.off = start + padded(len);
            // Only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT may follow
            // MESSAGE-INTEGRITY; only FINGERPRINT may follow
            // MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5, §14.6).
            let sealed = self.after_integrity || self.after_integrity_sha256;
            let keep = match ty {
                AttributeType::FINGERPRINT => true,
                AttributeType::MESSAGE_INTEGRITY_SHA256 => !self.after_integrity_sha256,
                _ => !sealed,
            };
            match ty {
                AttributeType::MESSAGE_INTEGRITY => self.after_integrity = true,
                AttributeType::MESSAGE_INTEGRITY_SHA256 => self.after_integrity_sha256 = true,
                _ => {}
            }
            if keep {
                return Some(RawAttribute { ty, value, offset });
            }
        }
    }
}

/// Peeks at the class, method and transaction id of something that looks
/// like a STUN header, without validating the rest; used to answer a
/// malformed request with 400 when its header is intact.
pub fn peek_header(buf: &[u8]) -> Option<(MessageType, TransactionId)> {
    if buf.len() < HEADER_LEN || be32(buf, 4) != MAGIC_COOKIE {
        return None;
    }
    let ty = MessageType::from_u16(be16(buf, 0))?;
    let mut id = [0u8; 12];
    id.copy_from_slice(&buf[8..HEADER_LEN]);
    Some((ty, TransactionId(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_every_class_and_method() {
        for method in 0..=0x0FFF {
            for class in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                let t = MessageType::new(class, Method::new(method).unwrap());
                let raw = t.to_u16();
                assert_eq!(raw & 0xC000, 0);
                assert_eq!(MessageType::from_u16(raw), Some(t));
            }
        }
    }

    #[test]
    fn known_type_values() {
        // RFC 8489 §5 and RFC 8656 §17.
        let binding_req = MessageType::new(Class::Request, Method::BINDING);
        assert_eq!(binding_req.to_u16(), 0x0001);
        assert_eq!(MessageType::new(Class::Success, Method::BINDING).to_u16(), 0x0101);
        assert_eq!(MessageType::new(Class::Error, Method::BINDING).to_u16(), 0x0111);
        assert_eq!(MessageType::new(Class::Indication, Method::SEND).to_u16(), 0x0016);
        assert_eq!(MessageType::new(Class::Indication, Method::DATA).to_u16(), 0x0017);
        assert_eq!(MessageType::new(Class::Success, Method::ALLOCATE).to_u16(), 0x0103);
        assert_eq!(MessageType::new(Class::Error, Method::ALLOCATE).to_u16(), 0x0113);
        assert_eq!(MessageType::from_u16(0x4001), None);
    }

    fn header(ty: u16, len: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        v.extend_from_slice(&[7; 12]);
        v
    }

    #[test]
    fn header_checks() {
        assert_eq!(Message::parse(&[0; 19]).unwrap_err(), ParseError::TooShort(19));
        assert_eq!(Message::parse(&header(0x8001, 0)).unwrap_err(), ParseError::NotStun);
        let mut bad_cookie = header(0x0001, 0);
        bad_cookie[4] = 0;
        assert!(matches!(Message::parse(&bad_cookie), Err(ParseError::BadMagicCookie(_))));
        assert_eq!(Message::parse(&header(0x0001, 2)).unwrap_err(), ParseError::UnalignedLength(2));
        assert_eq!(
            Message::parse(&header(0x0001, 4)).unwrap_err(),
            ParseError::LengthMismatch { declared: 4, actual: 0 }
        );
        let ok = header(0x0001, 0);
        let m = Message::parse(&ok).unwrap();
        assert_eq!(m.method(), Method::BINDING);
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.transaction_id(), TransactionId([7; 12]));
        assert!(m.is_empty());
    }

    #[test]
    fn attribute_overflow_and_padding() {
        let mut v = header(0x0001, 8);
        v.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd']);
        // Value of 5 bytes pads to 8: needs 12 bytes, only 8 present.
        assert!(matches!(Message::parse(&v), Err(ParseError::AttributeOverflow { ty: 0x8022, offset: 20 })));
        let mut v = header(0x0001, 12);
        v.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0xff, 0xff, 0xff]);
        let m = Message::parse(&v).unwrap();
        let a = m.attributes().next().unwrap();
        assert_eq!(a.value, b"abcde");
    }

    #[test]
    fn attributes_after_integrity_are_ignored_and_fingerprint_is_last() {
        let mut v = header(0x0001, 0);
        v.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
        v.extend_from_slice(&[0; 20]);
        v.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]); // SOFTWARE after MI: ignored
        v.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0]);
        let n = (v.len() - HEADER_LEN) as u16;
        v[2..4].copy_from_slice(&n.to_be_bytes());
        let m = Message::parse(&v).unwrap();
        let types: Vec<_> = m.attributes().map(|a| a.ty).collect();
        assert_eq!(types, vec![AttributeType::MESSAGE_INTEGRITY, AttributeType::FINGERPRINT]);
        assert_eq!(m.integrity_offset(), Some(20));
        assert_eq!(m.fingerprint_offset(), Some(48));

        v.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let n = (v.len() - HEADER_LEN) as u16;
        v[2..4].copy_from_slice(&n.to_be_bytes());
        assert_eq!(Message::parse(&v).unwrap_err(), ParseError::FingerprintNotLast);
    }

    /// Regression: `attributes()` used to yield a MESSAGE-INTEGRITY that
    /// follows MESSAGE-INTEGRITY-SHA256 (and repeated integrity attributes),
    /// which RFC 8489 §14.5/§14.6 say to ignore and which the verifiers do
    /// ignore, so `get(MESSAGE_INTEGRITY)` found an attribute while
    /// `integrity_offset()` was `None` (found by the `stun_message` fuzz target).
    #[test]
    fn ignored_integrity_attributes_are_not_yielded() {
        fn message(types: &[u16]) -> Vec<u8> {
            let mut v = header(0x0001, 0);
            for &ty in types {
                let len: u16 = match ty {
                    0x0008 => 20,
                    0x001C => 32,
                    _ => 4,
                };
                v.extend_from_slice(&ty.to_be_bytes());
                v.extend_from_slice(&len.to_be_bytes());
                v.extend(std::iter::repeat_n(0, usize::from(len)));
            }
            let n = (v.len() - HEADER_LEN) as u16;
            v[2..4].copy_from_slice(&n.to_be_bytes());
            v
        }
        let (mi, sha, fp, lifetime) = (0x0008, 0x001C, 0x8028, 0x000D);
        let t = |ty: u16| AttributeType(ty);

        let v = message(&[lifetime, sha, mi, lifetime, sha, fp]);
        let m = Message::parse(&v).unwrap();
        let yielded: Vec<_> = m.attributes().map(|a| (a.ty, a.offset)).collect();
        assert_eq!(yielded, vec![(t(lifetime), 20), (t(sha), 28), (t(fp), 132)]);
        assert_eq!(m.get(AttributeType::MESSAGE_INTEGRITY), None);
        assert_eq!(m.integrity_offset(), None);
        assert_eq!(m.integrity_sha256_offset(), Some(28));

        let v = message(&[mi, lifetime, mi, sha, sha, fp]);
        let m = Message::parse(&v).unwrap();
        let yielded: Vec<_> = m.attributes().map(|a| (a.ty, a.offset)).collect();
        assert_eq!(yielded, vec![(t(mi), 20), (t(sha), 76), (t(fp), 148)]);
        assert_eq!(m.integrity_offset(), Some(20));
        assert_eq!(m.integrity_sha256_offset(), Some(76));
        assert_eq!(m.fingerprint_offset(), Some(148));
    }

    #[test]
    fn bad_integrity_lengths_are_rejected() {
        let mut v = header(0x0001, 8);
        v.extend_from_slice(&[0x80, 0x28, 0x00, 0x02, 0, 0, 0, 0]);
        assert!(matches!(Message::parse(&v), Err(ParseError::BadIntegrityLength { ty: 0x8028, len: 2 })));
    }

    #[test]
    fn peek_header_reads_type_and_id_of_a_broken_message() {
        let mut v = header(0x0003, 40); // length lies
        v.push(0);
        let (t, id) = peek_header(&v).unwrap();
        assert_eq!(t.method, Method::ALLOCATE);
        assert_eq!(id, TransactionId([7; 12]));
        assert!(peek_header(&v[..10]).is_none());
    }
}
