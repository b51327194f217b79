//! The peer policy's check (every CreatePermission, ChannelBind and Send
//! indication) against operator lists of 0 to 4,000 entries: /24 denies
//! with a /32 allow inside each, and 4,000 denies of 25 prefix lengths
//! (/8 to /32), as a user database's ranges become.
//!
//! ```sh
//! cargo bench -p relay-core --bench policy
//! ```

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::IpNet;
use relay_core::server::policy::PeerPolicy;

/// `pairs` /24 denies, each with an allowed /32 inside.
fn lists(pairs: u32) -> (Vec<IpNet>, Vec<IpNet>) {
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let [_, b, c, _] = (i * 7919).to_be_bytes();
        deny.push(format!("203.{b}.{c}.0/24").parse().unwrap());
        allow.push(format!("203.{b}.{c}.{}/32", i % 250).parse().unwrap());
    }
    (allow, deny)
}

/// `count` denies of every prefix length from /8 to /32 in turn, as
/// coturn-style `A-B` ranges become: 25 distinct lengths to look up.
fn mixed(count: u32) -> Vec<IpNet> {
    (0..count)
        .map(|i| {
            let len = 8 + (i % 25) as u8;
            let [a, b, c, d] = (0xCB00_0000 | (i * 7919) << 4).to_be_bytes();
            IpNet::new(std::net::Ipv4Addr::new(a, b, c, d).into(), len).unwrap().trunc()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let peers: Vec<SocketAddr> =
        (0..1024u32).map(|i| SocketAddr::from(([198, 51, (i >> 8) as u8, i as u8], 40000))).collect();
    let mut g = c.benchmark_group("peer_policy");
    for pairs in [0, 5, 50, 2000] {
        let (allow, deny) = lists(pairs);
        let p = PeerPolicy::with_lists(allow, deny);
        let mut k = 0usize;
        g.bench_function(format!("check_{}_entries", 2 * pairs), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(p.permits(black_box(peers[k])))
            })
        });
    }
    let p = PeerPolicy::with_lists(Vec::new(), mixed(4000));
    let mut k = 0usize;
    g.bench_function("check_4000_entries_25_lengths", |b| {
        b.iter(|| {
            k = (k + 1) & 1023;
            black_box(p.permits(black_box(peers[k])))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
