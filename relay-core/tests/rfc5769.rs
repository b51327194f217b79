//! The RFC 5769 test vectors for STUN, byte for byte.
//!
//! For each of the four sample messages (§2.1 request, §2.2 IPv4 response,
//! §2.3 IPv6 response, §2.4 request with long-term authentication):
//!
//! - it parses, with the expected class, method and transaction id, and the
//!   exact list of attributes with their decoded values;
//! - MESSAGE-INTEGRITY verifies with the vector's key (short-term: the
//!   password; long-term: MD5 of `username:realm:SASLprep(password)`) and is
//!   refused with a wrong key; FINGERPRINT verifies where present (§2.1–§2.3);
//! - corrupting one byte is caught by both checks;
//! - [`MessageBuilder`] re-encodes the message byte for byte, both from the
//!   vector's parameters and from the decoded attributes (the vectors pad
//!   with 0x20 in §2.1–§2.3 and with 0x00 in §2.4).
//!
//! The bytes were transcribed from RFC 5769 and checked independently
//! (HMAC-SHA1 and CRC-32 computed outside this crate) before being used here.

use std::net::SocketAddr;

use relay_core::wire::integrity::short_term_key;
use relay_core::wire::{
    Attribute, AttributeType, Class, IntegrityAlgorithm, IntegrityError, Key, Message, MessageBuilder, Method,
    PasswordAlgorithm, TransactionId,
};

/// RFC 5769 §2.1: Binding request, short-term credentials, ICE attributes.
/// USERNAME is padded with three 0x20 bytes.
const SAMPLE_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, // Request type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x10, // SOFTWARE attribute header
    0x53, 0x54, 0x55, 0x4e, // }
    0x20, 0x74, 0x65, 0x73, // }  User-agent...
    0x74, 0x20, 0x63, 0x6c, // }  ...name
    0x69, 0x65, 0x6e, 0x74, // }
    0x00, 0x24, 0x00, 0x04, // PRIORITY attribute header
    0x6e, 0x00, 0x01, 0xff, // ICE priority value
    0x80, 0x29, 0x00, 0x08, // ICE-CONTROLLED attribute header
    0x93, 0x2f, 0xf9, 0xb1, // }  Pseudo-random tie breaker...
    0x51, 0x26, 0x3b, 0x36, // }   ...for ICE control
    0x00, 0x06, 0x00, 0x09, // USERNAME attribute header
    0x65, 0x76, 0x74, 0x6a, // }
    0x3a, 0x68, 0x36, 0x76, // }  Username (9 bytes) and padding (3 bytes)
    0x59, 0x20, 0x20, 0x20, // }
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0x9a, 0xea, 0xa7, 0x0c, // }
    0xbf, 0xd8, 0xcb, 0x56, // }
    0x78, 0x1e, 0xf2, 0xb5, // }  HMAC-SHA1 fingerprint
    0xb2, 0xd3, 0xf2, 0x49, // }
    0xc1, 0xb5, 0x71, 0xa2, // }
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT attribute header
    0xe5, 0x7a, 0x3b, 0xcf, // CRC32 fingerprint
];

/// RFC 5769 §2.2: Binding success response, XOR-MAPPED-ADDRESS 192.0.2.1:32853.
/// SOFTWARE ("test vector", 11 bytes) is padded with one 0x20 byte.
const SAMPLE_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, // Response type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x0b, // SOFTWARE attribute header
    0x74, 0x65, 0x73, 0x74, // }
    0x20, 0x76, 0x65, 0x63, // }  UTF-8 server name
    0x74, 0x6f, 0x72, 0x20, // }
    0x00, 0x20, 0x00, 0x08, // XOR-MAPPED-ADDRESS attribute header
    0x00, 0x01, 0xa1, 0x47, // Address family (IPv4) and xor'd mapped port
    0xe1, 0x12, 0xa6, 0x43, // Xor'd mapped IPv4 address
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0x2b, 0x91, 0xf5, 0x99, // }
    0xfd, 0x9e, 0x90, 0xc3, // }
    0x8c, 0x74, 0x89, 0xf9, // }  HMAC-SHA1 fingerprint
    0x2a, 0xf9, 0xba, 0x53, // }
    0xf0, 0x6b, 0xe7, 0xd7, // }
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT attribute header
    0xc0, 0x7d, 0x4c, 0x96, // CRC32 fingerprint
];

/// RFC 5769 §2.3: Binding success response, XOR-MAPPED-ADDRESS
/// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
const SAMPLE_IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, // Response type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x0b, // SOFTWARE attribute header
    0x74, 0x65, 0x73, 0x74, // }
    0x20, 0x76, 0x65, 0x63, // }  UTF-8 server name
    0x74, 0x6f, 0x72, 0x20, // }
    0x00, 0x20, 0x00, 0x14, // XOR-MAPPED-ADDRESS attribute header
    0x00, 0x02, 0xa1, 0x47, // Address family (IPv6) and xor'd mapped port
    0x01, 0x13, 0xa9, 0xfa, // }
    0xa5, 0xd3, 0xf1, 0x79, // }  Xor'd mapped IPv6 address
    0xbc, 0x25, 0xf4, 0xb5, // }
    0xbe, 0xd2, 0xb9, 0xd9, // }
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0xa3, 0x82, 0x95, 0x4e, // }
    0x4b, 0xe6, 0x7b, 0xf1, // }
    0x17, 0x84, 0xc9, 0x7c, // }  HMAC-SHA1 fingerprint
    0x82, 0x92, 0xc2, 0x75, // }
    0xbf, 0xe3, 0xed, 0x41, // }
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT attribute header
    0xc8, 0xfb, 0x0b, 0x4c, // CRC32 fingerprint
];

/// RFC 5769 §2.4: Binding request with long-term authentication; no
/// FINGERPRINT. USERNAME and REALM are padded with 0x00.
const SAMPLE_REQUEST_LONG_TERM: [u8; 116] = [
    0x00, 0x01, 0x00, 0x60, // Request type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0x78, 0xad, 0x34, 0x33, // }
    0xc6, 0xad, 0x72, 0xc0, // }  Transaction ID
    0x29, 0xda, 0x41, 0x2e, // }
    0x00, 0x06, 0x00, 0x12, // USERNAME attribute header
    0xe3, 0x83, 0x9e, 0xe3, // }
    0x83, 0x88, 0xe3, 0x83, // }
    0xaa, 0xe3, 0x83, 0x83, // }  Username value (18 bytes) and padding (2 bytes)
    0xe3, 0x82, 0xaf, 0xe3, // }
    0x82, 0xb9, 0x00, 0x00, // }
    0x00, 0x15, 0x00, 0x1c, // NONCE attribute header
    0x66, 0x2f, 0x2f, 0x34, // }
    0x39, 0x39, 0x6b, 0x39, // }
    0x35, 0x34, 0x64, 0x36, // }
    0x4f, 0x4c, 0x33, 0x34, // }  Nonce value
    0x6f, 0x4c, 0x39, 0x46, // }
    0x53, 0x54, 0x76, 0x79, // }
    0x36, 0x34, 0x73, 0x41, // }
    0x00, 0x14, 0x00, 0x0b, // REALM attribute header
    0x65, 0x78, 0x61, 0x6d, // }
    0x70, 0x6c, 0x65, 0x2e, // }  Realm value (11 bytes) and padding (1 byte)
    0x6f, 0x72, 0x67, 0x00, // }
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0xf6, 0x70, 0x24, 0x65, // }
    0x6d, 0xd6, 0x4a, 0x3e, // }
    0x02, 0xb8, 0xe0, 0x71, // }  HMAC-SHA1 fingerprint
    0x2e, 0x85, 0xc9, 0xa2, // }
    0x8c, 0xa8, 0x96, 0x66, // }
];

/// The short-term password of §2.1–§2.3.
const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
/// The transaction id of §2.1–§2.3.
const TID_123: TransactionId = TransactionId([0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae]);
/// The transaction id of §2.4.
const TID_4: TransactionId = TransactionId([0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e]);

/// §2.4's USERNAME: "マトリックス" (U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9).
const LT_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// §2.4's password before SASLprep, which maps it to "TheMatrIX".
const LT_PASSWORD: &str = "The\u{00AD}M\u{00AA}tr\u{2168}";
const LT_NONCE: &str = "f//499k954d6OL34oL9FSTvy64sA";
const LT_REALM: &str = "example.org";

fn short_term() -> Vec<u8> {
    let key = short_term_key(SHORT_TERM_PASSWORD).unwrap();
    assert_eq!(key, SHORT_TERM_PASSWORD, "SASLprep leaves the ASCII password unchanged");
    key.as_bytes().to_vec()
}

fn long_term() -> Key {
    Key::long_term(PasswordAlgorithm::Md5, LT_USERNAME, LT_REALM, LT_PASSWORD).unwrap()
}

fn decoded<'a>(m: &Message<'a>) -> Vec<Attribute<'a>> {
    let tid = m.transaction_id();
    m.attributes().map(|a| a.decode(&tid).unwrap()).collect()
}

/// Checks the integrity attributes of a vector: the right key verifies, a
/// wrong one (every single-bit change of the key, and the empty key) fails.
fn check_integrity(m: &Message<'_>, key: &[u8], has_fingerprint: bool) {
    m.verify_message_integrity(key).unwrap();
    assert_eq!(m.verify_integrity(key), Ok(IntegrityAlgorithm::Sha1));
    assert!(m.has_integrity());
    assert_eq!(m.verify_message_integrity(b""), Err(IntegrityError::Mismatch("MESSAGE-INTEGRITY")));
    for i in 0..key.len() * 8 {
        let mut wrong = key.to_vec();
        wrong[i / 8] ^= 1 << (i % 8);
        assert_eq!(m.verify_message_integrity(&wrong), Err(IntegrityError::Mismatch("MESSAGE-INTEGRITY")));
    }
    assert_eq!(m.verify_message_integrity_sha256(key), Err(IntegrityError::Missing("MESSAGE-INTEGRITY-SHA256")));
    if has_fingerprint {
        m.verify_fingerprint().unwrap();
    } else {
        assert_eq!(m.verify_fingerprint(), Err(IntegrityError::Missing("FINGERPRINT")));
    }
}

/// Flipping any bit of any byte covered by the MAC makes the message either
/// unparseable or fail MESSAGE-INTEGRITY (and FINGERPRINT, when present).
fn check_corruption_is_detected(bytes: &[u8], key: &[u8], has_fingerprint: bool) {
    let mi = Message::parse(bytes).unwrap().integrity_offset().unwrap();
    for i in 0..mi + 24 {
        for bit in 0..8 {
            let mut v = bytes.to_vec();
            v[i] ^= 1 << bit;
            let Ok(m) = Message::parse(&v) else { continue };
            assert!(m.verify_message_integrity(key).is_err(), "flip of byte {i} bit {bit} passed MESSAGE-INTEGRITY");
            if has_fingerprint {
                assert!(m.verify_fingerprint().is_err(), "flip of byte {i} bit {bit} passed FINGERPRINT");
            }
        }
    }
}

/// Re-encodes every attribute before MESSAGE-INTEGRITY from its decoded
/// value, then the integrity attributes from the key.
fn reencode_from_parsed(m: &Message<'_>, key: &[u8], padding: u8) -> Vec<u8> {
    let tid = m.transaction_id();
    let mut buf = [0u8; 512];
    let mut b = MessageBuilder::new(&mut buf, m.message_type(), tid).unwrap();
    b.padding_byte(padding);
    for a in m.attributes() {
        match a.ty {
            AttributeType::MESSAGE_INTEGRITY => {
                b.add_message_integrity(key).unwrap();
            }
            AttributeType::FINGERPRINT => {
                b.add_fingerprint().unwrap();
            }
            _ => {
                b.add(&a.decode(&tid).unwrap()).unwrap();
            }
        }
    }
    let n = b.finish();
    buf[..n].to_vec()
}

#[test]
fn sample_request_2_1() {
    let m = Message::parse(&SAMPLE_REQUEST).unwrap();
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.transaction_id(), TID_123);
    assert_eq!(m.len(), 108);
    assert_eq!(
        decoded(&m),
        vec![
            Attribute::Software("STUN test client"),
            Attribute::Priority(0x6e00_01ff),
            Attribute::IceControlled(0x932f_f9b1_5126_3b36),
            Attribute::Username("evtj:h6vY"),
            Attribute::MessageIntegrity(&SAMPLE_REQUEST[80..100].try_into().unwrap()),
            Attribute::Fingerprint(0xe57a_3bcf),
        ]
    );
    let offsets: Vec<_> = m.attributes().map(|a| a.offset).collect();
    assert_eq!(offsets, vec![20, 40, 48, 60, 76, 100]);
    assert_eq!(m.integrity_offset(), Some(76));
    assert_eq!(m.fingerprint_offset(), Some(100));
    assert_eq!(m.unknown_comprehension_required().count(), 0, "PRIORITY (0x0024) is known");
    // The 0x20 padding after USERNAME is not part of the value.
    assert_eq!(m.get(AttributeType::USERNAME).unwrap().value, b"evtj:h6vY");

    let key = short_term();
    check_integrity(&m, &key, true);
    check_corruption_is_detected(&SAMPLE_REQUEST, &key, true);
}

#[test]
fn sample_request_2_1_reencodes_byte_exact() {
    let key = short_term();
    let mut buf = [0u8; 512];
    let ty = relay_core::wire::MessageType::new(Class::Request, Method::BINDING);
    let mut b = MessageBuilder::new(&mut buf, ty, TID_123).unwrap();
    b.padding_byte(0x20);
    b.add(&Attribute::Software("STUN test client"))
        .unwrap()
        .add(&Attribute::Priority(0x6e00_01ff))
        .unwrap()
        .add(&Attribute::IceControlled(0x932f_f9b1_5126_3b36))
        .unwrap()
        .add(&Attribute::Username("evtj:h6vY"))
        .unwrap()
        .add_message_integrity(&key)
        .unwrap()
        .add_fingerprint()
        .unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &SAMPLE_REQUEST[..]);

    let m = Message::parse(&SAMPLE_REQUEST).unwrap();
    assert_eq!(reencode_from_parsed(&m, &key, 0x20), SAMPLE_REQUEST);
    // With the default zero padding only USERNAME's padding, and so the MAC
    // and CRC, differ.
    let zero_padded = reencode_from_parsed(&m, &key, 0);
    assert_eq!(zero_padded.len(), SAMPLE_REQUEST.len());
    assert_eq!(&zero_padded[..73], &SAMPLE_REQUEST[..73]);
    assert_eq!(&zero_padded[73..76], &[0, 0, 0]);
    assert_eq!(&zero_padded[76..80], &SAMPLE_REQUEST[76..80]);
    assert_ne!(&zero_padded[80..100], &SAMPLE_REQUEST[80..100]);
    let z = Message::parse(&zero_padded).unwrap();
    z.verify_message_integrity(&key).unwrap();
    z.verify_fingerprint().unwrap();
}

#[test]
fn sample_ipv4_response_2_2() {
    let m = Message::parse(&SAMPLE_IPV4_RESPONSE).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.transaction_id(), TID_123);
    let mapped: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    assert_eq!(
        decoded(&m),
        vec![
            Attribute::Software("test vector"),
            Attribute::XorMappedAddress(mapped),
            Attribute::MessageIntegrity(&SAMPLE_IPV4_RESPONSE[52..72].try_into().unwrap()),
            Attribute::Fingerprint(0xc07d_4c96),
        ]
    );
    // As MAPPED-ADDRESS the same bytes would read as the masked address.
    let raw = m.get(AttributeType::XOR_MAPPED_ADDRESS).unwrap();
    assert_eq!(
        Attribute::decode(AttributeType::MAPPED_ADDRESS, raw.value, &TID_123).unwrap(),
        Attribute::MappedAddress("225.18.166.67:41287".parse().unwrap())
    );

    let key = short_term();
    check_integrity(&m, &key, true);
    check_corruption_is_detected(&SAMPLE_IPV4_RESPONSE, &key, true);
}

#[test]
fn sample_ipv4_response_2_2_reencodes_byte_exact() {
    let key = short_term();
    let mut buf = [0u8; 512];
    let ty = relay_core::wire::MessageType::new(Class::Success, Method::BINDING);
    let mut b = MessageBuilder::new(&mut buf, ty, TID_123).unwrap();
    b.padding_byte(0x20);
    b.add(&Attribute::Software("test vector"))
        .unwrap()
        .add(&Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap()))
        .unwrap()
        .add_message_integrity(&key)
        .unwrap()
        .add_fingerprint()
        .unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &SAMPLE_IPV4_RESPONSE[..]);

    let m = Message::parse(&SAMPLE_IPV4_RESPONSE).unwrap();
    assert_eq!(reencode_from_parsed(&m, &key, 0x20), SAMPLE_IPV4_RESPONSE);
}

#[test]
fn sample_ipv6_response_2_3() {
    let m = Message::parse(&SAMPLE_IPV6_RESPONSE).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.transaction_id(), TID_123);
    let mapped: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap();
    assert_eq!(
        decoded(&m),
        vec![
            Attribute::Software("test vector"),
            Attribute::XorMappedAddress(mapped),
            Attribute::MessageIntegrity(&SAMPLE_IPV6_RESPONSE[64..84].try_into().unwrap()),
            Attribute::Fingerprint(0xc8fb_0b4c),
        ]
    );
    // The IPv6 mask includes the transaction id: another id gives another address.
    let raw = m.get(AttributeType::XOR_MAPPED_ADDRESS).unwrap();
    assert_ne!(raw.decode(&TID_4).unwrap(), Attribute::XorMappedAddress(mapped));

    let key = short_term();
    check_integrity(&m, &key, true);
    check_corruption_is_detected(&SAMPLE_IPV6_RESPONSE, &key, true);
}

#[test]
fn sample_ipv6_response_2_3_reencodes_byte_exact() {
    let key = short_term();
    let mut buf = [0u8; 512];
    let ty = relay_core::wire::MessageType::new(Class::Success, Method::BINDING);
    let mut b = MessageBuilder::new(&mut buf, ty, TID_123).unwrap();
    b.padding_byte(0x20);
    b.add(&Attribute::Software("test vector"))
        .unwrap()
        .add(&Attribute::XorMappedAddress("[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap()))
        .unwrap()
        .add_message_integrity(&key)
        .unwrap()
        .add_fingerprint()
        .unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &SAMPLE_IPV6_RESPONSE[..]);

    let m = Message::parse(&SAMPLE_IPV6_RESPONSE).unwrap();
    assert_eq!(reencode_from_parsed(&m, &key, 0x20), SAMPLE_IPV6_RESPONSE);
}

#[test]
fn sample_request_long_term_2_4_key() {
    assert_eq!(LT_USERNAME.as_bytes(), &SAMPLE_REQUEST_LONG_TERM[24..42]);
    assert_eq!(relay_core::wire::integrity::saslprep(LT_PASSWORD).unwrap(), "TheMatrIX");
    let key = long_term();
    assert_eq!(key.algorithm(), PasswordAlgorithm::Md5);
    // MD5("マトリックス:example.org:TheMatrIX"), computed independently.
    assert_eq!(
        key.as_bytes(),
        [0xe8, 0xca, 0x7a, 0xd5, 0x9d, 0x5e, 0xb0, 0x51, 0x8e, 0x31, 0x29, 0x11, 0xd2, 0xda, 0xb2, 0xa9]
    );
    assert_eq!(key, Key::long_term(PasswordAlgorithm::Md5, LT_USERNAME, LT_REALM, "TheMatrIX").unwrap());
    // A key for another realm does not verify the vector.
    let m = Message::parse(&SAMPLE_REQUEST_LONG_TERM).unwrap();
    let other_realm = Key::long_term(PasswordAlgorithm::Md5, LT_USERNAME, "example.com", LT_PASSWORD).unwrap();
    assert!(m.verify_message_integrity(other_realm.as_bytes()).is_err());
}

#[test]
fn sample_request_long_term_2_4() {
    let m = Message::parse(&SAMPLE_REQUEST_LONG_TERM).unwrap();
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.transaction_id(), TID_4);
    assert_eq!(
        decoded(&m),
        vec![
            Attribute::Username(LT_USERNAME),
            Attribute::Nonce(LT_NONCE),
            Attribute::Realm(LT_REALM),
            Attribute::MessageIntegrity(&SAMPLE_REQUEST_LONG_TERM[96..116].try_into().unwrap()),
        ]
    );
    assert_eq!(m.fingerprint_offset(), None);
    assert_eq!(m.integrity_offset(), Some(92));

    let key = long_term();
    check_integrity(&m, key.as_bytes(), false);
    check_corruption_is_detected(&SAMPLE_REQUEST_LONG_TERM, key.as_bytes(), false);
    // The short-term key of the other vectors does not verify it.
    assert!(m.verify_message_integrity(&short_term()).is_err());
}

#[test]
fn sample_request_long_term_2_4_reencodes_byte_exact() {
    let key = long_term();
    let mut buf = [0u8; 512];
    let ty = relay_core::wire::MessageType::new(Class::Request, Method::BINDING);
    let mut b = MessageBuilder::new(&mut buf, ty, TID_4).unwrap();
    b.add(&Attribute::Username(LT_USERNAME))
        .unwrap()
        .add(&Attribute::Nonce(LT_NONCE))
        .unwrap()
        .add(&Attribute::Realm(LT_REALM))
        .unwrap()
        .add_message_integrity(key.as_bytes())
        .unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &SAMPLE_REQUEST_LONG_TERM[..]);

    let m = Message::parse(&SAMPLE_REQUEST_LONG_TERM).unwrap();
    assert_eq!(reencode_from_parsed(&m, key.as_bytes(), 0), SAMPLE_REQUEST_LONG_TERM);
}

/// Every proper prefix of every vector is refused, not misread.
#[test]
fn truncated_vectors_are_rejected() {
    for v in [&SAMPLE_REQUEST[..], &SAMPLE_IPV4_RESPONSE, &SAMPLE_IPV6_RESPONSE, &SAMPLE_REQUEST_LONG_TERM] {
        for n in 0..v.len() {
            assert!(Message::parse(&v[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }
}
