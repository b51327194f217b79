//! STUN and TURN clients as sans-IO state machines, for the operator's
//! `turn-relay probe` tools: they own no socket and read no clock. The
//! caller binds the sockets, passes in what arrives and the time, sends
//! what comes out, and sleeps until [`Probe::poll_timeout`].
//!
//! - [`transaction`]: RFC 8489 §6.2.1 retransmission timers;
//! - [`stun`]: Binding requests and responses, and [`stun::BindingProbe`],
//!   one Binding transaction (the server-reflexive address and RTT);
//! - [`nat`]: [`nat::NatDiscovery`], RFC 5780 NAT behaviour discovery with
//!   the classic RFC 3489 verdict;
//! - [`turn`]: [`turn::TurnProbe`], allocate → permission → channel → echo
//!   through a peer → release.

use std::net::SocketAddr;
use std::time::Instant;

pub mod nat;
pub mod stun;
pub mod transaction;
pub mod turn;

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

/// What every client machine offers its driver.
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
