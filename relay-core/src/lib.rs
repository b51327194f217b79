//! `relay-core`: the STUN/TURN protocol with no sockets and no clock.
//!
//! Bytes and time go in, actions come out, so that the io_uring data plane,
//! the portable backend, tests and fuzzers all drive the same code.
//!
//! - [`wire`]: the zero-copy wire format (RFC 8489, RFC 8656, RFC 5780,
//!   RFC 6062), message integrity and TCP/TLS framing.
//! - [`server`]: the TURN server as a sans-IO shard: allocations,
//!   permissions, channels, auth, quotas and peer policy.
//! - [`client`]: sans-IO STUN/TURN clients: RFC 8489 transactions, the
//!   TURN client both `turn-relay probe` and `turn-bench` drive, RFC 5780
//!   NAT behaviour discovery, the probe's TURN round trip.
//! - [`rng`]: the small generator both use for transaction ids.

pub mod client;
pub mod rng;
pub mod server;
pub mod wire;
