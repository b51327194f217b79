//! Telling STUN from ChannelData from anything else by the first byte
//! (RFC 7983 §7), and cutting a TCP/TLS byte stream into frames
//! (RFC 8656 §12.5, RFC 8489 §6.2.2).

use super::channel_data::{self, CHANNEL_DATA_HEADER_LEN};
use super::message::{HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN, be16, be32};

/// What a packet is, judged by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// 0–3: STUN.
    Stun,
    /// 64–127 (channels 0x4000–0x7FFE): TURN ChannelData. RFC 7983 gives
    /// 64–79 to TURN channels and leaves 80–127 unassigned; RFC 5766
    /// clients use channels up to 0x7FFE.
    ChannelData,
    /// Anything else (DTLS, RTP, ZRTP, QUIC, garbage): not for a TURN server.
    Other,
}

/// Classifies a packet by its first byte (RFC 7983 §7).
#[inline]
pub const fn classify(first_byte: u8) -> PacketKind {
    match first_byte {
        0..=3 => PacketKind::Stun,
        64..=127 => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// Classifies a datagram; an empty one is [`PacketKind::Other`].
#[inline]
pub fn classify_packet(buf: &[u8]) -> PacketKind {
    match buf.first() {
        Some(b) => classify(*b),
        None => PacketKind::Other,
    }
}

/// The largest frame a stream can carry, and so the smallest read buffer
/// that can hold any frame: a STUN message of the greatest length the header
/// allows, 20 + 65532 = 65552 bytes. (The largest ChannelData message, a
/// 65535-byte payload padded to four, is 65540 bytes.)
pub const MAX_FRAME_LEN: usize = {
    let channel_data = channel_data::stream_len(0xFFFF);
    if MAX_MESSAGE_LEN > channel_data { MAX_MESSAGE_LEN } else { channel_data }
};

/// Why a stream cannot be framed: the connection should be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The next byte starts neither STUN nor ChannelData.
    #[error("byte 0x{0:02x} starts neither a STUN nor a ChannelData frame")]
    UnknownFrame(u8),
    /// A ChannelData header with a reserved channel number (0x7FFF).
    #[error("ChannelData frame on reserved channel 0x{0:04x}")]
    BadChannel(u16),
    /// A STUN header with a bad magic cookie.
    #[error("STUN frame with a bad magic cookie")]
    BadMagicCookie,
    /// A STUN length that is not a multiple of four.
    #[error("STUN frame length {0} is not a multiple of 4")]
    UnalignedLength(u16),
}

/// The next frame in a stream buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole STUN message of this many bytes starts the buffer.
    Stun(usize),
    /// A whole ChannelData message of this many bytes (padding included)
    /// starts the buffer.
    ChannelData(usize),
    /// The frame is incomplete: at least this many bytes in all are needed.
    NeedMore(usize),
}

/// Finds the next frame at the start of `buf`.
///
/// Returns the frame's total size once all of it is buffered, how many
/// bytes are needed otherwise, or an error meaning the stream is not TURN
/// and the connection should be closed.
pub fn next_frame(buf: &[u8]) -> Result<Frame, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(Frame::NeedMore(CHANNEL_DATA_HEADER_LEN));
    };
    match classify(first) {
        PacketKind::Stun => {
            if buf.len() < 4 {
                return Ok(Frame::NeedMore(HEADER_LEN));
            }
            let len = be16(buf, 2);
            if !len.is_multiple_of(4) {
                return Err(FramingError::UnalignedLength(len));
            }
            if buf.len() >= 8 && be32(buf, 4) != MAGIC_COOKIE {
                return Err(FramingError::BadMagicCookie);
            }
            let total = HEADER_LEN + usize::from(len);
            Ok(if buf.len() >= total { Frame::Stun(total) } else { Frame::NeedMore(total) })
        }
        PacketKind::ChannelData => {
            if buf.len() >= 2 && !channel_data::is_valid_channel(be16(buf, 0)) {
                return Err(FramingError::BadChannel(be16(buf, 0)));
            }
            if buf.len() < CHANNEL_DATA_HEADER_LEN {
                return Ok(Frame::NeedMore(CHANNEL_DATA_HEADER_LEN));
            }
            let total = channel_data::stream_len(usize::from(be16(buf, 2)));
            Ok(if buf.len() >= total { Frame::ChannelData(total) } else { Frame::NeedMore(total) })
        }
        PacketKind::Other => Err(FramingError::UnknownFrame(first)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::channel_data::stream_len;

    #[test]
    fn classify_ranges() {
        assert_eq!(classify(0x00), PacketKind::Stun);
        assert_eq!(classify(0x01), PacketKind::Stun);
        assert_eq!(classify(0x03), PacketKind::Stun);
        assert_eq!(classify(0x04), PacketKind::Other);
        assert_eq!(classify(0x40), PacketKind::ChannelData);
        assert_eq!(classify(0x4F), PacketKind::ChannelData);
        assert_eq!(classify(0x7F), PacketKind::ChannelData);
        assert_eq!(classify(0x16), PacketKind::Other, "DTLS handshake");
        assert_eq!(classify(0x80), PacketKind::Other, "RTP");
        assert_eq!(classify_packet(&[]), PacketKind::Other);
    }

    #[test]
    fn reserved_channel_0x7fff_is_not_a_frame() {
        // Found by the stream_framer fuzz target: the first byte 0x7F is in
        // the ChannelData range, but channel 0x7FFF is reserved, so the frame
        // could not be parsed afterwards.
        assert_eq!(next_frame(&[0x7F, 0xFF, 0x00, 0x00]), Err(FramingError::BadChannel(0x7FFF)));
        assert_eq!(next_frame(&[0x7F, 0xFE, 0x00, 0x00]), Ok(Frame::ChannelData(4)));
    }

    #[test]
    fn framing() {
        assert_eq!(next_frame(&[]), Ok(Frame::NeedMore(4)));
        assert_eq!(next_frame(&[0x00, 0x01]), Ok(Frame::NeedMore(20)));
        let mut stun = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[0; 16]);
        assert_eq!(next_frame(&stun[..10]), Ok(Frame::NeedMore(24)));
        stun.extend_from_slice(&[0x40, 0x00]);
        assert_eq!(next_frame(&stun), Ok(Frame::Stun(24)));
        assert_eq!(next_frame(&stun[24..]), Ok(Frame::NeedMore(4)));
        assert_eq!(next_frame(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]), Ok(Frame::NeedMore(12)));
        assert_eq!(next_frame(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]), Ok(Frame::ChannelData(12)));
        assert_eq!(next_frame(b"\x16\x03\x01\x02\x00"), Err(FramingError::UnknownFrame(0x16)), "TLS on a plain port");
        // "GET " starts with 0x47, inside the ChannelData range: framed by its length ("T ").
        assert_eq!(next_frame(b"GET / HTTP/1.1"), Ok(Frame::NeedMore(stream_len(0x5420))));
        assert_eq!(next_frame(&[0x00, 0x01, 0x00, 0x03]), Err(FramingError::UnalignedLength(3)));
        assert_eq!(next_frame(&[0x00, 0x01, 0x00, 0x04, 0, 0, 0, 0]), Err(FramingError::BadMagicCookie));
    }

    /// Regression: MAX_FRAME_LEN was the largest ChannelData frame (65540),
    /// smaller than the largest STUN frame (65552), so a read buffer of that
    /// size could never complete a long STUN message and `NeedMore` could ask
    /// for more than MAX_FRAME_LEN (found by the `stream_framer` fuzz target).
    #[test]
    fn max_frame_len_bounds_every_frame() {
        assert_eq!(MAX_FRAME_LEN, 65552);
        assert_eq!(MAX_FRAME_LEN, MAX_MESSAGE_LEN);
        assert!(MAX_FRAME_LEN >= stream_len(0xFFFF));

        let mut stun = vec![0u8; MAX_MESSAGE_LEN];
        stun[..8].copy_from_slice(&[0x00, 0x01, 0xFF, 0xFC, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(next_frame(&stun[..HEADER_LEN]), Ok(Frame::NeedMore(MAX_FRAME_LEN)));
        assert_eq!(next_frame(&stun), Ok(Frame::Stun(MAX_FRAME_LEN)));

        let cd = [0x4F, 0xFF, 0xFF, 0xFF];
        assert_eq!(next_frame(&cd), Ok(Frame::NeedMore(stream_len(0xFFFF))));

        // Every length field, for both kinds of frame, stays within the bound.
        for len in 0..=u16::MAX {
            let [l0, l1] = len.to_be_bytes();
            for header in [[0x00, 0x01, l0, l1, 0x21, 0x12, 0xA4, 0x42], [0x40, 0x00, l0, l1, 0, 0, 0, 0]] {
                match next_frame(&header) {
                    Ok(Frame::NeedMore(n) | Frame::Stun(n) | Frame::ChannelData(n)) => assert!(n <= MAX_FRAME_LEN),
                    Err(e) => assert_eq!(e, FramingError::UnalignedLength(len)),
                }
            }
        }
    }
}
