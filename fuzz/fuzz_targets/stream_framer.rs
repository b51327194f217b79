//! Fuzzes the TCP/TLS stream framer (`demux::next_frame`) as a server's
//! read loop drives it.
//!
//! The first input byte picks a read size; the rest is the byte stream. The
//! stream is framed twice: all at once, and fed in reads of that size into a
//! growing buffer, consuming each complete frame. Invariants:
//! - a complete frame is no larger than the buffer, nor than `MAX_FRAME_LEN`,
//!   and is a multiple of four;
//! - `NeedMore(n)` always asks for more than is buffered (so a read loop
//!   makes progress) and never more than `MAX_FRAME_LEN` (so a buffer of
//!   that size always suffices);
//! - a STUN frame's header agrees with `Message::parse` (which may still
//!   refuse its attributes); a ChannelData frame always parses, and its
//!   padded length is the frame's length;
//! - both ways of feeding the stream find the same frames and end the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::wire::channel_data::{self, CHANNEL_DATA_HEADER_LEN};
use relay_core::wire::demux::{MAX_FRAME_LEN, PacketKind, classify};
use relay_core::wire::message::MAX_MESSAGE_LEN;
use relay_core::wire::{ChannelData, Frame, FramingError, HEADER_LEN, Message, ParseError, next_frame};

/// How framing a stream ended: needing more bytes, or with an error.
#[derive(Debug, PartialEq, Eq)]
enum End {
    NeedMore(usize),
    Error(FramingError),
}

/// A complete frame: its kind and length.
type Found = (PacketKind, usize);

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, stream)) = data.split_first() else { return };
    let read_size = usize::from(read_size) + 1;

    let mut at_once = Vec::new();
    let end_at_once = frame_all(stream, &mut at_once);

    // A read buffer: frames are consumed from `start`, which is compacted
    // away before each read.
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut in_reads = Vec::new();
    let mut end_in_reads = None;
    'reads: for read in stream.chunks(read_size) {
        buf.drain(..start);
        start = 0;
        buf.extend_from_slice(read);
        loop {
            match step(&buf[start..]) {
                Ok(Some(found)) => {
                    in_reads.push(found);
                    start += found.1;
                }
                Ok(None) => continue 'reads,
                Err(e) => {
                    end_in_reads = Some(End::Error(e));
                    break 'reads;
                }
            }
        }
    }
    let end_in_reads = match end_in_reads {
        Some(e) => e,
        None => match next_frame(&buf[start..]) {
            Ok(Frame::NeedMore(n)) => End::NeedMore(n),
            other => panic!("after the last read: {other:?}"),
        },
    };
    assert_eq!(in_reads, at_once);
    assert_eq!(end_in_reads, end_at_once);
});

/// Frames the whole of `stream`, pushing each complete frame.
fn frame_all(mut stream: &[u8], found: &mut Vec<Found>) -> End {
    loop {
        match step(stream) {
            Ok(Some(f)) => {
                found.push(f);
                stream = &stream[f.1..];
            }
            Ok(None) => match next_frame(stream) {
                Ok(Frame::NeedMore(n)) => return End::NeedMore(n),
                other => unreachable!("{other:?}"),
            },
            Err(e) => return End::Error(e),
        }
    }
}

/// One call of the framer on `buf`, with every invariant checked: the
/// complete frame at its start, `None` when more bytes are needed, or the
/// framing error.
fn step(buf: &[u8]) -> Result<Option<Found>, FramingError> {
    match next_frame(buf)? {
        Frame::NeedMore(n) => {
            assert!(n > buf.len(), "NeedMore({n}) with {} bytes buffered", buf.len());
            assert!(n <= MAX_FRAME_LEN, "NeedMore({n}) exceeds MAX_FRAME_LEN {MAX_FRAME_LEN}");
            Ok(None)
        }
        Frame::Stun(n) => {
            check_size(buf, n);
            assert_eq!(classify(buf[0]), PacketKind::Stun);
            assert!((HEADER_LEN..=MAX_MESSAGE_LEN).contains(&n));
            match Message::parse(&buf[..n]) {
                Ok(m) => assert_eq!(m.len(), n),
                // The framer checked the header; only attributes can be wrong.
                Err(e) => assert!(
                    matches!(
                        e,
                        ParseError::AttributeOverflow { .. }
                            | ParseError::BadIntegrityLength { .. }
                            | ParseError::FingerprintNotLast
                    ),
                    "framer accepted a header Message::parse refuses: {e:?}"
                ),
            }
            Ok(Some((PacketKind::Stun, n)))
        }
        Frame::ChannelData(n) => {
            check_size(buf, n);
            assert_eq!(classify(buf[0]), PacketKind::ChannelData);
            let cd = ChannelData::parse(&buf[..n]).expect("a framed ChannelData message parses");
            assert!(cd.payload.len() + CHANNEL_DATA_HEADER_LEN <= n);
            assert_eq!(channel_data::stream_len(cd.payload.len()), n);
            Ok(Some((PacketKind::ChannelData, n)))
        }
    }
}

fn check_size(buf: &[u8], n: usize) {
    assert!(n <= buf.len(), "frame of {n} bytes in a buffer of {}", buf.len());
    assert!(n <= MAX_FRAME_LEN, "frame of {n} bytes exceeds MAX_FRAME_LEN {MAX_FRAME_LEN}");
    assert!(n > 0 && n.is_multiple_of(4));
}
