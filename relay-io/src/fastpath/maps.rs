//! The fast path's map layouts: `#[repr(C)]` twins of `bpf/fastpath.h`
//! (a test checks their sizes against the object's BTF-declared maps).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// An IP address (IPv4 as `::ffff:a.b.c.d`) and port, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FpAddr {
    /// The address, 16 bytes.
    pub ip: [u8; 16],
    /// The port, network byte order.
    pub port: [u8; 2],
    /// Zero.
    pub pad: [u8; 2],
}

impl FpAddr {
    /// The map form of `a`.
    pub fn of(a: SocketAddr) -> FpAddr {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        FpAddr { ip: ip.octets(), port: a.port().to_be_bytes(), pad: [0; 2] }
    }

    /// The socket address back.
    pub fn addr(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
        SocketAddr::new(ip, u16::from_be_bytes(self.port))
    }
}

/// Key of `fp_channels`: ChannelData from a client to a listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FpChanKey {
    /// The client (source).
    pub client: FpAddr,
    /// The listener (destination).
    pub listener: FpAddr,
    /// Channel number, network order.
    pub channel: [u8; 2],
    /// Zero.
    pub pad: [u8; 2],
}

/// Value of `fp_channels`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpChanVal {
    /// The relay address (new source).
    pub relay: FpAddr,
    /// The peer (new destination).
    pub peer: FpAddr,
    /// Index into `fp_slots`.
    pub slot: u32,
    /// [`PEER_IS_RELAY`] or zero.
    pub flags: u32,
}

/// `FpChanVal::flags`: the peer is one of the server's relay addresses
/// (only then does the program look for a channel bound back).
pub const PEER_IS_RELAY: u32 = 1;

/// Key of `fp_peers`: UDP from a peer to a relay address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FpPeerKey {
    /// The peer (source).
    pub peer: FpAddr,
    /// The relay address (destination).
    pub relay: FpAddr,
}

/// Value of `fp_peers`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpPeerVal {
    /// The client (new destination).
    pub client: FpAddr,
    /// The listener (new source).
    pub listener: FpAddr,
    /// Channel number, network order.
    pub channel: [u8; 2],
    /// Zero.
    pub pad: u16,
    /// Index into `fp_slots`.
    pub slot: u32,
}

/// One slot of `fp_slots` (per CPU): what a channel binding relayed in the
/// kernel. Bytes are payload bytes, as the shards count them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpSlotStats {
    /// Datagrams relayed client → peer.
    pub to_peer_packets: u64,
    /// Their payload bytes.
    pub to_peer_bytes: u64,
    /// Datagrams relayed peer → client.
    pub to_client_packets: u64,
    /// Their payload bytes.
    pub to_client_bytes: u64,
}

impl FpSlotStats {
    /// Field-wise sum.
    pub fn add(&mut self, o: &FpSlotStats) {
        self.to_peer_packets += o.to_peer_packets;
        self.to_peer_bytes += o.to_peer_bytes;
        self.to_client_packets += o.to_client_packets;
        self.to_client_bytes += o.to_client_bytes;
    }

    /// Field-wise `self - earlier` (counters only grow while a slot is held).
    pub fn since(&self, earlier: &FpSlotStats) -> FpSlotStats {
        FpSlotStats {
            to_peer_packets: self.to_peer_packets.saturating_sub(earlier.to_peer_packets),
            to_peer_bytes: self.to_peer_bytes.saturating_sub(earlier.to_peer_bytes),
            to_client_packets: self.to_client_packets.saturating_sub(earlier.to_client_packets),
            to_client_bytes: self.to_client_bytes.saturating_sub(earlier.to_client_bytes),
        }
    }
}

// SAFETY: plain #[repr(C)] structs of integers and byte arrays with no
// implicit padding (every gap is an explicit field), so every bit pattern
// is a valid value and the kernel may read and write them as bytes.
unsafe impl aya::Pod for FpAddr {}
// SAFETY: as above.
unsafe impl aya::Pod for FpChanKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FpChanVal {}
// SAFETY: as above.
unsafe impl aya::Pod for FpPeerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FpPeerVal {}
// SAFETY: as above.
unsafe impl aya::Pod for FpSlotStats {}

/// What the program did with a packet: `fp_counters`' indexes
/// (`enum fp_counter` in `bpf/fastpath.h`), by metric label.
pub const COUNTERS: [&str; 20] = [
    "to_peer",
    "to_client",
    "relay_to_relay",
    "not_udp",
    "fragment",
    "ip_options",
    "malformed",
    "no_entry",
    "padded",
    "zero_checksum",
    "partial_checksum",
    "mtu",
    "no_route",
    "no_neighbour",
    "forwarding_disabled",
    "local_destination",
    "no_headroom",
    "egress_not_attached",
    "too_large",
    "coalesced",
];

/// Index of the first "passed to the stack" counter in [`COUNTERS`].
pub const FIRST_PASS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(size_of::<FpAddr>(), 20);
        assert_eq!(size_of::<FpChanKey>(), 44);
        assert_eq!(size_of::<FpChanVal>(), 48);
        assert_eq!(size_of::<FpPeerKey>(), 40);
        assert_eq!(size_of::<FpPeerVal>(), 48);
        assert_eq!(size_of::<FpSlotStats>(), 32);
        // The enum's members in order, each with the label at its index.
        let header = include_str!("../../bpf/fastpath.h");
        let members: Vec<&str> = header
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("FP_") && l.contains(','))
            .map(|l| l.split([',', ' ']).next().unwrap())
            .collect();
        let expected = [
            ("FP_TO_PEER", "to_peer"),
            ("FP_TO_CLIENT", "to_client"),
            ("FP_RELAY_TO_RELAY", "relay_to_relay"),
            ("FP_PASS_NOT_UDP", "not_udp"),
            ("FP_PASS_FRAGMENT", "fragment"),
            ("FP_PASS_IP_OPTIONS", "ip_options"),
            ("FP_PASS_MALFORMED", "malformed"),
            ("FP_PASS_NO_ENTRY", "no_entry"),
            ("FP_PASS_PADDED", "padded"),
            ("FP_PASS_ZERO_CSUM", "zero_checksum"),
            ("FP_PASS_PARTIAL_CSUM", "partial_checksum"),
            ("FP_PASS_MTU", "mtu"),
            ("FP_PASS_NO_ROUTE", "no_route"),
            ("FP_PASS_NO_NEIGH", "no_neighbour"),
            ("FP_PASS_FWD_DISABLED", "forwarding_disabled"),
            ("FP_PASS_LOCAL", "local_destination"),
            ("FP_PASS_ADJUST", "no_headroom"),
            ("FP_PASS_EGRESS", "egress_not_attached"),
            ("FP_PASS_TOO_LARGE", "too_large"),
            ("FP_PASS_COALESCED", "coalesced"),
            ("FP_COUNTERS", ""),
        ];
        assert_eq!(members, expected.map(|(m, _)| m), "the header's counters, in order");
        assert_eq!(COUNTERS[..], expected[..COUNTERS.len()].iter().map(|(_, l)| *l).collect::<Vec<_>>()[..]);
        assert_eq!(members[FIRST_PASS], "FP_PASS_NOT_UDP");
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["192.0.2.1:3478", "[2001:db8::1]:49152", "[::ffff:192.0.2.9]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            let back = FpAddr::of(a).addr();
            assert_eq!(back.port(), a.port());
            assert_eq!(back.ip().to_canonical(), a.ip().to_canonical());
        }
        let v4 = FpAddr::of("192.0.2.1:258".parse().unwrap());
        assert_eq!(&v4.ip[10..], &[0xff, 0xff, 192, 0, 2, 1]);
        assert_eq!(v4.port, [1, 2]);
    }
}
