//! The TURN/STUN server as a sans-IO state machine: one [`Server`] is one
//! shard's state (allocations, permissions, channels, relay addresses,
//! timers, counters). Bytes and time go in, actions come out; the io_uring
//! data plane, tests and fuzzers all drive the same code.
//!
//! - [`shard`]: [`Server`], request handling, the relay fast path and what
//!   it tells a kernel fast path;
//! - [`table`]: the allocation table and its indexes;
//! - [`relays`]: the shard's pool of relayed addresses;
//! - [`rfc5780`]: NAT behaviour discovery (OTHER-ADDRESS, CHANGE-REQUEST,
//!   RESPONSE-PORT, PADDING);
//! - [`timer`]: the expiry wheel;
//! - [`auth`]: credentials (static users, user file text, TURN REST secrets) and
//!   stateless nonces;
//! - [`policy`]: which peer addresses may be relayed to;
//! - [`own`]: the server's own addresses (listeners, relay addresses);
//! - [`quota`]: the allocation quota book the caller injects (no lock here),
//!   bandwidth caps;
//! - [`stats`]: shard-local counters;
//! - [`error`]: the error responses (code, reason phrase, metric label).
//! - [`alternate`]: ALTERNATE-SERVER: where new clients go when the node drains
//!   or is loaded.

pub mod alternate;
pub mod auth;
pub mod error;
pub mod own;
pub mod policy;
pub mod quota;
pub mod relays;
pub mod rfc5780;
pub mod shard;
pub mod stats;
pub mod table;
pub mod timer;

pub use alternate::Alternate;
pub use error::StunError;
pub use relays::{RelayId, RelayPool};
pub use rfc5780::{Rfc5780, Rfc5780Error};
pub use shard::{
    AllocationInfo, ClientAction, Ending, Event, FastEntry, Flow, PEER_HEADROOM, PEER_TAILROOM, PeerAction, PeerRoute,
    PeerSegment, Server, ServerConfig, ServerParts, Traffic,
};
pub use table::{Client, FiveTuple, Transport};
