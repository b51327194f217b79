//! The kernel fast path's header rewriting, run in the kernel on frames
//! built here (`BPF_PROG_TEST_RUN`: the real program, with the route
//! lookup replaced by "bounce it back"), checked against a reference
//! computation: every field, the IPv4 header checksum and the full UDP
//! checksum over pseudo-header and payload. Property-tested over
//! addresses of both families (and mixed), ports, channels and payload
//! sizes 0 to 1400; malformed and unhandled frames must pass untouched.
//! Each test runs the XDP program and the TC classifier (the same C code
//! at both hooks; TC's verdicts are reported as XDP's).

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use relay_io::fastpath::{COUNTERS, TestProgram, verdict};

const SMAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DMAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn sum16(bytes: &[u8]) -> u64 {
    bytes.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The UDP checksum of `udp` (header with a zero checksum field, and
/// payload) between `src` and `dst`, as RFC 768 / RFC 8200 define it.
fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut s = sum16(&ip_bytes(src)) + sum16(&ip_bytes(dst)) + 17 + udp.len() as u64;
    let mut copy = udp.to_vec();
    copy[6] = 0;
    copy[7] = 0;
    s += sum16(&copy);
    let c = !fold(s);
    if c == 0 { 0xffff } else { c }
}

/// An Ethernet frame carrying one UDP datagram, checksummed (or with a
/// zero checksum when `zero_csum`).
fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8], zero_csum: bool) -> Vec<u8> {
    assert_eq!(src.is_ipv4(), dst.is_ipv4());
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    if !zero_csum {
        let c = udp_checksum(src.ip(), dst.ip(), &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = Vec::new();
    f.extend_from_slice(&DMAC);
    f.extend_from_slice(&SMAC);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0xb8];
            ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 61, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = !fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x6b, 0x80, 0, 0]);
            f.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[17, 61]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!(),
    }
    f.extend_from_slice(&udp);
    f
}

/// A frame the program wrote, checked field by field: returns its UDP
/// payload. Panics (failing the test) on any header or checksum error.
fn check_frame(f: &[u8], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    assert_eq!(&f[0..6], &SMAC, "destination MAC: the sender's (bounced)");
    assert_eq!(&f[6..12], &DMAC);
    let (l4, tos) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            let ip = &f[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(fold(sum16(ip)), 0xffff, "IPv4 header checksum");
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), f.len() - 14, "IPv4 total length");
            assert_eq!(&ip[6..8], &[0x40, 0], "DF, not a fragment");
            assert_eq!((ip[8], ip[9]), (64, 17), "TTL, protocol");
            assert_eq!(&ip[12..16], &s.octets());
            assert_eq!(&ip[16..20], &d.octets());
            (34, ip[1])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(&f[12..14], &[0x86, 0xdd]);
            let ip = &f[14..54];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), f.len() - 54, "IPv6 payload length");
            assert_eq!((ip[6], ip[7]), (17, 64), "next header, hop limit");
            assert_eq!(&ip[8..24], &s.octets());
            assert_eq!(&ip[24..40], &d.octets());
            (54, (ip[0] << 4) | (ip[1] >> 4))
        }
        _ => panic!("mixed families in one header"),
    };
    assert_eq!(tos, 0xb8, "DSCP/ECN kept");
    let udp = &f[l4..];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), src.port());
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), dst.port());
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len(), "UDP length");
    let got = u16::from_be_bytes([udp[6], udp[7]]);
    assert_ne!(got, 0, "a checksum in, a checksum out");
    assert_eq!(got, udp_checksum(src.ip(), dst.ip(), udp), "UDP checksum");
    udp[8..].to_vec()
}

/// [`check_frame`] for an IPv4 frame sent without a UDP checksum: it must
/// leave without one. Returns the payload.
fn check_frame_no_checksum(f: &[u8], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    assert_eq!(&f[40..42], &[0, 0], "no checksum in, none out");
    let mut with = f.to_vec();
    let c = udp_checksum(src.ip(), dst.ip(), &with[34..]);
    with[40..42].copy_from_slice(&c.to_be_bytes());
    check_frame(&with, src, dst)
}

/// True when a frame's UDP checksum field holds exactly the folded
/// pseudo-header sum: what a local sender leaves for checksum offload
/// (CHECKSUM_PARTIAL), which the program must leave to the stack.
fn looks_partial(f: &[u8]) -> bool {
    let (src, dst, l4) =
        if f[12..14] == [0x08, 0x00] { (&f[26..30], &f[30..34], 34) } else { (&f[22..38], &f[38..54], 54) };
    let ulen = u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]);
    let pseudo = sum16(src) + sum16(dst) + 17 + u64::from(ulen);
    u16::from_be_bytes([f[l4 + 6], f[l4 + 7]]) == fold(pseudo)
}

/// True when the UDP checksum of an IPv4 frame (as [`frame`] builds them)
/// is right or absent.
fn udp_checksum_ok_v4(f: &[u8]) -> bool {
    let src = IpAddr::from(<[u8; 4]>::try_from(&f[26..30]).unwrap());
    let dst = IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap());
    let got = u16::from_be_bytes([f[40], f[41]]);
    got == 0 || got == udp_checksum(src, dst, &f[34..])
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Loads the XDP program, or says why it cannot run here (CI: fails).
fn program(test: &str) -> Option<TestProgram> {
    load(test, false)
}

/// The XDP program, then the TC classifier: the same C code at both hooks.
fn programs(test: &str) -> Vec<TestProgram> {
    [false, true].into_iter().filter_map(|tc| load(test, tc)).collect()
}

fn load(test: &str, tc: bool) -> Option<TestProgram> {
    let loaded = if tc { TestProgram::load_tc() } else { TestProgram::load() };
    match loaded {
        Ok(p) => Some(p),
        Err(e) => {
            test_kit::skip(test, &e.to_string());
            None
        }
    }
}

fn addr(v4: bool, host: u8, port: u16) -> SocketAddr {
    if v4 {
        SocketAddr::from(([198, 51, 100, host], port))
    } else {
        SocketAddr::new(format!("2001:db8::{host:x}").parse().unwrap(), port)
    }
}

/// One binding's addresses: client and listener in one family, relay and
/// peer in another (or the same).
struct Binding {
    client: SocketAddr,
    listener: SocketAddr,
    relay: SocketAddr,
    peer: SocketAddr,
    channel: u16,
}

fn binding(client_v4: bool, relay_v4: bool, ports: (u16, u16, u16), channel: u16) -> Binding {
    Binding {
        client: addr(client_v4, 10, ports.0),
        listener: addr(client_v4, 1, 3478),
        relay: addr(relay_v4, 2, ports.1),
        peer: addr(relay_v4, 20, ports.2),
        channel,
    }
}

fn run_both_ways(p: &mut TestProgram, b: &Binding, data: &[u8], slot: u32) {
    p.install(b.client, b.listener, b.channel, b.relay, b.peer, slot);
    let before = p.slot(slot);
    // Client -> peer: the header goes, the datagram leaves the relay address.
    // (A checksum that happens to equal the pseudo-header sum, once in
    // 65,536, is taken for a partial one and left to the stack.)
    let f = frame(b.client, b.listener, &channel_data(b.channel, data), false);
    let (v, out) = p.run(&f).unwrap();
    let to_peer = u64::from(!looks_partial(&f));
    if to_peer == 1 {
        assert_eq!(v, verdict::TX, "relayed to the peer");
        assert_eq!(check_frame(&out, b.relay, b.peer), data);
    } else {
        assert_eq!((v, out), (verdict::PASS, f));
    }
    // Peer -> client: a header in front, from the listener.
    let f = frame(b.peer, b.relay, data, false);
    let (v, out) = p.run(&f).unwrap();
    let to_client = u64::from(!looks_partial(&f));
    if to_client == 1 {
        assert_eq!(v, verdict::TX, "relayed to the client");
        assert_eq!(check_frame(&out, b.listener, b.client), channel_data(b.channel, data));
    } else {
        assert_eq!((v, out), (verdict::PASS, f));
    }
    let after = p.slot(slot);
    assert_eq!(after.to_peer_packets - before.to_peer_packets, to_peer);
    assert_eq!(after.to_client_packets - before.to_client_packets, to_client);
    assert_eq!(after.to_peer_bytes - before.to_peer_bytes, to_peer * data.len() as u64);
    assert_eq!(after.to_client_bytes - before.to_client_bytes, to_client * data.len() as u64);
}

#[test]
fn every_family_combination_both_ways_with_sizes_0_to_1400() {
    for mut p in programs("every_family_combination_both_ways_with_sizes_0_to_1400") {
        let combos = [(true, true), (false, false), (true, false), (false, true)];
        for (slot, (cv4, rv4)) in (0u32..).zip(combos) {
            let b = binding(cv4, rv4, (40000 + slot as u16, 50000 + slot as u16, 60000), 0x4000 + slot as u16);
            for len in [0usize, 1, 2, 3, 4, 5, 99, 100, 511, 1200, 1399, 1400] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                run_both_ways(&mut p, &b, &data, slot);
            }
        }
    }
}

#[test]
fn relay_to_relay_goes_straight_to_the_other_client() {
    for mut p in programs("relay_to_relay_goes_straight_to_the_other_client") {
        // Allocation A (an IPv4 client) binds 0x4001 to B's relay address; B
        // (an IPv6 client, relayed over IPv4) binds 0x4002 back to A's.
        let (ra, rb) = (addr(true, 2, 50000), addr(true, 2, 50001));
        let (ca, la) = (addr(true, 10, 40000), addr(true, 1, 3478));
        let (cb, lb) = (addr(false, 11, 40001), addr(false, 1, 3478));
        // Without the flag saying the peer is a relay address, the
        // program does not look for the channel back: out to rB it goes.
        p.install(ca, la, 0x4001, ra, rb, 8);
        p.install_with(cb, lb, 0x4002, rb, ra, 9, true);
        let (v, out) = p.run(&frame(ca, la, &channel_data(0x4001, b"plain"), false)).unwrap();
        assert_eq!(v, verdict::TX);
        assert_eq!(check_frame(&out, ra, rb), b"plain", "relayed to the peer as named");
        p.install_with(ca, la, 0x4001, ra, rb, 8, true);
        let base = p.slot(8).to_peer_packets;
        for n in [0usize, 1, 3, 100, 1400] {
            let data = payload_of(n);
            let before = p.counters();
            let (v, out) = p.run(&frame(ca, la, &channel_data(0x4001, &data), false)).unwrap();
            assert_eq!(v, verdict::TX);
            assert_eq!(
                check_frame(&out, lb, cb),
                channel_data(0x4002, &data),
                "size {n}: to B's client on B's channel"
            );
            let (v, out) = p.run(&frame(cb, lb, &channel_data(0x4002, &data), false)).unwrap();
            assert_eq!(v, verdict::TX);
            assert_eq!(check_frame(&out, la, ca), channel_data(0x4001, &data), "size {n}: and back");
            let after = p.counters();
            let i = COUNTERS.iter().position(|c| *c == "relay_to_relay").unwrap();
            assert_eq!(after[i] - before[i], 2);
        }
        let (a, b) = (p.slot(8), p.slot(9));
        assert_eq!((a.to_peer_packets - base, a.to_client_packets), (5, 5), "A sent five and received five");
        assert_eq!((b.to_peer_packets, b.to_client_packets), (5, 5));
        assert_eq!(a.to_peer_bytes, 5 + 1504, "\"plain\" and the five");
    }
}

fn payload_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 + n) as u8).collect()
}

#[test]
fn a_zero_ipv4_checksum_stays_zero_and_cannot_become_ipv6() {
    for mut p in programs("a_zero_ipv4_checksum_stays_zero_and_cannot_become_ipv6") {
        let b = binding(true, true, (40001, 50001, 60001), 0x4001);
        p.install(b.client, b.listener, b.channel, b.relay, b.peer, 0);
        let (v, out) = p.run(&frame(b.client, b.listener, &channel_data(b.channel, b"abc"), true)).unwrap();
        assert_eq!(v, verdict::TX);
        assert_eq!(check_frame_no_checksum(&out, b.relay, b.peer), b"abc");
        let m = binding(true, false, (40002, 50002, 60002), 0x4002);
        p.install(m.client, m.listener, m.channel, m.relay, m.peer, 1);
        let f = frame(m.client, m.listener, &channel_data(m.channel, b"abc"), true);
        let (v, out) = p.run(&f).unwrap();
        assert_eq!((v, out), (verdict::PASS, f), "IPv6 needs a checksum: to the stack, untouched");
        // IPv6 without a checksum is not valid UDP at all.
        let m6 = binding(false, false, (40003, 50003, 60003), 0x4003);
        p.install(m6.client, m6.listener, m6.channel, m6.relay, m6.peer, 2);
        let f = frame(m6.client, m6.listener, &channel_data(m6.channel, b"abc"), true);
        assert_eq!(p.run(&f).unwrap(), (verdict::PASS, f));
    }
}

#[test]
fn what_the_program_does_not_handle_passes_untouched() {
    for mut p in programs("what_the_program_does_not_handle_passes_untouched") {
        let b = binding(true, true, (40010, 50010, 60010), 0x4010);
        p.install(b.client, b.listener, b.channel, b.relay, b.peer, 3);
        let label = |i: usize| COUNTERS[i];
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("unknown channel", frame(b.client, b.listener, &channel_data(0x4011, b"x"), false)),
            ("other client", frame(addr(true, 11, 40010), b.listener, &channel_data(b.channel, b"x"), false)),
            ("unknown peer", frame(addr(true, 21, 60010), b.relay, b"x", false)),
            ("STUN", frame(b.client, b.listener, &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0], false)),
        ];
        // A local sender's partial checksum: the folded pseudo-header sum.
        let mut partial = frame(b.client, b.listener, &channel_data(b.channel, b"partial"), false);
        let pseudo = sum16(&partial[26..34]) + 17 + (8 + 4 + 7);
        partial[40..42].copy_from_slice(&fold(pseudo).to_be_bytes());
        assert!(looks_partial(&partial));
        cases.push(("partial checksum", partial));
        // Padding after the data (allowed over UDP, left to the shard).
        let mut padded = channel_data(b.channel, b"abc");
        padded.push(0);
        cases.push(("padded", frame(b.client, b.listener, &padded, false)));
        // A ChannelData length longer than the datagram.
        let mut short = channel_data(b.channel, b"abcd");
        short.truncate(6);
        cases.push(("truncated", frame(b.client, b.listener, &short, false)));
        // IPv4 options (IHL 6).
        let mut opts = frame(b.client, b.listener, &channel_data(b.channel, b"abc"), false);
        opts[14] = 0x46;
        cases.push(("ip options", opts));
        // A first fragment (MF set).
        let mut frag = frame(b.client, b.listener, &channel_data(b.channel, b"abc"), false);
        frag[20] = 0x20;
        cases.push(("fragment", frag));
        // A UDP length beyond the frame.
        let mut long = frame(b.client, b.listener, &channel_data(b.channel, b"abc"), false);
        long[38] = 0x05;
        cases.push(("udp length", long));
        // The frame cut short inside the UDP header.
        let full = frame(b.client, b.listener, &channel_data(b.channel, b"abc"), false);
        cases.push(("cut", full[..40].to_vec()));
        // An IPv6 fragment header.
        let mut v6frag = frame(addr(false, 10, 1), addr(false, 1, 3478), &channel_data(0x4010, b"abc"), false);
        v6frag[20] = 44;
        cases.push(("ipv6 fragment", v6frag));
        for (what, f) in cases {
            let before = p.counters();
            let (v, out) = p.run(&f).unwrap();
            assert_eq!(v, verdict::PASS, "{what}");
            assert_eq!(out, f, "{what}: untouched");
            let after = p.counters();
            let moved: Vec<&str> = (0..COUNTERS.len()).filter(|&i| after[i] != before[i]).map(label).collect();
            assert_eq!(moved.len(), 1, "{what}: one counter moves: {moved:?}");
            assert!(!moved[0].starts_with("to_"), "{what}: counted as passed: {moved:?}");
        }
        assert_eq!(p.slot(3), Default::default(), "nothing was relayed");
    }
}

thread_local! {
    /// One loaded program for all cases of a property (loading costs more
    /// than a run).
    static PROGRAM: std::cell::RefCell<Option<Option<TestProgram>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's program, loaded on first use.
fn with_program(
    test: &str,
    f: impl FnOnce(&mut TestProgram) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    PROGRAM.with(|cell| {
        let mut cell = cell.borrow_mut();
        match cell.get_or_insert_with(|| program(test)) {
            Some(p) => f(p),
            None => Ok(()),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rewritten_frames_are_valid_for_any_binding(
        cv4 in any::<bool>(),
        rv4 in any::<bool>(),
        ports in (1u16.., 1u16.., 1u16..),
        channel in 0x4000u16..0x5000,
        data in proptest::collection::vec(any::<u8>(), 0..1400),
    ) {
        with_program("rewritten_frames_are_valid_for_any_binding", |p| {
            let b = binding(cv4, rv4, ports, channel);
            run_both_ways(p, &b, &data, 5);
            Ok(())
        })?;
    }

    #[test]
    fn damaged_frames_pass_or_stay_damaged(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        at in 12usize..46,
        xor in 1u8..,
        claimed in proptest::option::of(0u16..300),
    ) {
        with_program("damaged_frames_pass_or_stay_damaged", |p| {
            let b = binding(true, true, (40020, 50020, 60020), 0x4020);
            p.install(b.client, b.listener, b.channel, b.relay, b.peer, 6);
            // This binding's ChannelData, its length field possibly lying,
            // then one byte of the headers (or the first payload bytes)
            // damaged after the checksums were computed.
            let mut cd = channel_data(b.channel, &data);
            if let Some(len) = claimed {
                cd[2..4].copy_from_slice(&len.to_be_bytes());
            }
            let mut f = frame(b.client, b.listener, &cd, false);
            if at < f.len() {
                f[at] ^= xor;
            }
            let (v, out) = p.run(&f).unwrap();
            if v == verdict::PASS {
                prop_assert_eq!(out, f);
                return Ok(());
            }
            // Relayed: the IPv4 header was intact (its checksum holds), the
            // lengths add up, and a damaged UDP checksum stays damaged for
            // the peer's kernel to drop.
            prop_assert_eq!(v, verdict::TX);
            prop_assert_eq!(fold(sum16(&f[14..34])), 0xffff);
            prop_assert_eq!(u16::from_be_bytes([f[44], f[45]]) as usize, f.len() - 46);
            let ok = udp_checksum_ok_v4(&f);
            let out_ok = udp_checksum_ok_v4(&out);
            prop_assert_eq!(ok, out_ok, "checksum validity kept");
            if ok {
                check_frame(&out, b.relay, b.peer);
            }
            Ok(())
        })?;
    }
}
