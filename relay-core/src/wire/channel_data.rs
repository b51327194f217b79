//! ChannelData messages (RFC 8656 §12.4): a 4-byte header, channel number
//! and length, in front of the application data.
//!
//! These functions are the fast path: fixed offsets, no allocation, no copy.
//! Over UDP the payload may be followed by up to three bytes of padding,
//! which the receiver ignores; over TCP and TLS every message is padded to a
//! multiple of four (RFC 8656 §12.5).

/// Length of the ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Lowest channel number a client may bind (RFC 8656 §12).
pub const MIN_CHANNEL: u16 = 0x4000;
/// Highest channel number a client may bind: 0x7FFE, as RFC 5766 §11
/// allowed. RFC 8656 §12 narrowed the range to 0x4FFF and reserved the
/// rest, but deployed clients (coturn's `turnutils_uclient`, older stacks)
/// still pick numbers up to 0x7FFE, and their first bytes (0x50–0x7F) belong
/// to no other protocol in RFC 7983, so accepting them costs nothing.
pub const MAX_CHANNEL: u16 = 0x7FFE;

/// True for channel numbers a client may bind.
#[inline]
pub const fn is_valid_channel(channel: u16) -> bool {
    channel >= MIN_CHANNEL && channel <= MAX_CHANNEL
}

/// Why bytes are not a ChannelData message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    /// Fewer than the 4 header bytes.
    #[error("{0} bytes is shorter than the ChannelData header")]
    TooShort(usize),
    /// The channel number is outside 0x4000–0x4FFF.
    #[error("channel number 0x{0:04x} is outside 0x4000-0x7ffe")]
    BadChannel(u16),
    /// The length field runs past the data present.
    #[error("ChannelData length {declared} exceeds the {available} bytes present")]
    Truncated {
        /// The length field's value.
        declared: u16,
        /// Payload bytes present.
        available: usize,
    },
    /// More than three bytes follow the payload (UDP padding is at most 3).
    #[error("{0} bytes follow the ChannelData payload")]
    TrailingBytes(usize),
    /// The destination buffer cannot hold the message.
    #[error("buffer too small for ChannelData")]
    BufferTooSmall,
}

/// A parsed ChannelData message borrowing the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number.
    pub channel: u16,
    /// The application data, without padding.
    pub payload: &'a [u8],
}

/// Reads the header: `(channel, payload length)`; checks only the channel range.
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<(u16, u16), ChannelDataError> {
    let [c0, c1, l0, l1, ..] = *buf else {
        return Err(ChannelDataError::TooShort(buf.len()));
    };
    let channel = u16::from_be_bytes([c0, c1]);
    if !is_valid_channel(channel) {
        return Err(ChannelDataError::BadChannel(channel));
    }
    Ok((channel, u16::from_be_bytes([l0, l1])))
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData datagram (UDP): the payload must be present,
    /// followed by at most three bytes of padding.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<ChannelData<'a>, ChannelDataError> {
        let (channel, len) = parse_header(buf)?;
        let available = buf.len() - CHANNEL_DATA_HEADER_LEN;
        let len = usize::from(len);
        if len > available {
            return Err(ChannelDataError::Truncated { declared: len as u16, available });
        }
        if available - len > 3 {
            return Err(ChannelDataError::TrailingBytes(available - len));
        }
        Ok(ChannelData { channel, payload: &buf[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len] })
    }
}

/// Writes a ChannelData header for `payload_len` bytes into `out[..4]`.
#[inline]
pub fn write_header(out: &mut [u8], channel: u16, payload_len: u16) -> Result<(), ChannelDataError> {
    let Some(h) = out.get_mut(..CHANNEL_DATA_HEADER_LEN) else {
        return Err(ChannelDataError::BufferTooSmall);
    };
    h[..2].copy_from_slice(&channel.to_be_bytes());
    h[2..].copy_from_slice(&payload_len.to_be_bytes());
    Ok(())
}

/// The length on a stream (TCP/TLS) of a ChannelData message carrying
/// `payload_len` bytes: header plus payload, padded to four.
#[inline]
pub const fn stream_len(payload_len: usize) -> usize {
    (CHANNEL_DATA_HEADER_LEN + payload_len + 3) & !3
}

/// Writes a whole ChannelData message (header, payload and, when `padded`,
/// zero padding to a multiple of four) into `out`; returns its length.
pub fn encode(out: &mut [u8], channel: u16, payload: &[u8], padded: bool) -> Result<usize, ChannelDataError> {
    let len = u16::try_from(payload.len()).map_err(|_| ChannelDataError::BufferTooSmall)?;
    let total = if padded { stream_len(payload.len()) } else { CHANNEL_DATA_HEADER_LEN + payload.len() };
    let dst = out.get_mut(..total).ok_or(ChannelDataError::BufferTooSmall)?;
    write_header(dst, channel, len)?;
    let end = CHANNEL_DATA_HEADER_LEN + payload.len();
    dst[CHANNEL_DATA_HEADER_LEN..end].copy_from_slice(payload);
    dst[end..].fill(0);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let mut buf = [0u8; 16];
        let n = encode(&mut buf, 0x4001, b"hello", false).unwrap();
        assert_eq!(&buf[..n], b"\x40\x01\x00\x05hello");
        let cd = ChannelData::parse(&buf[..n]).unwrap();
        assert_eq!(cd, ChannelData { channel: 0x4001, payload: b"hello" });
        let n = encode(&mut buf, 0x4FFF, b"hello", true).unwrap();
        assert_eq!(n, 12);
        assert_eq!(ChannelData::parse(&buf[..n]).unwrap().payload, b"hello", "UDP padding is ignored");
    }

    #[test]
    fn errors() {
        assert_eq!(ChannelData::parse(b"\x40\x00\x00"), Err(ChannelDataError::TooShort(3)));
        assert_eq!(ChannelData::parse(b"\x7f\xff\x00\x00"), Err(ChannelDataError::BadChannel(0x7fff)));
        assert_eq!(ChannelData::parse(b"\x80\x00\x00\x00"), Err(ChannelDataError::BadChannel(0x8000)));
        assert!(ChannelData::parse(b"\x50\x00\x00\x00").is_ok(), "RFC 5766 channel numbers are accepted");
        assert_eq!(ChannelData::parse(b"\x3f\xff\x00\x00"), Err(ChannelDataError::BadChannel(0x3fff)));
        assert_eq!(
            ChannelData::parse(b"\x40\x00\x00\x05abc"),
            Err(ChannelDataError::Truncated { declared: 5, available: 3 })
        );
        assert_eq!(ChannelData::parse(b"\x40\x00\x00\x00abcd"), Err(ChannelDataError::TrailingBytes(4)));
        assert_eq!(encode(&mut [0u8; 6], 0x4000, b"abc", false), Err(ChannelDataError::BufferTooSmall));
        assert_eq!(stream_len(0), 4);
        assert_eq!(stream_len(1), 8);
        assert_eq!(stream_len(4), 8);
    }
}
