//! The probe every measured packet carries at the start of its payload:
//! magic, flow index, sequence number and send time, 24 bytes in network
//! order. The rest of the payload is constant filler. Writing and reading
//! a probe touches only these bytes and allocates nothing.

/// Bytes a probe takes; the smallest payload the harness sends.
pub const PROBE_LEN: usize = 24;

/// Marks a harness probe ("TBP1").
pub const PROBE_MAGIC: u32 = 0x5442_5031;

/// The measured fields of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Index of the flow (allocation) that sent it.
    pub flow: u32,
    /// Sequence number within the flow, from 0.
    pub seq: u64,
    /// Send time: nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Probe {
    /// Writes the probe at the start of `buf` (at least [`PROBE_LEN`] bytes).
    #[inline]
    pub fn write(&self, buf: &mut [u8]) {
        let b = &mut buf[..PROBE_LEN];
        b[0..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.flow.to_be_bytes());
        b[8..16].copy_from_slice(&self.seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a probe from the start of `buf`; `None` if it holds none.
    #[inline]
    pub fn read(buf: &[u8]) -> Option<Probe> {
        let b: &[u8; PROBE_LEN] = buf.get(..PROBE_LEN)?.try_into().ok()?;
        if u32::from_be_bytes([b[0], b[1], b[2], b[3]]) != PROBE_MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(x)
        };
        Some(Probe { flow: u32::from_be_bytes([b[4], b[5], b[6], b[7]]), seq: u64_at(8), sent_ns: u64_at(16) })
    }
}

/// Fills a payload of `size` bytes with the filler pattern (the probe is
/// written over its start for each packet).
pub fn fill(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let mut buf = [0u8; 40];
        fill(&mut buf);
        let p = Probe { flow: 7, seq: u64::MAX - 1, sent_ns: 123_456_789 };
        p.write(&mut buf);
        assert_eq!(Probe::read(&buf), Some(p));
        assert_eq!(Probe::read(&buf[..23]), None);
        buf[0] ^= 1;
        assert_eq!(Probe::read(&buf), None);
    }
}
