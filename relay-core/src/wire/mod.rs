//! The STUN/TURN wire format: zero-copy parsing and allocation-free encoding.
//!
//! - [`message`]: the header and [`Message`], a validated view over a datagram;
//! - [`attr`]: attribute types and typed [`Attribute`] values;
//! - [`builder`]: [`MessageBuilder`], writing into a caller's buffer;
//! - [`integrity`]: MESSAGE-INTEGRITY(-SHA256), FINGERPRINT and credential keys;
//! - [`channel_data`]: the 4-byte ChannelData framing of the fast path;
//! - [`demux`]: first-byte classification and TCP/TLS stream framing;
//! - [`proxy`]: the PROXY protocol header (v1/v2) an L4 load balancer puts before a stream;

pub mod attr;
pub mod builder;
pub mod channel_data;
pub mod demux;
pub mod integrity;
pub mod message;
pub mod proxy;

pub use attr::{AddressFamily, AttrError, Attribute, AttributeType, ErrorCode, RawAttribute};
pub use builder::{EncodeError, MessageBuilder};
pub use channel_data::{ChannelData, ChannelDataError};
pub use demux::{Frame, FramingError, PacketKind, classify, next_frame};
pub use integrity::{IntegrityAlgorithm, IntegrityError, Key, PasswordAlgorithm, PrepError};
pub use message::{Class, HEADER_LEN, MAGIC_COOKIE, Message, MessageType, Method, ParseError, TransactionId};
