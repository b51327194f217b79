//! Fuzzes one datagram as the UDP receive path sees it: first-byte
//! classification, ChannelData parsing, and STUN parsing, attribute decoding
//! and FINGERPRINT / MESSAGE-INTEGRITY(-SHA256) verification.
//!
//! Besides "never panics", it asserts invariants:
//! - a parsed ChannelData lies within the input, with a valid channel and at
//!   most three bytes of padding, and re-encodes to the same bytes;
//! - a parsed STUN message covers the whole input and every attribute lies
//!   within it, 4-aligned, in order;
//! - a verifier reports `Missing` exactly when the attribute is absent;
//! - the decodable attributes before MESSAGE-INTEGRITY re-encode (with
//!   [`MessageBuilder`]) into a message no longer than the input, which
//!   parses back to the same decoded values; sealed with integrity and
//!   FINGERPRINT under a fixed key, it verifies.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay_core::wire::attr::AttrError;
use relay_core::wire::channel_data::{self, CHANNEL_DATA_HEADER_LEN, is_valid_channel};
use relay_core::wire::demux::{PacketKind, classify_packet};
use relay_core::wire::integrity::userhash;
use relay_core::wire::message::{ATTR_HEADER_LEN, MAX_MESSAGE_LEN, peek_header};
use relay_core::wire::{
    Attribute, AttributeType, ChannelData, HEADER_LEN, IntegrityError, Key, Message, MessageBuilder, PasswordAlgorithm,
    TransactionId,
};

/// The short-term key every message is verified with.
const KEY: &[u8] = b"fuzz-short-term-key";

/// Long-term keys (MD5 and SHA-256), derived once.
fn long_term_keys() -> &'static [Key; 2] {
    static KEYS: OnceLock<[Key; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            Key::long_term(PasswordAlgorithm::Md5, "fuzz", "example.org", "password").unwrap(),
            Key::long_term(PasswordAlgorithm::Sha256, "fuzz", "example.org", "password").unwrap(),
        ]
    })
}

/// MESSAGE-INTEGRITY + MESSAGE-INTEGRITY-SHA256 + FINGERPRINT, headers included.
const SEAL_LEN: usize = (ATTR_HEADER_LEN + 20) + (ATTR_HEADER_LEN + 32) + (ATTR_HEADER_LEN + 4);

fuzz_target!(|data: &[u8]| {
    let kind = classify_packet(data);
    channel_data_invariants(data, kind);
    let _ = peek_header(data);
    if let Ok(m) = Message::parse(data) {
        assert!(data[0] < 0x40, "a STUN message's two top bits are zero");
        assert_eq!(peek_header(data), Some((m.message_type(), m.transaction_id())));
        stun_invariants(&m, data);
    }
    decode_as_every_known_type(data);
});

fn channel_data_invariants(data: &[u8], kind: PacketKind) {
    let header = channel_data::parse_header(data);
    let Ok(cd) = ChannelData::parse(data) else { return };
    assert_eq!(kind, PacketKind::ChannelData);
    assert!(is_valid_channel(cd.channel));
    assert_eq!(header, Ok((cd.channel, cd.payload.len() as u16)));
    let end = CHANNEL_DATA_HEADER_LEN + cd.payload.len();
    assert!(end <= data.len() && data.len() - end <= 3, "payload within the datagram, padding at most 3");
    assert_eq!(&data[CHANNEL_DATA_HEADER_LEN..end], cd.payload);
    let mut out = vec![0u8; channel_data::stream_len(cd.payload.len())];
    let n = channel_data::encode(&mut out, cd.channel, cd.payload, false).unwrap();
    assert_eq!(&out[..n], &data[..end]);
    let n = channel_data::encode(&mut out, cd.channel, cd.payload, true).unwrap();
    assert_eq!(n % 4, 0);
    assert_eq!(ChannelData::parse(&out[..n]), Ok(cd));
}

fn stun_invariants(m: &Message<'_>, data: &[u8]) {
    assert_eq!(m.len(), data.len());
    assert!(m.len() <= MAX_MESSAGE_LEN && m.len().is_multiple_of(4));
    assert_eq!(m.as_bytes(), data);
    let tid = m.transaction_id();
    assert_eq!(&tid.0[..], &data[8..HEADER_LEN]);

    // Attributes: in bounds, 4-aligned, in increasing order.
    let mut last = None;
    for a in m.attributes() {
        assert!(a.offset >= HEADER_LEN && a.offset.is_multiple_of(4));
        assert!(last.is_none_or(|l| a.offset > l));
        last = Some(a.offset);
        let start = a.offset + ATTR_HEADER_LEN;
        assert_eq!(a.value, &data[start..start + a.value.len()]);
        assert_eq!(u16::from_be_bytes([data[a.offset], data[a.offset + 1]]), a.ty.0);
        if let Ok(attr) = a.decode(&tid) {
            assert_eq!(attr.attribute_type(), a.ty);
            walk(&attr);
        }
    }
    for ty in [AttributeType::USERNAME, AttributeType::XOR_PEER_ADDRESS, AttributeType::DATA] {
        assert_eq!(m.get(ty), m.get_all(ty).next());
    }
    assert!(m.unknown_comprehension_required().all(|t| t.is_comprehension_required() && !t.is_known()));
    // The iterator and the offsets the verifiers use agree on which
    // integrity attributes count (RFC 8489 §14.5-§14.7).
    let offset_of = |ty| m.get(ty).map(|a| a.offset);
    assert_eq!(offset_of(AttributeType::MESSAGE_INTEGRITY), m.integrity_offset());
    assert_eq!(offset_of(AttributeType::MESSAGE_INTEGRITY_SHA256), m.integrity_sha256_offset());
    assert_eq!(offset_of(AttributeType::FINGERPRINT), m.fingerprint_offset());
    if let (Some(i), Some(f)) = (m.integrity_offset(), m.fingerprint_offset()) {
        assert!(i < f);
    }
    if let Some(f) = m.fingerprint_offset() {
        assert_eq!(f + ATTR_HEADER_LEN + 4, m.len(), "FINGERPRINT is last");
    }

    // Verifiers: `Missing` exactly when the attribute is absent.
    let fp = m.verify_fingerprint();
    assert_eq!(m.fingerprint_offset().is_none(), matches!(fp, Err(IntegrityError::Missing(_))));
    let [md5, sha256] = long_term_keys();
    for key in [KEY, md5.as_bytes(), sha256.as_bytes()] {
        let r = m.verify_message_integrity(key);
        assert_eq!(m.integrity_offset().is_none(), matches!(r, Err(IntegrityError::Missing(_))));
        let r = m.verify_message_integrity_sha256(key);
        assert_eq!(m.integrity_sha256_offset().is_none(), matches!(r, Err(IntegrityError::Missing(_))));
        let r = m.verify_integrity(key);
        assert_eq!(!m.has_integrity(), matches!(r, Err(IntegrityError::Missing(_))));
    }

    rebuild(m, tid);
}

/// Re-encodes the decodable attributes that precede the integrity
/// attributes and checks the copy parses back to the same values.
fn rebuild(m: &Message<'_>, tid: TransactionId) {
    let originals: Vec<Attribute<'_>> = m
        .attributes()
        .take_while(|a| {
            !matches!(
                a.ty,
                AttributeType::MESSAGE_INTEGRITY | AttributeType::MESSAGE_INTEGRITY_SHA256 | AttributeType::FINGERPRINT
            )
        })
        .filter_map(|a| a.decode(&tid).ok())
        .collect();
    let mut buf = vec![0u8; m.len() + SEAL_LEN];
    let mut b = MessageBuilder::new(&mut buf, m.message_type(), tid).unwrap();
    for a in &originals {
        b.add(a).unwrap();
    }
    // Decoded values never need more room than their raw form.
    assert!(b.len() <= m.len());
    {
        let copy = Message::parse(b.as_bytes()).expect("the builder writes valid messages");
        assert_eq!(copy.message_type(), m.message_type());
        let again: Vec<_> = copy.attributes().map(|a| a.decode(&tid).unwrap()).collect();
        assert_eq!(again, originals);
    }

    // Sealed with integrity and FINGERPRINT, the copy verifies.
    let n = b.len();
    if n + SEAL_LEN > MAX_MESSAGE_LEN {
        return;
    }
    b.add_message_integrity(KEY).unwrap().add_message_integrity_sha256(KEY).unwrap().add_fingerprint().unwrap();
    assert_eq!(b.finish(), n + SEAL_LEN);
    let sealed = Message::parse(&buf[..n + SEAL_LEN]).unwrap();
    sealed.verify_fingerprint().unwrap();
    sealed.verify_message_integrity(KEY).unwrap();
    sealed.verify_message_integrity_sha256(KEY).unwrap();
    assert!(sealed.verify_message_integrity(b"another key").is_err());
}

/// Walks the parts of a decoded value that are read lazily.
fn walk(attr: &Attribute<'_>) {
    match attr {
        Attribute::PasswordAlgorithms(p) => {
            let mut total = 0;
            for e in p.iter() {
                total += 4 + e.params.len().next_multiple_of(4);
            }
            assert!(total >= p.as_bytes().len() && total <= p.as_bytes().len() + 3);
        }
        Attribute::UnknownAttributes(l) => assert_eq!(l.iter().count() * 2, l.as_bytes().len()),
        Attribute::ErrorCode(e) | Attribute::AddressErrorCode(_, e) => assert!((300..700).contains(&e.code)),
        Attribute::Username(u) if u.len() <= 64 => {
            // USERHASH prepares attacker-chosen usernames with OpaqueString.
            let _ = userhash(u, "example.org");
        }
        _ => {}
    }
}

/// Decodes (a bounded prefix of) the input as the value of every known type.
fn decode_as_every_known_type(data: &[u8]) {
    let v = &data[..data.len().min(1024)];
    let tid = TransactionId([0x5a; 12]);
    for code in (0x0000..=0x002Fu16).chain(0x8000..=0x802F) {
        let ty = AttributeType(code);
        match Attribute::decode(ty, v, &tid) {
            Ok(attr) => {
                assert_eq!(attr.attribute_type(), ty);
                assert_eq!(ty.is_known(), !matches!(attr, Attribute::Other(..)));
                walk(&attr);
            }
            Err(AttrError::TooLong { len, max, .. }) => assert!(len > max),
            Err(_) => assert!(ty.is_known()),
        }
    }
}
