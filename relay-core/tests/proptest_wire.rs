//! Property tests of the STUN/TURN wire format (`relay_core::wire`):
//!
//! - build → parse round trip of arbitrary attribute sets, with
//!   MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT checked
//!   with the right key and refused with a wrong one;
//! - no parser panics on arbitrary bytes, nor on STUN-shaped bytes with
//!   arbitrary attribute values;
//! - every truncation of a valid message is rejected, every single-byte
//!   corruption is handled without a panic and is caught by FINGERPRINT and
//!   MESSAGE-INTEGRITY when they still stand where they stood;
//! - the stream framer recovers a sequence of STUN and ChannelData frames fed
//!   in arbitrary pieces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use relay_core::wire::attr::{ChangeRequest, Icmp, PasswordAlgorithmEntry, limits};
use relay_core::wire::channel_data::{self, MAX_CHANNEL, MIN_CHANNEL};
use relay_core::wire::demux::{Frame, classify_packet};
use relay_core::wire::message::{MAX_MESSAGE_LEN, peek_header};
use relay_core::wire::{
    Attribute, AttributeType, ChannelData, Class, ErrorCode, IntegrityAlgorithm, IntegrityError, Message,
    MessageBuilder, MessageType, Method, ParseError, TransactionId, next_frame,
};

/// The key the "arbitrary bytes" properties verify integrity with.
const FIXED_KEY: &[u8] = b"proptest-key";

// ---------------------------------------------------------------------------
// An owned description of one attribute, from which an `Attribute` borrows.
// ---------------------------------------------------------------------------

/// The seven attributes that carry a socket address.
#[derive(Clone, Copy, Debug)]
enum AddrKind {
    Mapped,
    XorMapped,
    AlternateServer,
    XorPeer,
    XorRelayed,
    ResponseOrigin,
    Other,
}

/// The attributes whose value is UTF-8 text, and their size limits.
#[derive(Clone, Copy, Debug)]
enum TextKind {
    Username,
    Realm,
    Nonce,
    Software,
    AlternateDomain,
}

impl TextKind {
    fn limit(self) -> usize {
        match self {
            TextKind::Username => limits::USERNAME,
            TextKind::AlternateDomain => limits::DOMAIN,
            TextKind::Realm | TextKind::Nonce | TextKind::Software => limits::TEXT,
        }
    }
}

#[derive(Clone, Debug)]
enum Spec {
    Addr(AddrKind, SocketAddr),
    Text(TextKind, String),
    Data(Vec<u8>),
    Padding(Vec<u8>),
    Userhash([u8; 32]),
    ErrorCode(u16, String),
    AddressErrorCode(u8, u16, String),
    /// Encoded PASSWORD-ALGORITHMS list (the type has no public constructor,
    /// so the attribute is made by decoding these bytes).
    PasswordAlgorithms(Vec<u8>),
    PasswordAlgorithm(u16, Vec<u8>),
    /// Encoded UNKNOWN-ATTRIBUTES list (an even number of bytes).
    UnknownAttributes(Vec<u8>),
    ChannelNumber(u16),
    ResponsePort(u16),
    Lifetime(u32),
    ConnectionId(u32),
    Priority(u32),
    IceControlled(u64),
    IceControlling(u64),
    RequestedAddressFamily(u8),
    RequestedTransport(u8),
    AdditionalAddressFamily(u8),
    EvenPort(bool),
    DontFragment,
    UseCandidate,
    ReservationToken([u8; 8]),
    Icmp(u8, u8, u32),
    ChangeRequest(bool, bool),
    Other(u16, Vec<u8>),
}

impl Spec {
    /// The attribute this spec describes, borrowing from it.
    fn attr(&self) -> Attribute<'_> {
        // Any transaction id will do: the list attributes have no XOR form.
        let tid = TransactionId::default();
        match self {
            Spec::Addr(kind, a) => match kind {
                AddrKind::Mapped => Attribute::MappedAddress(*a),
                AddrKind::XorMapped => Attribute::XorMappedAddress(*a),
                AddrKind::AlternateServer => Attribute::AlternateServer(*a),
                AddrKind::XorPeer => Attribute::XorPeerAddress(*a),
                AddrKind::XorRelayed => Attribute::XorRelayedAddress(*a),
                AddrKind::ResponseOrigin => Attribute::ResponseOrigin(*a),
                AddrKind::Other => Attribute::OtherAddress(*a),
            },
            Spec::Text(kind, s) => match kind {
                TextKind::Username => Attribute::Username(s),
                TextKind::Realm => Attribute::Realm(s),
                TextKind::Nonce => Attribute::Nonce(s),
                TextKind::Software => Attribute::Software(s),
                TextKind::AlternateDomain => Attribute::AlternateDomain(s),
            },
            Spec::Data(v) => Attribute::Data(v),
            Spec::Padding(v) => Attribute::Padding(v),
            Spec::Userhash(h) => Attribute::Userhash(h),
            Spec::ErrorCode(code, reason) => Attribute::ErrorCode(ErrorCode { code: *code, reason }),
            Spec::AddressErrorCode(family, code, reason) => {
                Attribute::AddressErrorCode(*family, ErrorCode { code: *code, reason })
            }
            Spec::PasswordAlgorithms(v) => Attribute::decode(AttributeType::PASSWORD_ALGORITHMS, v, &tid)
                .expect("generated PASSWORD-ALGORITHMS list decodes"),
            Spec::PasswordAlgorithm(algorithm, params) => {
                Attribute::PasswordAlgorithm(PasswordAlgorithmEntry { algorithm: *algorithm, params })
            }
            Spec::UnknownAttributes(v) => Attribute::decode(AttributeType::UNKNOWN_ATTRIBUTES, v, &tid)
                .expect("generated UNKNOWN-ATTRIBUTES list decodes"),
            Spec::ChannelNumber(n) => Attribute::ChannelNumber(*n),
            Spec::ResponsePort(n) => Attribute::ResponsePort(*n),
            Spec::Lifetime(n) => Attribute::Lifetime(*n),
            Spec::ConnectionId(n) => Attribute::ConnectionId(*n),
            Spec::Priority(n) => Attribute::Priority(*n),
            Spec::IceControlled(n) => Attribute::IceControlled(*n),
            Spec::IceControlling(n) => Attribute::IceControlling(*n),
            Spec::RequestedAddressFamily(b) => Attribute::RequestedAddressFamily(*b),
            Spec::RequestedTransport(b) => Attribute::RequestedTransport(*b),
            Spec::AdditionalAddressFamily(b) => Attribute::AdditionalAddressFamily(*b),
            Spec::EvenPort(r) => Attribute::EvenPort(*r),
            Spec::DontFragment => Attribute::DontFragment,
            Spec::UseCandidate => Attribute::UseCandidate,
            Spec::ReservationToken(t) => Attribute::ReservationToken(t),
            Spec::Icmp(icmp_type, icmp_code, error_data) => {
                Attribute::Icmp(Icmp { icmp_type: *icmp_type, icmp_code: *icmp_code, error_data: *error_data })
            }
            Spec::ChangeRequest(change_ip, change_port) => {
                Attribute::ChangeRequest(ChangeRequest { change_ip: *change_ip, change_port: *change_port })
            }
            Spec::Other(ty, v) => Attribute::Other(AttributeType(*ty), v),
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Arbitrary UTF-8 of at most `max` bytes: mostly short, sometimes right at
/// the limit.
fn text(max: usize) -> impl Strategy<Value = String> {
    let clip = move |chars: Vec<char>| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        s
    };
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 0..24).prop_map(clip),
        1 => prop::collection::vec(any::<char>(), 0..=max).prop_map(clip),
        1 => prop::collection::vec(prop::char::range('a', 'z'), 0..=max).prop_map(clip),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn error_code() -> impl Strategy<Value = u16> {
    300u16..=699
}

fn password_algorithms_list() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<u16>(), bytes(12)), 0..4).prop_map(|entries| {
        let mut v = Vec::new();
        for (alg, params) in entries {
            v.extend_from_slice(&alg.to_be_bytes());
            v.extend_from_slice(&(params.len() as u16).to_be_bytes());
            v.extend_from_slice(&params);
            v.resize(v.len().next_multiple_of(4), 0);
        }
        v
    })
}

fn unknown_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("type must be unknown to the crate", |t| !AttributeType(*t).is_known())
}

fn text_kind() -> impl Strategy<Value = TextKind> {
    prop_oneof![
        Just(TextKind::Username),
        Just(TextKind::Realm),
        Just(TextKind::Nonce),
        Just(TextKind::Software),
        Just(TextKind::AlternateDomain),
    ]
}

fn addr_kind() -> impl Strategy<Value = AddrKind> {
    prop_oneof![
        Just(AddrKind::Mapped),
        Just(AddrKind::XorMapped),
        Just(AddrKind::AlternateServer),
        Just(AddrKind::XorPeer),
        Just(AddrKind::XorRelayed),
        Just(AddrKind::ResponseOrigin),
        Just(AddrKind::Other),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => (addr_kind(), socket_addr()).prop_map(|(k, a)| Spec::Addr(k, a)),
        3 => text_kind().prop_flat_map(|k| text(k.limit()).prop_map(move |s| Spec::Text(k, s))),
        2 => bytes(300).prop_map(Spec::Data),
        1 => bytes(64).prop_map(Spec::Padding),
        1 => any::<[u8; 32]>().prop_map(Spec::Userhash),
        1 => (error_code(), text(limits::TEXT)).prop_map(|(c, r)| Spec::ErrorCode(c, r)),
        1 => (any::<u8>(), error_code(), text(limits::TEXT)).prop_map(|(f, c, r)| Spec::AddressErrorCode(f, c, r)),
        1 => password_algorithms_list().prop_map(Spec::PasswordAlgorithms),
        1 => (any::<u16>(), bytes(12)).prop_map(|(a, p)| Spec::PasswordAlgorithm(a, p)),
        1 => prop::collection::vec(any::<u16>(), 0..8)
            .prop_map(|ts| Spec::UnknownAttributes(ts.iter().flat_map(|t| t.to_be_bytes()).collect())),
        1 => any::<u16>().prop_map(Spec::ChannelNumber),
        1 => any::<u16>().prop_map(Spec::ResponsePort),
        1 => any::<u32>().prop_map(Spec::Lifetime),
        1 => any::<u32>().prop_map(Spec::ConnectionId),
        1 => any::<u32>().prop_map(Spec::Priority),
        1 => any::<u64>().prop_map(Spec::IceControlled),
        1 => any::<u64>().prop_map(Spec::IceControlling),
        1 => any::<u8>().prop_map(Spec::RequestedAddressFamily),
        1 => any::<u8>().prop_map(Spec::RequestedTransport),
        1 => any::<u8>().prop_map(Spec::AdditionalAddressFamily),
        1 => any::<bool>().prop_map(Spec::EvenPort),
        1 => Just(Spec::DontFragment),
        1 => Just(Spec::UseCandidate),
        1 => any::<[u8; 8]>().prop_map(Spec::ReservationToken),
        1 => (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(t, c, d)| Spec::Icmp(t, c, d)),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(a, b)| Spec::ChangeRequest(a, b)),
        2 => (unknown_type(), bytes(64)).prop_map(|(t, v)| Spec::Other(t, v)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![Just(Class::Request), Just(Class::Indication), Just(Class::Success), Just(Class::Error)]
}

/// Any message type; `max_method` bounds the 12-bit method.
fn message_type(max_method: u16) -> impl Strategy<Value = MessageType> {
    (class(), 0u16..=max_method).prop_map(|(c, m)| MessageType::new(c, Method::new(m).unwrap()))
}

fn tid() -> impl Strategy<Value = TransactionId> {
    any::<[u8; 12]>().prop_map(TransactionId)
}

/// Which integrity attributes and FINGERPRINT to add, and the key.
#[derive(Clone, Debug)]
struct Seal {
    mi: bool,
    mi256: bool,
    fp: bool,
    key: Vec<u8>,
}

fn seal() -> impl Strategy<Value = Seal> {
    // Keys up to 80 bytes: HMAC hashes those longer than its 64-byte block.
    (any::<bool>(), any::<bool>(), any::<bool>(), bytes(80)).prop_map(|(mi, mi256, fp, key)| Seal {
        mi,
        mi256,
        fp,
        key,
    })
}

/// A different key that HMAC really treats as different (HMAC pads short
/// keys with zeros, so appending a zero byte would not do).
fn wrong_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    match k.first_mut() {
        Some(b) => *b ^= 0x01,
        None => k.push(0x01),
    }
    k
}

/// A message built from arbitrary attributes, integrity and fingerprint.
#[derive(Clone, Debug)]
struct Built {
    ty: MessageType,
    tid: TransactionId,
    specs: Vec<Spec>,
    seal: Seal,
    bytes: Vec<u8>,
}

fn build(ty: MessageType, tid: TransactionId, specs: &[Spec], seal: &Seal, padding: u8) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let mut b = MessageBuilder::new(&mut buf, ty, tid).unwrap();
    b.padding_byte(padding);
    for s in specs {
        b.add(&s.attr()).unwrap();
    }
    if seal.mi {
        b.add_message_integrity(&seal.key).unwrap();
    }
    if seal.mi256 {
        b.add_message_integrity_sha256(&seal.key).unwrap();
    }
    if seal.fp {
        b.add_fingerprint().unwrap();
    }
    let n = b.finish();
    buf.truncate(n);
    buf
}

fn built_message(max_attrs: usize, max_method: u16) -> impl Strategy<Value = Built> {
    (message_type(max_method), tid(), prop::collection::vec(spec(), 0..=max_attrs), seal(), any::<u8>()).prop_map(
        |(ty, tid, specs, seal, padding)| {
            let bytes = build(ty, tid, &specs, &seal, padding);
            Built { ty, tid, specs, seal, bytes }
        },
    )
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// Runs every parser and check on `bytes`; any panic fails the property.
fn exercise(bytes: &[u8]) {
    let _ = classify_packet(bytes);
    let _ = peek_header(bytes);
    let _ = channel_data::parse_header(bytes);
    if let Ok(cd) = ChannelData::parse(bytes) {
        assert!(channel_data::is_valid_channel(cd.channel));
        assert!(bytes.len() - 4 - cd.payload.len() <= 3);
    }
    match next_frame(bytes) {
        Ok(Frame::Stun(n) | Frame::ChannelData(n)) => assert!(n <= bytes.len()),
        Ok(Frame::NeedMore(n)) => assert!(n > bytes.len()),
        Err(_) => {}
    }
    if let Ok(m) = Message::parse(bytes) {
        assert_eq!(m.len(), bytes.len());
        let tid = m.transaction_id();
        for a in m.attributes() {
            assert!(a.offset + 4 + a.value.len() <= bytes.len());
            if let Ok(attr) = a.decode(&tid) {
                assert_eq!(attr.attribute_type(), a.ty);
                match attr {
                    Attribute::PasswordAlgorithms(list) => {
                        let _ = list.iter().count();
                    }
                    Attribute::UnknownAttributes(list) => {
                        let _ = list.iter().count();
                    }
                    _ => {}
                }
            }
        }
        let _ = m.verify_fingerprint();
        let _ = m.verify_integrity(FIXED_KEY);
        let _ = m.verify_message_integrity(FIXED_KEY);
        let _ = m.verify_message_integrity_sha256(FIXED_KEY);
        let _ = m.unknown_comprehension_required().count();
        let _ = m.get_all(AttributeType::XOR_PEER_ADDRESS).count();
        assert_eq!(peek_header(bytes), Some((m.message_type(), tid)));
    }
}

/// STUN-shaped bytes: a valid header and arbitrary attribute TLVs (types
/// drawn mostly from the known ones), so that parsing gets past the header
/// and the decoders see arbitrary values.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    let known: Vec<u16> = (0u16..=0x002C).chain(0x8000..=0x802C).filter(|t| AttributeType(*t).is_known()).collect();
    let attr_type = prop_oneof![4 => prop::sample::select(known), 1 => any::<u16>()];
    let tlv = (attr_type, bytes(40), any::<u8>());
    (any::<u16>(), tid(), prop::collection::vec(tlv, 0..10)).prop_map(|(ty, tid, tlvs)| {
        let mut v = Vec::new();
        v.extend_from_slice(&(ty & 0x3FFF).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        v.extend_from_slice(&tid.0);
        for (t, value, pad) in tlvs {
            v.extend_from_slice(&t.to_be_bytes());
            v.extend_from_slice(&(value.len() as u16).to_be_bytes());
            v.extend_from_slice(&value);
            v.resize(v.len().next_multiple_of(4), pad);
        }
        let body = (v.len() - 20) as u16;
        v[2..4].copy_from_slice(&body.to_be_bytes());
        v
    })
}

/// One frame of a TCP/TLS stream.
#[derive(Clone, Debug)]
enum StreamFrame {
    Stun(Vec<u8>),
    ChannelData(u16, Vec<u8>),
}

impl StreamFrame {
    fn encode(&self) -> Vec<u8> {
        match self {
            StreamFrame::Stun(b) => b.clone(),
            StreamFrame::ChannelData(ch, payload) => {
                let mut out = vec![0u8; channel_data::stream_len(payload.len())];
                let n = channel_data::encode(&mut out, *ch, payload, true).unwrap();
                assert_eq!(n, out.len());
                out
            }
        }
    }
}

fn stream_frame() -> impl Strategy<Value = StreamFrame> {
    prop_oneof![
        built_message(4, 0x0FF).prop_map(|b| StreamFrame::Stun(b.bytes)),
        (MIN_CHANNEL..=MAX_CHANNEL, bytes(200)).prop_map(|(ch, p)| StreamFrame::ChannelData(ch, p)),
    ]
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the builder writes, the parser reads back: type, id, every
    /// attribute in order, integrity and fingerprint.
    #[test]
    fn build_parse_round_trip(built in built_message(12, 0x0FFF)) {
        let Built { ty, tid, specs, seal, bytes } = &built;
        let m = Message::parse(bytes).unwrap();
        prop_assert_eq!(m.message_type(), *ty);
        prop_assert_eq!(m.transaction_id(), *tid);
        prop_assert_eq!(m.len(), bytes.len());
        prop_assert_eq!(peek_header(bytes), Some((*ty, *tid)));
        // RFC 7983 demultiplexing only knows first bytes 0-3: methods below 0x100.
        if ty.method.value() < 0x100 {
            prop_assert_eq!(next_frame(bytes), Ok(Frame::Stun(bytes.len())));
        }

        let raw: Vec<_> = m.attributes().collect();
        let sealed = usize::from(seal.mi) + usize::from(seal.mi256) + usize::from(seal.fp);
        prop_assert_eq!(raw.len(), specs.len() + sealed);
        for (spec, a) in specs.iter().zip(&raw) {
            prop_assert_eq!(a.decode(tid), Ok(spec.attr()));
        }
        let mut tail = raw[specs.len()..].iter();
        if seal.mi {
            let a = tail.next().unwrap();
            prop_assert_eq!(a.ty, AttributeType::MESSAGE_INTEGRITY);
            prop_assert_eq!(m.integrity_offset(), Some(a.offset));
        } else {
            prop_assert_eq!(m.integrity_offset(), None);
        }
        if seal.mi256 {
            let a = tail.next().unwrap();
            prop_assert_eq!(a.ty, AttributeType::MESSAGE_INTEGRITY_SHA256);
            prop_assert_eq!(a.value.len(), 32);
            prop_assert_eq!(m.integrity_sha256_offset(), Some(a.offset));
        } else {
            prop_assert_eq!(m.integrity_sha256_offset(), None);
        }
        if seal.fp {
            let a = tail.next().unwrap();
            prop_assert_eq!(a.ty, AttributeType::FINGERPRINT);
            prop_assert_eq!(m.fingerprint_offset(), Some(a.offset));
            prop_assert_eq!(a.offset + 8, bytes.len());
        }
        prop_assert_eq!(m.has_integrity(), seal.mi || seal.mi256);

        // Integrity: right key passes, a different key fails.
        let wrong = wrong_key(&seal.key);
        if seal.mi {
            prop_assert_eq!(m.verify_message_integrity(&seal.key), Ok(()));
            prop_assert_eq!(m.verify_message_integrity(&wrong), Err(IntegrityError::Mismatch("MESSAGE-INTEGRITY")));
        } else {
            prop_assert!(matches!(m.verify_message_integrity(&seal.key), Err(IntegrityError::Missing(_))));
        }
        if seal.mi256 {
            prop_assert_eq!(m.verify_message_integrity_sha256(&seal.key), Ok(()));
            prop_assert!(matches!(
                m.verify_message_integrity_sha256(&wrong),
                Err(IntegrityError::Mismatch(_))
            ));
        } else {
            prop_assert!(matches!(m.verify_message_integrity_sha256(&seal.key), Err(IntegrityError::Missing(_))));
        }
        let expected = if seal.mi256 {
            Some(IntegrityAlgorithm::Sha256)
        } else if seal.mi {
            Some(IntegrityAlgorithm::Sha1)
        } else {
            None
        };
        match expected {
            Some(alg) => {
                prop_assert_eq!(m.verify_integrity(&seal.key), Ok(alg));
                prop_assert!(matches!(m.verify_integrity(&wrong), Err(IntegrityError::Mismatch(_))));
            }
            None => prop_assert!(matches!(m.verify_integrity(&seal.key), Err(IntegrityError::Missing(_)))),
        }
        if seal.fp {
            prop_assert_eq!(m.verify_fingerprint(), Ok(()));
        } else {
            prop_assert_eq!(m.verify_fingerprint(), Err(IntegrityError::Missing("FINGERPRINT")));
        }

        // The comprehension-required types the crate does not know are
        // exactly the `Other` attributes below 0x8000, in order.
        let unknown: Vec<_> = m.unknown_comprehension_required().collect();
        let expected_unknown: Vec<_> = specs
            .iter()
            .filter_map(|s| match s {
                Spec::Other(t, _) if *t < 0x8000 => Some(AttributeType(*t)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(unknown, expected_unknown);
    }

    /// No parser or check panics on arbitrary bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes(2048)) {
        exercise(&bytes);
    }

    /// Nor on bytes with a valid STUN header and arbitrary attributes.
    #[test]
    fn stun_shaped_bytes_never_panic(bytes in stun_shaped()) {
        // The length field is right, so only attribute rules can refuse it.
        match Message::parse(&bytes) {
            Ok(_)
            | Err(ParseError::BadIntegrityLength { .. })
            | Err(ParseError::FingerprintNotLast)
            | Err(ParseError::AttributeOverflow { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected header error {e:?}"),
        }
        exercise(&bytes);
    }

    /// Every strict prefix of a valid message is refused by `Message::parse`
    /// (and framed as incomplete); nothing panics on any of them.
    #[test]
    fn truncations_are_rejected(built in built_message(6, 0x0FF)) {
        let bytes = &built.bytes;
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            prop_assert!(Message::parse(prefix).is_err(), "prefix of {} bytes parsed", cut);
            let need = match cut {
                0 => 4,
                1..=3 => 20,
                _ => bytes.len(),
            };
            prop_assert_eq!(next_frame(prefix), Ok(Frame::NeedMore(need)));
            exercise(prefix);
        }
    }

    /// Every single-byte corruption is handled without a panic, and one
    /// that leaves FINGERPRINT or MESSAGE-INTEGRITY where it was is caught by it.
    #[test]
    fn corruptions_never_panic_and_are_detected(built in built_message(6, 0x0FF), flip in 1u8..=255) {
        let original = Message::parse(&built.bytes).unwrap();
        let fp_at = original.fingerprint_offset();
        let mi_at = original.integrity_offset();
        let mut bytes = built.bytes.clone();
        for i in 0..bytes.len() {
            bytes[i] ^= flip;
            exercise(&bytes);
            if let Ok(m) = Message::parse(&bytes) {
                if fp_at.is_some() && m.fingerprint_offset() == fp_at {
                    prop_assert!(m.verify_fingerprint().is_err(), "corrupt byte {} passed FINGERPRINT", i);
                }
                if let Some(at) = mi_at
                    && i < at + 24 && m.integrity_offset() == mi_at {
                        prop_assert!(
                            m.verify_message_integrity(&built.seal.key).is_err(),
                            "corrupt byte {} passed MESSAGE-INTEGRITY",
                            i
                        );
                    }
            }
            bytes[i] ^= flip;
        }
    }

    /// A stream of STUN and padded ChannelData frames, received in arbitrary
    /// pieces, is cut back into exactly the frames that were sent.
    #[test]
    fn stream_framing_recovers_frames(
        frames in prop::collection::vec(stream_frame(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let encoded: Vec<Vec<u8>> = frames.iter().map(StreamFrame::encode).collect();
        let stream: Vec<u8> = encoded.concat();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();

        let mut pending: Vec<u8> = Vec::new();
        let mut received: Vec<Vec<u8>> = Vec::new();
        let mut from = 0;
        for to in points {
            pending.extend_from_slice(&stream[from..to]);
            from = to;
            loop {
                match next_frame(&pending).unwrap() {
                    Frame::Stun(n) => {
                        let frame: Vec<u8> = pending.drain(..n).collect();
                        prop_assert!(Message::parse(&frame).is_ok());
                        received.push(frame);
                    }
                    Frame::ChannelData(n) => {
                        let frame: Vec<u8> = pending.drain(..n).collect();
                        prop_assert!(ChannelData::parse(&frame).is_ok());
                        received.push(frame);
                    }
                    Frame::NeedMore(n) => {
                        prop_assert!(n > pending.len());
                        break;
                    }
                }
            }
        }
        prop_assert!(pending.is_empty(), "{} bytes left over", pending.len());
        prop_assert_eq!(&received, &encoded);
        for (frame, sent) in received.iter().zip(&frames) {
            if let StreamFrame::ChannelData(ch, payload) = sent {
                let cd = ChannelData::parse(frame).unwrap();
                prop_assert_eq!(cd.channel, *ch);
                prop_assert_eq!(cd.payload, &payload[..]);
            }
        }
    }
}

/// Regression test for FINGERPRINT in the last bytes of a maximum-size
/// message (possible over TCP/TLS, where frames reach 65552 bytes): offsets
/// 65536, 65540 and 65544 once overflowed the `u16` that `Message::parse`
/// stored them in, so `verify_fingerprint` read the header as an attribute.
#[test]
fn fingerprint_at_the_end_of_a_maximum_size_message() {
    let ty = MessageType::new(Class::Indication, Method::SEND);
    let tid = TransactionId([0; 12]);
    let mut failures = Vec::new();
    for fp_at in [65536usize, 65540, 65544] {
        let data = vec![0xAB; fp_at - 20 - 4];
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let mut b = MessageBuilder::new(&mut buf, ty, tid).unwrap();
        b.add(&Attribute::Data(&data)).unwrap();
        b.add_fingerprint().unwrap();
        let n = b.finish();
        buf.truncate(n);
        let m = Message::parse(&buf).unwrap();
        let offset = m.fingerprint_offset();
        let verified = std::panic::catch_unwind(|| m.verify_fingerprint());
        if offset != Some(fp_at) || !matches!(verified, Ok(Ok(()))) {
            failures.push(format!("FINGERPRINT at {fp_at}: offset {offset:?}, verify {verified:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
