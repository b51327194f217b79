//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
//! (RFC 8489 §14.5–§14.7), and the keys they use (RFC 8489 §9, §18.5).
//!
//! Each MAC and the CRC cover the message up to the attribute, with the
//! header's length field rewritten as if the attribute ended the message;
//! they are computed in pieces over the original bytes, never over a copy.
//! Comparisons are constant-time.

use std::borrow::Cow;

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::message::{ATTR_HEADER_LEN, HEADER_LEN, Message, be32};

/// FINGERPRINT is the CRC-32 of the message XOR this value (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Why an integrity or fingerprint check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// The attribute to check is absent.
    #[error("the message has no {0} attribute")]
    Missing(&'static str),
    /// The MAC or CRC does not match.
    #[error("{0} does not match")]
    Mismatch(&'static str),
}

/// Which integrity attribute verified a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntegrityAlgorithm {
    /// MESSAGE-INTEGRITY, HMAC-SHA1.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256, HMAC-SHA256.
    Sha256,
}

/// Feeds `prefix` (a message's first bytes) to `update` with the length field
/// replaced by `adjusted_len`.
#[inline]
fn with_adjusted_length(prefix: &[u8], adjusted_len: u16, mut update: impl FnMut(&[u8])) {
    update(&prefix[0..2]);
    update(&adjusted_len.to_be_bytes());
    update(&prefix[4..]);
}

/// HMAC-SHA1 of `prefix` with its length field set to `adjusted_len`.
pub(crate) fn hmac_sha1_parts(key: &[u8], prefix: &[u8], adjusted_len: u16) -> [u8; 20] {
    // HMAC accepts keys of every length; the error arm cannot happen.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    with_adjusted_length(prefix, adjusted_len, |b| mac.update(b));
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 of `prefix` with its length field set to `adjusted_len`.
pub(crate) fn hmac_sha256_parts(key: &[u8], prefix: &[u8], adjusted_len: u16) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    with_adjusted_length(prefix, adjusted_len, |b| mac.update(b));
    mac.finalize().into_bytes().into()
}

/// The FINGERPRINT value for `prefix` with its length field set to `adjusted_len`.
pub(crate) fn fingerprint_of(prefix: &[u8], adjusted_len: u16) -> u32 {
    let mut h = crc32fast::Hasher::new();
    with_adjusted_length(prefix, adjusted_len, |b| h.update(b));
    h.finalize() ^ FINGERPRINT_XOR
}

/// The (prefix, adjusted length, value) of the attribute at `off`.
fn covered<'a>(msg: &Message<'a>, off: usize) -> (&'a [u8], u16, &'a [u8]) {
    let bytes = msg.as_bytes();
    let len = usize::from(u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]));
    let value = &bytes[off + ATTR_HEADER_LEN..off + ATTR_HEADER_LEN + len];
    // Message::parse bounds the message to 0xFFFC bytes after the header.
    let adjusted = (off + ATTR_HEADER_LEN + len - HEADER_LEN) as u16;
    (&bytes[..off], adjusted, value)
}

impl Message<'_> {
    /// Checks FINGERPRINT (RFC 8489 §14.7).
    pub fn verify_fingerprint(&self) -> Result<(), IntegrityError> {
        let off = self.fingerprint_offset().ok_or(IntegrityError::Missing("FINGERPRINT"))?;
        let (prefix, adjusted, value) = covered(self, off);
        if fingerprint_of(prefix, adjusted) == be32(value, 0) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch("FINGERPRINT"))
        }
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with `key` (RFC 8489 §14.5).
    pub fn verify_message_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let off = self.integrity_offset().ok_or(IntegrityError::Missing("MESSAGE-INTEGRITY"))?;
        let (prefix, adjusted, value) = covered(self, off);
        let mac = hmac_sha1_parts(key, prefix, adjusted);
        if bool::from(mac.ct_eq(value)) { Ok(()) } else { Err(IntegrityError::Mismatch("MESSAGE-INTEGRITY")) }
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 with `key`; a truncated value (16–28
    /// bytes) is compared with the MAC's leftmost bytes (RFC 8489 §14.6).
    pub fn verify_message_integrity_sha256(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let off = self.integrity_sha256_offset().ok_or(IntegrityError::Missing("MESSAGE-INTEGRITY-SHA256"))?;
        let (prefix, adjusted, value) = covered(self, off);
        let mac = hmac_sha256_parts(key, prefix, adjusted);
        if bool::from(mac[..value.len()].ct_eq(value)) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch("MESSAGE-INTEGRITY-SHA256"))
        }
    }

    /// Checks the strongest integrity attribute present: SHA-256 when the
    /// message carries it, else SHA-1. Returns which one was checked.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<IntegrityAlgorithm, IntegrityError> {
        if self.integrity_sha256_offset().is_some() {
            self.verify_message_integrity_sha256(key).map(|()| IntegrityAlgorithm::Sha256)
        } else if self.integrity_offset().is_some() {
            self.verify_message_integrity(key).map(|()| IntegrityAlgorithm::Sha1)
        } else {
            Err(IntegrityError::Missing("MESSAGE-INTEGRITY"))
        }
    }
}

/// The password algorithm of a long-term credential (RFC 8489 §18.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PasswordAlgorithm {
    /// MD5: the RFC 5389 key, and the default when no PASSWORD-ALGORITHM is sent.
    #[default]
    Md5,
    /// SHA-256 (RFC 8489 §18.5.1.2).
    Sha256,
}

impl PasswordAlgorithm {
    /// The wire number.
    pub const fn code(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => super::attr::password_algorithm::MD5,
            PasswordAlgorithm::Sha256 => super::attr::password_algorithm::SHA256,
        }
    }

    /// From the wire number.
    pub const fn from_code(code: u16) -> Option<PasswordAlgorithm> {
        match code {
            super::attr::password_algorithm::MD5 => Some(PasswordAlgorithm::Md5),
            super::attr::password_algorithm::SHA256 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            PasswordAlgorithm::Md5 => 16,
            PasswordAlgorithm::Sha256 => 32,
        }
    }
}

/// Why a string could not be prepared for key derivation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrepError {
    /// The string contains characters SASLprep (RFC 4013) prohibits.
    #[error("string is not allowed by SASLprep")]
    SaslPrep,
    /// The string is not allowed by the PRECIS OpaqueString profile (RFC 8265).
    #[error("string is not allowed by the OpaqueString profile")]
    OpaqueString,
    /// A hexadecimal key has the wrong length or a bad digit.
    #[error("a key must be {0} bytes of hexadecimal")]
    BadHexKey(usize),
}

/// SASLprep (RFC 4013), as RFC 5389 applies it to passwords.
pub fn saslprep(s: &str) -> Result<Cow<'_, str>, PrepError> {
    stringprep::saslprep(s).map_err(|_| PrepError::SaslPrep)
}

/// The PRECIS OpaqueString profile (RFC 8265 §4.2), as RFC 8489 applies it.
pub fn opaque_string(s: &str) -> Result<Cow<'_, str>, PrepError> {
    use precis_profiles::precis_core::profile::PrecisFastInvocation;
    precis_profiles::OpaqueString::enforce(s).map_err(|_| PrepError::OpaqueString)
}

/// A long-term credential key: MD5 (16 bytes) or SHA-256 (32 bytes) of
/// `username:realm:password`. Kept on the stack; `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 32],
    algorithm: PasswordAlgorithm,
}

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Key({:?}, <redacted>)", self.algorithm)
    }
}

impl Key {
    /// The key bytes for HMAC.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algorithm.key_len()]
    }

    /// The algorithm the key was derived with.
    pub fn algorithm(&self) -> PasswordAlgorithm {
        self.algorithm
    }

    /// A key given directly as bytes (e.g. coturn's `user:0x<hex>` lines,
    /// which hold the MD5 key); `None` unless the length fits the algorithm.
    pub fn from_bytes(algorithm: PasswordAlgorithm, bytes: &[u8]) -> Option<Key> {
        if bytes.len() != algorithm.key_len() {
            return None;
        }
        let mut k = [0u8; 32];
        k[..bytes.len()].copy_from_slice(bytes);
        Some(Key { bytes: k, algorithm })
    }

    /// A key from hexadecimal text (with or without a `0x` prefix).
    pub fn from_hex(algorithm: PasswordAlgorithm, hex: &str) -> Result<Key, PrepError> {
        let hex = hex.strip_prefix("0x").unwrap_or(hex).as_bytes();
        let n = algorithm.key_len();
        if hex.len() != 2 * n {
            return Err(PrepError::BadHexKey(n));
        }
        let mut k = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(PrepError::BadHexKey(n));
            k[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Key { bytes: k, algorithm })
    }

    /// Derives the long-term key (RFC 8489 §9.2.2, §18.5.1).
    ///
    /// With MD5 the password is prepared with SASLprep, as RFC 5389 and its
    /// test vectors (RFC 5769 §2.4) do and as deployed clients expect; with
    /// SHA-256, which only RFC 8489 clients negotiate, realm and password are
    /// prepared with OpaqueString. The two agree on every ASCII password.
    pub fn long_term(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Result<Key, PrepError> {
        let mut k = [0u8; 32];
        match algorithm {
            PasswordAlgorithm::Md5 => {
                let password = saslprep(password)?;
                let mut h = Md5::new();
                for part in [username, ":", realm, ":", &password] {
                    h.update(part.as_bytes());
                }
                k[..16].copy_from_slice(&h.finalize());
            }
            PasswordAlgorithm::Sha256 => {
                let realm = opaque_string(realm)?;
                let password = opaque_string(password)?;
                let mut h = Sha256::new();
                for part in [username, ":", &realm, ":", &password] {
                    h.update(part.as_bytes());
                }
                k.copy_from_slice(&h.finalize());
            }
        }
        Ok(Key { bytes: k, algorithm })
    }
}

/// The short-term credential key: the password after SASLprep (RFC 5389
/// §15.4; RFC 8489 §9.1.2 uses OpaqueString, identical for ASCII).
pub fn short_term_key(password: &str) -> Result<Cow<'_, str>, PrepError> {
    saslprep(password)
}

/// USERHASH: SHA-256 of `username:realm`, both OpaqueString-prepared (RFC 8489 §14.4).
pub fn userhash(username: &str, realm: &str) -> Result<[u8; 32], PrepError> {
    let username = opaque_string(username)?;
    let realm = opaque_string(realm)?;
    let mut h = Sha256::new();
    for part in [&*username, ":", &realm] {
        h.update(part.as_bytes());
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_key_matches_rfc_5389_formula() {
        // MD5("user:realm:pass") computed independently.
        let k = Key::long_term(PasswordAlgorithm::Md5, "user", "realm", "pass").unwrap();
        assert_eq!(k.as_bytes().len(), 16);
        let hex: String = k.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8493fbc53ba582fb4c044c456bdc40eb");
        assert_eq!(Key::from_hex(PasswordAlgorithm::Md5, &format!("0x{hex}")).unwrap(), k);
        assert!(Key::from_hex(PasswordAlgorithm::Md5, "0x12").is_err());
        assert!(!format!("{k:?}").contains("84"), "Debug must not reveal key bytes");
    }

    #[test]
    fn sha256_key_length() {
        let k = Key::long_term(PasswordAlgorithm::Sha256, "user", "realm", "pass").unwrap();
        assert_eq!(k.as_bytes().len(), 32);
        assert_ne!(
            &k.as_bytes()[..16],
            Key::long_term(PasswordAlgorithm::Md5, "user", "realm", "pass").unwrap().as_bytes()
        );
    }

    #[test]
    fn saslprep_maps_and_rejects() {
        assert_eq!(saslprep("The\u{00AD}M\u{00AA}tr\u{2168}").unwrap(), "TheMatrIX");
        assert_eq!(saslprep("\u{0007}").unwrap_err(), PrepError::SaslPrep);
        assert!(opaque_string("\u{0007}").is_err());
        assert_eq!(opaque_string("pass word").unwrap(), "pass word");
    }
}
