//! STUN and TURN clients as sans-IO state machines: they own no socket and
//! read no clock. The caller binds the sockets, passes in what arrives and
//! the time, sends what comes out, and sleeps until the next deadline.
//! `turn-relay probe` and `turn-bench` both drive these.
//!
//! - [`transaction`]: RFC 8489 §6.2 timers (retransmissions over UDP, Ti
//!   over TCP and TLS);
//! - [`session`]: [`TurnSession`], the TURN client of one 5-tuple:
//!   Allocate, Refresh, CreatePermission and ChannelBind with the
//!   long-term credential exchange (401, 438; MD5 or SHA-256 keys) and
//!   responses' MESSAGE-INTEGRITY checked;
//! - [`credentials`]: long-term and TURN REST API credentials;
//! - [`data`]: Send indications out, ChannelData and Data indications in;
//! - [`stun`]: Binding requests and responses, and [`stun::BindingProbe`],
//!   one Binding transaction (the server-reflexive address and RTT);
//! - [`nat`]: [`nat::NatDiscovery`], RFC 5780 NAT behaviour discovery with
//!   the classic RFC 3489 verdict;
//! - [`turn`]: [`turn::TurnProbe`], allocate → permission → channel → echo
//!   through a peer → release, on a [`TurnSession`].
//!
//! The machines of the probe tools implement [`Probe`]; [`TurnSession`],
//! driven by a load generator's own loops, has its own narrower interface.

use std::net::SocketAddr;
use std::time::Instant;

pub mod credentials;
pub mod data;
pub mod error;
pub mod nat;
pub mod session;
pub mod stun;
pub mod transaction;
pub mod turn;

pub use credentials::Credentials;
pub use error::ClientError;
pub use session::{ClientConfig, Handled, Poll, Request, Success, TurnSession};
pub use transaction::{RetransmitPolicy, Transaction};

/// A datagram to send: `out[..len]` from socket `socket` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Which of the caller's sockets sends it (an index the machine
    /// documents).
    pub socket: usize,
    /// The destination.
    pub to: SocketAddr,
    /// Bytes written to the output buffer.
    pub len: usize,
}

/// What every probe machine offers its driver.
pub trait Probe {
    /// The next datagram to send, written into `out` (1500 bytes suffice
    /// unless a request carries PADDING, 64 KiB always do).
    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit>;
    /// A datagram received on socket `socket` from `from`.
    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, packet: &[u8]);
    /// When [`Probe::handle_timeout`] is due; `None` once done.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Lets time pass: retransmissions and timeouts.
    fn handle_timeout(&mut self, now: Instant);
    /// True when the probe has finished (its report is ready).
    fn is_done(&self) -> bool;
}

/// The generator for transaction ids (seeded by the caller from the OS).
pub(crate) use crate::rng::SplitMix64 as Rng;
