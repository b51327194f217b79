//! STUN/TURN attributes: type numbers, the raw type-length-value view, and
//! typed decoding and encoding of every attribute the server and client use.
//!
//! Sources: RFC 8489 §14 and §18.3 (STUN), RFC 8656 §18 (TURN), RFC 5780 §7
//! (NAT behaviour discovery), RFC 6062 §6.2 (TCP allocations), RFC 8445 §16
//! (ICE, known so that a Binding carrying them is not refused).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::message::{MAGIC_COOKIE, TransactionId, be16, be32};

/// A 16-bit attribute type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttributeType(pub u16);

macro_rules! attribute_types {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $text:expr;)*) => {
        impl AttributeType {
            $($(#[$doc])* pub const $name: AttributeType = AttributeType($value);)*

            /// The attribute's name as the RFCs spell it, or `None` when unknown.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

attribute_types! {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    MAPPED_ADDRESS = 0x0001, "MAPPED-ADDRESS";
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    CHANGE_REQUEST = 0x0003, "CHANGE-REQUEST";
    /// USERNAME (RFC 8489 §14.3).
    USERNAME = 0x0006, "USERNAME";
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    MESSAGE_INTEGRITY = 0x0008, "MESSAGE-INTEGRITY";
    /// ERROR-CODE (RFC 8489 §14.8).
    ERROR_CODE = 0x0009, "ERROR-CODE";
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    UNKNOWN_ATTRIBUTES = 0x000A, "UNKNOWN-ATTRIBUTES";
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    CHANNEL_NUMBER = 0x000C, "CHANNEL-NUMBER";
    /// LIFETIME (RFC 8656 §18.2).
    LIFETIME = 0x000D, "LIFETIME";
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    XOR_PEER_ADDRESS = 0x0012, "XOR-PEER-ADDRESS";
    /// DATA (RFC 8656 §18.4).
    DATA = 0x0013, "DATA";
    /// REALM (RFC 8489 §14.9).
    REALM = 0x0014, "REALM";
    /// NONCE (RFC 8489 §14.10).
    NONCE = 0x0015, "NONCE";
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    XOR_RELAYED_ADDRESS = 0x0016, "XOR-RELAYED-ADDRESS";
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    REQUESTED_ADDRESS_FAMILY = 0x0017, "REQUESTED-ADDRESS-FAMILY";
    /// EVEN-PORT (RFC 8656 §18.7).
    EVEN_PORT = 0x0018, "EVEN-PORT";
    /// REQUESTED-TRANSPORT (RFC 8656 §18.8).
    REQUESTED_TRANSPORT = 0x0019, "REQUESTED-TRANSPORT";
    /// DONT-FRAGMENT (RFC 8656 §18.9).
    DONT_FRAGMENT = 0x001A, "DONT-FRAGMENT";
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
    MESSAGE_INTEGRITY_SHA256 = 0x001C, "MESSAGE-INTEGRITY-SHA256";
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    PASSWORD_ALGORITHM = 0x001D, "PASSWORD-ALGORITHM";
    /// USERHASH (RFC 8489 §14.4).
    USERHASH = 0x001E, "USERHASH";
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    XOR_MAPPED_ADDRESS = 0x0020, "XOR-MAPPED-ADDRESS";
    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    RESERVATION_TOKEN = 0x0022, "RESERVATION-TOKEN";
    /// PRIORITY (RFC 8445 §16.1).
    PRIORITY = 0x0024, "PRIORITY";
    /// USE-CANDIDATE (RFC 8445 §16.1).
    USE_CANDIDATE = 0x0025, "USE-CANDIDATE";
    /// PADDING (RFC 5780 §7.6).
    PADDING = 0x0026, "PADDING";
    /// RESPONSE-PORT (RFC 5780 §7.5).
    RESPONSE_PORT = 0x0027, "RESPONSE-PORT";
    /// CONNECTION-ID (RFC 6062 §6.2.1).
    CONNECTION_ID = 0x002A, "CONNECTION-ID";
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
    ADDITIONAL_ADDRESS_FAMILY = 0x8000, "ADDITIONAL-ADDRESS-FAMILY";
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    ADDRESS_ERROR_CODE = 0x8001, "ADDRESS-ERROR-CODE";
    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    PASSWORD_ALGORITHMS = 0x8002, "PASSWORD-ALGORITHMS";
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    ALTERNATE_DOMAIN = 0x8003, "ALTERNATE-DOMAIN";
    /// ICMP (RFC 8656 §18.13).
    ICMP = 0x8004, "ICMP";
    /// SOFTWARE (RFC 8489 §14.14).
    SOFTWARE = 0x8022, "SOFTWARE";
    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    ALTERNATE_SERVER = 0x8023, "ALTERNATE-SERVER";
    /// FINGERPRINT (RFC 8489 §14.7).
    FINGERPRINT = 0x8028, "FINGERPRINT";
    /// ICE-CONTROLLED (RFC 8445 §16.1).
    ICE_CONTROLLED = 0x8029, "ICE-CONTROLLED";
    /// ICE-CONTROLLING (RFC 8445 §16.1).
    ICE_CONTROLLING = 0x802A, "ICE-CONTROLLING";
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    RESPONSE_ORIGIN = 0x802B, "RESPONSE-ORIGIN";
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    OTHER_ADDRESS = 0x802C, "OTHER-ADDRESS";
}

impl AttributeType {
    /// Types 0x0000–0x7FFF must be understood by the receiver (RFC 8489 §14).
    pub const fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// True when this crate decodes the type.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }
}

impl core::fmt::Debug for AttributeType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "AttributeType(0x{:04x})", self.0),
        }
    }
}

/// One attribute as it stands in the message: type and unpadded value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// The attribute type.
    pub ty: AttributeType,
    /// The value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute's header within the message.
    pub offset: usize,
}

impl<'a> RawAttribute<'a> {
    /// Decodes the value by its type; `tid` unmasks the XOR address forms.
    pub fn decode(&self, tid: &TransactionId) -> Result<Attribute<'a>, AttrError> {
        Attribute::decode(self.ty, self.value, tid)
    }
}

/// Why an attribute's value does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    /// The value's length is wrong for the type.
    #[error("{ty:?}: invalid value length {len}")]
    BadLength {
        /// The attribute type.
        ty: AttributeType,
        /// The value length found.
        len: usize,
    },
    /// An address attribute names a family other than IPv4 (1) or IPv6 (2).
    #[error("{ty:?}: unknown address family 0x{family:02x}")]
    BadFamily {
        /// The attribute type.
        ty: AttributeType,
        /// The family byte found.
        family: u8,
    },
    /// A text attribute is not valid UTF-8.
    #[error("{0:?}: value is not UTF-8")]
    NotUtf8(AttributeType),
    /// A text attribute exceeds its RFC size limit.
    #[error("{ty:?}: {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The attribute type.
        ty: AttributeType,
        /// The value length found.
        len: usize,
        /// The RFC's limit in bytes.
        max: usize,
    },
    /// An ERROR-CODE class outside 3–6 or number above 99.
    #[error("{ty:?}: invalid error code class {class} number {number}")]
    BadErrorCode {
        /// The attribute type.
        ty: AttributeType,
        /// The class digit.
        class: u8,
        /// The number within the class.
        number: u8,
    },
}

/// An IP address family as STUN numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4, 0x01.
    V4,
    /// IPv6, 0x02.
    V6,
}

impl AddressFamily {
    /// The wire value.
    pub const fn code(self) -> u8 {
        match self {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        }
    }

    /// From the wire value.
    pub const fn from_code(code: u8) -> Option<AddressFamily> {
        match code {
            0x01 => Some(AddressFamily::V4),
            0x02 => Some(AddressFamily::V6),
            _ => None,
        }
    }

    /// The family of an address.
    pub const fn of(addr: &SocketAddr) -> AddressFamily {
        match addr {
            SocketAddr::V4(_) => AddressFamily::V4,
            SocketAddr::V6(_) => AddressFamily::V6,
        }
    }
}

/// Protocol numbers for REQUESTED-TRANSPORT (RFC 8656 §18.8, RFC 6062).
pub mod transport {
    /// UDP.
    pub const UDP: u8 = 17;
    /// TCP (RFC 6062).
    pub const TCP: u8 = 6;
}

/// Password algorithm numbers (RFC 8489 §18.5).
pub mod password_algorithm {
    /// MD5, the RFC 5389 long-term key.
    pub const MD5: u16 = 0x0001;
    /// SHA-256 (RFC 8489 §18.5.1.2).
    pub const SHA256: u16 = 0x0002;
}

/// An ERROR-CODE (RFC 8489 §14.8) or ADDRESS-ERROR-CODE reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// The code, 300–699.
    pub code: u16,
    /// The reason phrase.
    pub reason: &'a str,
}

/// A CHANGE-REQUEST (RFC 5780 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ChangeRequest {
    /// The "A" flag: answer from the other IP address.
    pub change_ip: bool,
    /// The "B" flag: answer from the other port.
    pub change_port: bool,
}

/// An ICMP attribute (RFC 8656 §18.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// Error data (e.g. the MTU for "fragmentation needed").
    pub error_data: u32,
}

/// A list of 16-bit values (UNKNOWN-ATTRIBUTES), read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct U16List<'a>(&'a [u8]);

impl<'a> U16List<'a> {
    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.0.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    /// The raw bytes (an even number).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// One entry of PASSWORD-ALGORITHMS, or the PASSWORD-ALGORITHM attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordAlgorithmEntry<'a> {
    /// Algorithm number (see [`password_algorithm`]).
    pub algorithm: u16,
    /// Its parameters (none are defined for MD5 and SHA-256).
    pub params: &'a [u8],
}

/// PASSWORD-ALGORITHMS (RFC 8489 §14.11): entries read in place; the list
/// was validated when decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordAlgorithms<'a>(&'a [u8]);

impl<'a> PasswordAlgorithms<'a> {
    /// The entries in order of preference.
    pub fn iter(&self) -> PasswordAlgorithmsIter<'a> {
        PasswordAlgorithmsIter(self.0)
    }

    /// The encoded list.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    fn validate(value: &'a [u8]) -> Result<Self, AttrError> {
        let mut it = PasswordAlgorithmsIter(value);
        while it.next().is_some() {}
        if it.0.is_empty() {
            Ok(PasswordAlgorithms(value))
        } else {
            Err(AttrError::BadLength { ty: AttributeType::PASSWORD_ALGORITHMS, len: value.len() })
        }
    }
}

/// Iterator over [`PasswordAlgorithms`]; stops at the first malformed entry.
#[derive(Clone, Debug)]
pub struct PasswordAlgorithmsIter<'a>(&'a [u8]);

impl<'a> Iterator for PasswordAlgorithmsIter<'a> {
    type Item = PasswordAlgorithmEntry<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < 4 {
            return None;
        }
        let algorithm = be16(self.0, 0);
        let plen = be16(self.0, 2) as usize;
        let end = 4 + plen;
        let params = self.0.get(4..end)?;
        let next = (4 + super::message::padded(plen)).min(self.0.len());
        self.0 = &self.0[next..];
        Some(PasswordAlgorithmEntry { algorithm, params })
    }
}

/// Size limits in bytes for text attributes (RFC 8489 §14).
pub mod limits {
    /// USERNAME: "less than 509 bytes" (RFC 8489 §14.3; 513 in RFC 5389).
    pub const USERNAME: usize = 513;
    /// REALM, NONCE, SOFTWARE, reason phrases: "less than 128 characters", at most 763 bytes.
    pub const TEXT: usize = 763;
    /// ALTERNATE-DOMAIN: at most 255 bytes (RFC 8489 §14.16).
    pub const DOMAIN: usize = 255;
}

/// A decoded attribute. Borrowed values point into the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is named after its attribute; see AttributeType
pub enum Attribute<'a> {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    Username(&'a str),
    Userhash(&'a [u8; 32]),
    MessageIntegrity(&'a [u8; 20]),
    MessageIntegritySha256(&'a [u8]),
    Fingerprint(u32),
    ErrorCode(ErrorCode<'a>),
    Realm(&'a str),
    Nonce(&'a str),
    PasswordAlgorithms(PasswordAlgorithms<'a>),
    PasswordAlgorithm(PasswordAlgorithmEntry<'a>),
    UnknownAttributes(U16List<'a>),
    Software(&'a str),
    AlternateServer(SocketAddr),
    AlternateDomain(&'a str),
    ChannelNumber(u16),
    Lifetime(u32),
    XorPeerAddress(SocketAddr),
    Data(&'a [u8]),
    XorRelayedAddress(SocketAddr),
    /// The raw family code; see [`AddressFamily::from_code`] (unsupported → 440).
    RequestedAddressFamily(u8),
    /// The R bit: reserve the next higher port too.
    EvenPort(bool),
    /// The protocol number; see [`transport`].
    RequestedTransport(u8),
    DontFragment,
    ReservationToken(&'a [u8; 8]),
    /// The raw family code; see [`AddressFamily::from_code`].
    AdditionalAddressFamily(u8),
    /// The family code and the error for that family.
    AddressErrorCode(u8, ErrorCode<'a>),
    Icmp(Icmp),
    ChangeRequest(ChangeRequest),
    ResponseOrigin(SocketAddr),
    OtherAddress(SocketAddr),
    ResponsePort(u16),
    Padding(&'a [u8]),
    ConnectionId(u32),
    Priority(u32),
    UseCandidate,
    IceControlled(u64),
    IceControlling(u64),
    /// Any attribute this crate has no type for.
    Other(AttributeType, &'a [u8]),
}

fn fixed<const N: usize>(ty: AttributeType, v: &[u8]) -> Result<&[u8; N], AttrError> {
    v.try_into().map_err(|_| AttrError::BadLength { ty, len: v.len() })
}

fn text(ty: AttributeType, v: &[u8], max: usize) -> Result<&str, AttrError> {
    if v.len() > max {
        return Err(AttrError::TooLong { ty, len: v.len(), max });
    }
    core::str::from_utf8(v).map_err(|_| AttrError::NotUtf8(ty))
}

fn error_code(ty: AttributeType, v: &[u8]) -> Result<ErrorCode<'_>, AttrError> {
    if v.len() < 4 {
        return Err(AttrError::BadLength { ty, len: v.len() });
    }
    let class = v[2] & 0x07;
    let number = v[3];
    if !(3..=6).contains(&class) || number > 99 {
        return Err(AttrError::BadErrorCode { ty, class, number });
    }
    let reason = text(ty, &v[4..], limits::TEXT)?;
    Ok(ErrorCode { code: u16::from(class) * 100 + u16::from(number), reason })
}

/// Decodes MAPPED-ADDRESS-style values; with `xor`, unmasks per RFC 8489 §14.2.
fn address(ty: AttributeType, v: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr, AttrError> {
    if v.len() < 4 {
        return Err(AttrError::BadLength { ty, len: v.len() });
    }
    let family = v[1];
    let mut port = be16(v, 2);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match (family, v.len()) {
        (0x01, 8) => {
            let mut ip = be32(v, 4);
            if xor.is_some() {
                ip ^= MAGIC_COOKIE;
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&v[4..20]);
            if let Some(tid) = xor {
                let mask = xor_mask(tid);
                for (b, m) in ip.iter_mut().zip(mask) {
                    *b ^= m;
                }
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        (0x01 | 0x02, len) => Err(AttrError::BadLength { ty, len }),
        (family, _) => Err(AttrError::BadFamily { ty, family }),
    }
}

/// The 16-byte XOR mask for IPv6 addresses: the cookie then the transaction id.
fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&tid.0);
    mask
}

fn u32_value(ty: AttributeType, v: &[u8]) -> Result<u32, AttrError> {
    Ok(u32::from_be_bytes(*fixed::<4>(ty, v)?))
}

fn u64_value(ty: AttributeType, v: &[u8]) -> Result<u64, AttrError> {
    Ok(u64::from_be_bytes(*fixed::<8>(ty, v)?))
}

/// The first byte of a 4-byte value (family / protocol fields), RFFU ignored.
fn first_of_four(ty: AttributeType, v: &[u8]) -> Result<u8, AttrError> {
    Ok(fixed::<4>(ty, v)?[0])
}

impl<'a> Attribute<'a> {
    /// Decodes a value of type `ty`.
    pub fn decode(ty: AttributeType, v: &'a [u8], tid: &TransactionId) -> Result<Attribute<'a>, AttrError> {
        use AttributeType as T;
        Ok(match ty {
            T::MAPPED_ADDRESS => Attribute::MappedAddress(address(ty, v, None)?),
            T::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(address(ty, v, Some(tid))?),
            T::USERNAME => Attribute::Username(text(ty, v, limits::USERNAME)?),
            T::USERHASH => Attribute::Userhash(fixed(ty, v)?),
            T::MESSAGE_INTEGRITY => Attribute::MessageIntegrity(fixed(ty, v)?),
            T::MESSAGE_INTEGRITY_SHA256 => {
                if !(16..=32).contains(&v.len()) || !v.len().is_multiple_of(4) {
                    return Err(AttrError::BadLength { ty, len: v.len() });
                }
                Attribute::MessageIntegritySha256(v)
            }
            T::FINGERPRINT => Attribute::Fingerprint(u32_value(ty, v)?),
            T::ERROR_CODE => Attribute::ErrorCode(error_code(ty, v)?),
            T::REALM => Attribute::Realm(text(ty, v, limits::TEXT)?),
            T::NONCE => Attribute::Nonce(text(ty, v, limits::TEXT)?),
            T::PASSWORD_ALGORITHMS => Attribute::PasswordAlgorithms(PasswordAlgorithms::validate(v)?),
            T::PASSWORD_ALGORITHM => {
                let mut it = PasswordAlgorithmsIter(v);
                match (it.next(), it.0.is_empty()) {
                    (Some(e), true) => Attribute::PasswordAlgorithm(e),
                    _ => return Err(AttrError::BadLength { ty, len: v.len() }),
                }
            }
            T::UNKNOWN_ATTRIBUTES => {
                if !v.len().is_multiple_of(2) {
                    return Err(AttrError::BadLength { ty, len: v.len() });
                }
                Attribute::UnknownAttributes(U16List(v))
            }
            T::SOFTWARE => Attribute::Software(text(ty, v, limits::TEXT)?),
            T::ALTERNATE_SERVER => Attribute::AlternateServer(address(ty, v, None)?),
            T::ALTERNATE_DOMAIN => Attribute::AlternateDomain(text(ty, v, limits::DOMAIN)?),
            T::CHANNEL_NUMBER => Attribute::ChannelNumber(be16(fixed::<4>(ty, v)?, 0)),
            T::LIFETIME => Attribute::Lifetime(u32_value(ty, v)?),
            T::XOR_PEER_ADDRESS => Attribute::XorPeerAddress(address(ty, v, Some(tid))?),
            T::DATA => Attribute::Data(v),
            T::XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(address(ty, v, Some(tid))?),
            T::REQUESTED_ADDRESS_FAMILY => Attribute::RequestedAddressFamily(first_of_four(ty, v)?),
            T::EVEN_PORT => match v {
                [b] => Attribute::EvenPort(b & 0x80 != 0),
                _ => return Err(AttrError::BadLength { ty, len: v.len() }),
            },
            T::REQUESTED_TRANSPORT => Attribute::RequestedTransport(first_of_four(ty, v)?),
            T::DONT_FRAGMENT | T::USE_CANDIDATE => {
                if !v.is_empty() {
                    return Err(AttrError::BadLength { ty, len: v.len() });
                }
                if ty == T::DONT_FRAGMENT { Attribute::DontFragment } else { Attribute::UseCandidate }
            }
            T::RESERVATION_TOKEN => Attribute::ReservationToken(fixed(ty, v)?),
            T::ADDITIONAL_ADDRESS_FAMILY => Attribute::AdditionalAddressFamily(first_of_four(ty, v)?),
            T::ADDRESS_ERROR_CODE => {
                let code = error_code(ty, v)?;
                Attribute::AddressErrorCode(v[0], code)
            }
            T::ICMP => {
                let b = fixed::<8>(ty, v)?;
                Attribute::Icmp(Icmp { icmp_type: b[2], icmp_code: b[3], error_data: be32(b, 4) })
            }
            T::CHANGE_REQUEST => {
                let flags = u32_value(ty, v)?;
                Attribute::ChangeRequest(ChangeRequest { change_ip: flags & 0x4 != 0, change_port: flags & 0x2 != 0 })
            }
            T::RESPONSE_ORIGIN => Attribute::ResponseOrigin(address(ty, v, None)?),
            T::OTHER_ADDRESS => Attribute::OtherAddress(address(ty, v, None)?),
            T::RESPONSE_PORT => Attribute::ResponsePort(be16(fixed::<4>(ty, v)?, 0)),
            T::PADDING => Attribute::Padding(v),
            T::CONNECTION_ID => Attribute::ConnectionId(u32_value(ty, v)?),
            T::PRIORITY => Attribute::Priority(u32_value(ty, v)?),
            T::ICE_CONTROLLED => Attribute::IceControlled(u64_value(ty, v)?),
            T::ICE_CONTROLLING => Attribute::IceControlling(u64_value(ty, v)?),
            other => Attribute::Other(other, v),
        })
    }

    /// The attribute's type.
    pub fn attribute_type(&self) -> AttributeType {
        use AttributeType as T;
        match self {
            Attribute::MappedAddress(_) => T::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => T::XOR_MAPPED_ADDRESS,
            Attribute::Username(_) => T::USERNAME,
            Attribute::Userhash(_) => T::USERHASH,
            Attribute::MessageIntegrity(_) => T::MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => T::MESSAGE_INTEGRITY_SHA256,
            Attribute::Fingerprint(_) => T::FINGERPRINT,
            Attribute::ErrorCode(_) => T::ERROR_CODE,
            Attribute::Realm(_) => T::REALM,
            Attribute::Nonce(_) => T::NONCE,
            Attribute::PasswordAlgorithms(_) => T::PASSWORD_ALGORITHMS,
            Attribute::PasswordAlgorithm(_) => T::PASSWORD_ALGORITHM,
            Attribute::UnknownAttributes(_) => T::UNKNOWN_ATTRIBUTES,
            Attribute::Software(_) => T::SOFTWARE,
            Attribute::AlternateServer(_) => T::ALTERNATE_SERVER,
            Attribute::AlternateDomain(_) => T::ALTERNATE_DOMAIN,
            Attribute::ChannelNumber(_) => T::CHANNEL_NUMBER,
            Attribute::Lifetime(_) => T::LIFETIME,
            Attribute::XorPeerAddress(_) => T::XOR_PEER_ADDRESS,
            Attribute::Data(_) => T::DATA,
            Attribute::XorRelayedAddress(_) => T::XOR_RELAYED_ADDRESS,
            Attribute::RequestedAddressFamily(_) => T::REQUESTED_ADDRESS_FAMILY,
            Attribute::EvenPort(_) => T::EVEN_PORT,
            Attribute::RequestedTransport(_) => T::REQUESTED_TRANSPORT,
            Attribute::DontFragment => T::DONT_FRAGMENT,
            Attribute::ReservationToken(_) => T::RESERVATION_TOKEN,
            Attribute::AdditionalAddressFamily(_) => T::ADDITIONAL_ADDRESS_FAMILY,
            Attribute::AddressErrorCode(..) => T::ADDRESS_ERROR_CODE,
            Attribute::Icmp(_) => T::ICMP,
            Attribute::ChangeRequest(_) => T::CHANGE_REQUEST,
            Attribute::ResponseOrigin(_) => T::RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => T::OTHER_ADDRESS,
            Attribute::ResponsePort(_) => T::RESPONSE_PORT,
            Attribute::Padding(_) => T::PADDING,
            Attribute::ConnectionId(_) => T::CONNECTION_ID,
            Attribute::Priority(_) => T::PRIORITY,
            Attribute::UseCandidate => T::USE_CANDIDATE,
            Attribute::IceControlled(_) => T::ICE_CONTROLLED,
            Attribute::IceControlling(_) => T::ICE_CONTROLLING,
            Attribute::Other(t, _) => *t,
        }
    }

    /// Length of the encoded value, without padding.
    pub fn value_len(&self) -> usize {
        let addr_len = |a: &SocketAddr| if a.is_ipv4() { 8 } else { 20 };
        match self {
            Attribute::MappedAddress(a)
            | Attribute::XorMappedAddress(a)
            | Attribute::AlternateServer(a)
            | Attribute::XorPeerAddress(a)
            | Attribute::XorRelayedAddress(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a) => addr_len(a),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s)
            | Attribute::AlternateDomain(s) => s.len(),
            Attribute::Userhash(_) => 32,
            Attribute::MessageIntegrity(_) => 20,
            Attribute::MessageIntegritySha256(v) | Attribute::Data(v) | Attribute::Padding(v) => v.len(),
            Attribute::Other(_, v) => v.len(),
            Attribute::ErrorCode(e) | Attribute::AddressErrorCode(_, e) => 4 + e.reason.len(),
            Attribute::PasswordAlgorithms(p) => p.as_bytes().len(),
            Attribute::PasswordAlgorithm(e) => 4 + super::message::padded(e.params.len()),
            Attribute::UnknownAttributes(l) => l.as_bytes().len(),
            Attribute::EvenPort(_) => 1,
            Attribute::DontFragment | Attribute::UseCandidate => 0,
            Attribute::ReservationToken(_) | Attribute::Icmp(_) => 8,
            Attribute::IceControlled(_) | Attribute::IceControlling(_) => 8,
            Attribute::Fingerprint(_)
            | Attribute::ChannelNumber(_)
            | Attribute::Lifetime(_)
            | Attribute::RequestedAddressFamily(_)
            | Attribute::RequestedTransport(_)
            | Attribute::AdditionalAddressFamily(_)
            | Attribute::ChangeRequest(_)
            | Attribute::ResponsePort(_)
            | Attribute::ConnectionId(_)
            | Attribute::Priority(_) => 4,
        }
    }

    /// Writes the value into `out`, which is exactly [`Self::value_len`] bytes.
    pub(crate) fn write_value(&self, out: &mut [u8], tid: &TransactionId) {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::AlternateServer(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a) => write_address(out, a, None),
            Attribute::XorMappedAddress(a) | Attribute::XorPeerAddress(a) | Attribute::XorRelayedAddress(a) => {
                write_address(out, a, Some(tid))
            }
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s)
            | Attribute::AlternateDomain(s) => out.copy_from_slice(s.as_bytes()),
            Attribute::Userhash(v) => out.copy_from_slice(&v[..]),
            Attribute::MessageIntegrity(v) => out.copy_from_slice(&v[..]),
            Attribute::ReservationToken(v) => out.copy_from_slice(&v[..]),
            Attribute::MessageIntegritySha256(v) | Attribute::Data(v) | Attribute::Padding(v) => out.copy_from_slice(v),
            Attribute::Other(_, v) => out.copy_from_slice(v),
            Attribute::ErrorCode(e) => write_error_code(out, 0, e),
            Attribute::AddressErrorCode(family, e) => write_error_code(out, *family, e),
            Attribute::PasswordAlgorithms(p) => out.copy_from_slice(p.as_bytes()),
            Attribute::PasswordAlgorithm(e) => {
                out[..2].copy_from_slice(&e.algorithm.to_be_bytes());
                out[2..4].copy_from_slice(&(e.params.len() as u16).to_be_bytes());
                out[4..4 + e.params.len()].copy_from_slice(e.params);
                out[4 + e.params.len()..].fill(0);
            }
            Attribute::UnknownAttributes(l) => out.copy_from_slice(l.as_bytes()),
            Attribute::EvenPort(r) => out[0] = if *r { 0x80 } else { 0 },
            Attribute::DontFragment | Attribute::UseCandidate => {}
            Attribute::Icmp(i) => {
                out[..2].fill(0);
                out[2] = i.icmp_type;
                out[3] = i.icmp_code;
                out[4..8].copy_from_slice(&i.error_data.to_be_bytes());
            }
            Attribute::IceControlled(v) | Attribute::IceControlling(v) => out.copy_from_slice(&v.to_be_bytes()),
            Attribute::Fingerprint(v)
            | Attribute::Lifetime(v)
            | Attribute::ConnectionId(v)
            | Attribute::Priority(v) => out.copy_from_slice(&v.to_be_bytes()),
            Attribute::ChannelNumber(v) | Attribute::ResponsePort(v) => {
                out[..2].copy_from_slice(&v.to_be_bytes());
                out[2..].fill(0);
            }
            Attribute::RequestedAddressFamily(b)
            | Attribute::RequestedTransport(b)
            | Attribute::AdditionalAddressFamily(b) => {
                out[0] = *b;
                out[1..].fill(0);
            }
            Attribute::ChangeRequest(c) => {
                let flags = (u32::from(c.change_ip) << 2) | (u32::from(c.change_port) << 1);
                out.copy_from_slice(&flags.to_be_bytes());
            }
        }
    }
}

fn write_error_code(out: &mut [u8], first: u8, e: &ErrorCode<'_>) {
    out[0] = first;
    out[1] = 0;
    out[2] = (e.code / 100) as u8 & 0x07;
    out[3] = (e.code % 100) as u8;
    out[4..].copy_from_slice(e.reason.as_bytes());
}

/// Writes an address value (8 or 20 bytes), XOR-masked when `xor` is given.
fn write_address(out: &mut [u8], addr: &SocketAddr, xor: Option<&TransactionId>) {
    out[0] = 0;
    out[1] = AddressFamily::of(addr).code();
    let mut port = addr.port();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            let mut v = u32::from(ip);
            if xor.is_some() {
                v ^= MAGIC_COOKIE;
            }
            out[4..8].copy_from_slice(&v.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            let mut v = ip.octets();
            if let Some(tid) = xor {
                for (b, m) in v.iter_mut().zip(xor_mask(tid)) {
                    *b ^= m;
                }
            }
            out[4..20].copy_from_slice(&v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    fn round_trip(a: Attribute<'_>) {
        let mut buf = vec![0u8; a.value_len()];
        a.write_value(&mut buf, &TID);
        assert_eq!(Attribute::decode(a.attribute_type(), &buf, &TID).unwrap(), a);
    }

    #[test]
    fn fixed_form_attributes_round_trip() {
        round_trip(Attribute::XorPeerAddress("192.0.2.7:4000".parse().unwrap()));
        round_trip(Attribute::XorRelayedAddress("[2001:db8::9]:65535".parse().unwrap()));
        round_trip(Attribute::MappedAddress("[::1]:1".parse().unwrap()));
        round_trip(Attribute::ErrorCode(ErrorCode { code: 438, reason: "Stale Nonce" }));
        round_trip(Attribute::AddressErrorCode(2, ErrorCode { code: 440, reason: "" }));
        round_trip(Attribute::ChangeRequest(ChangeRequest { change_ip: true, change_port: false }));
        round_trip(Attribute::EvenPort(true));
        round_trip(Attribute::Icmp(Icmp { icmp_type: 3, icmp_code: 4, error_data: 1400 }));
        round_trip(Attribute::PasswordAlgorithm(PasswordAlgorithmEntry { algorithm: 2, params: &[] }));
    }

    #[test]
    fn malformed_values_are_typed_errors() {
        let t = AttributeType::XOR_PEER_ADDRESS;
        assert_eq!(Attribute::decode(t, &[0, 1, 0, 0], &TID), Err(AttrError::BadLength { ty: t, len: 4 }));
        assert_eq!(
            Attribute::decode(t, &[0, 3, 0, 0, 0, 0, 0, 0], &TID),
            Err(AttrError::BadFamily { ty: t, family: 3 })
        );
        let e = AttributeType::ERROR_CODE;
        assert!(matches!(Attribute::decode(e, &[0, 0, 7, 0], &TID), Err(AttrError::BadErrorCode { class: 7, .. })));
        assert!(matches!(Attribute::decode(AttributeType::USERNAME, &[0xff, 0xfe], &TID), Err(AttrError::NotUtf8(_))));
        assert!(matches!(
            Attribute::decode(AttributeType::USERNAME, &[b'a'; 600], &TID),
            Err(AttrError::TooLong { .. })
        ));
        assert!(matches!(
            Attribute::decode(AttributeType::PASSWORD_ALGORITHMS, &[0, 1, 0, 8, 0, 0], &TID),
            Err(AttrError::BadLength { .. })
        ));
    }

    #[test]
    fn comprehension_ranges() {
        assert!(AttributeType::USERNAME.is_comprehension_required());
        assert!(!AttributeType::SOFTWARE.is_comprehension_required());
        assert!(!AttributeType(0x7777).is_known());
        assert_eq!(format!("{:?}", AttributeType(0x7777)), "AttributeType(0x7777)");
    }
}
