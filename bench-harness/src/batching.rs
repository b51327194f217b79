//! Batched UDP in the harness itself: GSO sends and GRO receives on the
//! generator's client sockets, the peers' sockets and the baseline
//! forwarder's (relay-io's [`relay_io::gso`] through its
//! [`relay_io::sys::Batch`]), so that turn-bench is not what limits a
//! server that batches.
//!
//! With [`Batching::GsoGro`] (the default) a burst of equal-size datagrams
//! to one address leaves in one `sendmsg` with `UDP_SEGMENT`, and a socket
//! with `UDP_GRO` may receive several datagrams of one flow in one buffer;
//! every segment of such a buffer is handled as the datagram it was
//! ([`relay_io::gso::segments`]): counted, timed and echoed one by one.
//! [`Batching::PerPacket`] (`--per-packet`) turns both off: one datagram
//! per message, as a browser's WebRTC stack sends and receives them.
//!
//! A kernel without `UDP_SEGMENT` or `UDP_GRO` makes the same run fall back
//! to single datagrams; the counters ([`BatchCounters`]) show what was
//! batched.

use std::fmt;
use std::os::fd::RawFd;

use relay_io::gso::{GsoStats, enable_gro, gso_supported};
use relay_io::sys::Batch;
use serde::Serialize;

/// How a part of the harness sends and receives UDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Batching {
    /// GSO sends (equal-size datagrams to one address in one message) and
    /// GRO receives (several datagrams in one buffer).
    #[default]
    GsoGro,
    /// One datagram per message each way (`--per-packet`).
    PerPacket,
}

impl Batching {
    /// GSO and GRO are on.
    pub fn is_on(self) -> bool {
        self == Batching::GsoGro
    }

    /// `gso-gro` or `per-packet`, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Batching::GsoGro => "gso-gro",
            Batching::PerPacket => "per-packet",
        }
    }
}

impl fmt::Display for Batching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Batching::GsoGro => "GSO/GRO",
            Batching::PerPacket => "per packet",
        })
    }
}

/// What was batched (relay-io's [`GsoStats`], for reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounters {
    /// GSO sends, each carrying two or more datagrams.
    pub gso_sends: u64,
    /// Datagrams that left in a GSO send.
    pub gso_datagrams: u64,
    /// Datagrams that left alone.
    pub single_datagrams: u64,
    /// Sockets that fell back to single sends (the kernel or device
    /// refused GSO).
    pub gso_fallbacks: u64,
    /// Receives that held more than one datagram (GRO).
    pub gro_buffers: u64,
    /// Datagrams that arrived in them.
    pub gro_datagrams: u64,
}

impl From<GsoStats> for BatchCounters {
    fn from(s: GsoStats) -> Self {
        BatchCounters {
            gso_sends: s.gso_sends,
            gso_datagrams: s.batched,
            single_datagrams: s.single,
            gso_fallbacks: s.fallbacks,
            gro_buffers: s.gro_buffers,
            gro_datagrams: s.gro_segments,
        }
    }
}

impl BatchCounters {
    /// Adds `o` to these counters.
    pub fn add(&mut self, o: &BatchCounters) {
        self.gso_sends += o.gso_sends;
        self.gso_datagrams += o.gso_datagrams;
        self.single_datagrams += o.single_datagrams;
        self.gso_fallbacks += o.gso_fallbacks;
        self.gro_buffers += o.gro_buffers;
        self.gro_datagrams += o.gro_datagrams;
    }

    /// Datagrams per GSO send (0 when none).
    pub fn per_gso_send(&self) -> f64 {
        if self.gso_sends > 0 { self.gso_datagrams as f64 / self.gso_sends as f64 } else { 0.0 }
    }

    /// Datagrams per GRO buffer (0 when none).
    pub fn per_gro_buffer(&self) -> f64 {
        if self.gro_buffers > 0 { self.gro_datagrams as f64 / self.gro_buffers as f64 } else { 0.0 }
    }
}

impl fmt::Display for BatchCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::stats::group;
        write!(
            f,
            "{} GSO sends of {:.1} datagrams, {} sent alone; {} GRO receives of {:.1}",
            group(self.gso_sends),
            self.per_gso_send(),
            group(self.single_datagrams),
            group(self.gro_buffers),
            self.per_gro_buffer()
        )?;
        if self.gso_fallbacks > 0 {
            write!(f, "; {} socket(s) fell back to single sends", self.gso_fallbacks)?;
        }
        Ok(())
    }
}

/// Turns `UDP_GRO` on for socket `fd` when `batching` is on; returns
/// whether the kernel took it. Do it before anything is sent to the socket:
/// datagrams queued before are not coalesced.
pub fn enable(fd: RawFd, batching: Batching) -> bool {
    batching.is_on() && enable_gro(fd).is_ok()
}

/// Allows GSO sends from socket `fd` through `tx` when `batching` is on and
/// the kernel knows `UDP_SEGMENT`; else that socket sends one datagram per
/// message (counted as a fallback when batching was asked for).
pub fn allow_gso(fd: RawFd, batching: Batching, tx: &mut Batch) {
    if batching.is_on() && !gso_supported(fd) {
        tx.coalescer().fall_back(fd);
    }
}

/// Flushes `batch`, into which `queued` datagrams were queued since the
/// last flush; returns (sent, failed) datagrams. When more datagrams are
/// queued than the batch holds (a GRO buffer's segments can be 64 per
/// receive), [`Batch`] sends the full queue on its own and reports only
/// that send's failures at the next flush, not its sent datagrams: every
/// datagram queued is either sent or failed, so the sent ones are counted
/// as `queued - failed`.
pub fn flush(batch: &mut Batch, queued: usize) -> (usize, usize) {
    let (_, failed) = batch.flush();
    (queued.saturating_sub(failed), failed)
}

/// A batch set for `batching`: GSO sends on, and GRO receives when `gro`
/// (its slots must then hold 64 KiB).
pub fn batch(n: usize, slot_len: usize, reply_len: usize, batching: Batching, gro: bool) -> Batch {
    let mut b = Batch::new(n, slot_len, reply_len);
    if batching.is_on() {
        b.set_gso(true);
        if gro {
            debug_assert!(slot_len >= 65_536, "a GRO buffer needs 64 KiB");
            b.set_gro(true);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counters() {
        assert_eq!(Batching::default(), Batching::GsoGro);
        assert_eq!((Batching::GsoGro.name(), Batching::PerPacket.name()), ("gso-gro", "per-packet"));
        assert_eq!(serde_json::to_value(Batching::PerPacket).unwrap(), "per-packet");
        let c = BatchCounters::from(GsoStats {
            batched: 64,
            single: 3,
            gso_sends: 2,
            fallbacks: 0,
            gro_segments: 30,
            gro_buffers: 3,
        });
        assert_eq!((c.per_gso_send(), c.per_gro_buffer()), (32.0, 10.0));
        assert_eq!(c.to_string(), "2 GSO sends of 32.0 datagrams, 3 sent alone; 3 GRO receives of 10.0");
        assert_eq!(BatchCounters::default().per_gso_send(), 0.0);
    }
}
