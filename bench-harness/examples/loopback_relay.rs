//! A relay on loopback for trying `turn-bench` by hand: relay-io's data
//! plane in this process, user `test`/`pass` (realm `bench.local`), REST
//! secret `north`, loopback peers allowed (the harness's peer sits on
//! 127.0.0.2), stopping by itself after a while.
//!
//! ```sh
//! cargo run --release -p bench-harness --example loopback_relay -- 127.0.0.1:3478 120 &
//! turn-bench throughput --server 127.0.0.1:3478 --rate 50000 -d 10 --server-pid $!
//! ```
//!
//! Arguments: listen address (default 127.0.0.1:3478), seconds to run
//! (default 60), shards (default 1), relay ports per shard (default 2000),
//! backend `auto`, `uring` or `portable` (default auto).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::policy::PeerPolicy;
use relay_core::server::{Server, ServerParts};
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen: SocketAddr = args.first().map_or("127.0.0.1:3478", String::as_str).parse().expect("listen address");
    let secs: u64 = args.get(1).map_or(Ok(60), |s| s.parse()).expect("seconds");
    let shards: usize = args.get(2).map_or(Ok(1), |s| s.parse()).expect("shards");
    let ports: usize = args.get(3).map_or(Ok(2000), |s| s.parse()).expect("ports per shard");
    let backend = match args.get(4).map_or("auto", String::as_str) {
        "uring" => Backend::IoUring,
        "portable" => Backend::Portable,
        _ => Backend::Auto,
    };
    let config = IoConfig {
        shards,
        pin_cores: false,
        backend,
        udp_listen: vec![listen],
        relay_ips: vec![RelayIp::same(listen.ip())],
        relay_ports: RelayPorts::Ephemeral(ports),
        ..IoConfig::default()
    };
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let relay = Relay::start(&config, |k| {
        let mut credentials = Credentials::new("bench.local");
        credentials.add_user("test", "pass").expect("user");
        credentials.add_rest_secret(b"north");
        let parts = ServerParts::new(credentials)
            .with_nonces(NonceIssuer::new([7; 32], 3600))
            .with_policy(PeerPolicy::with_lists(vec!["127.0.0.0/8".parse().expect("net")], vec![]));
        Server::new(parts, Instant::now(), unix, k as u64 + 1)
    })
    .expect("relay starts");
    eprintln!(
        "relay on {} (pid {}, backend {}: {}), {} relay ports; stopping in {secs} s",
        relay.udp_addrs()[0],
        std::process::id(),
        relay.backend().name(),
        relay.backend_reason(),
        relay.relay_count()
    );
    std::thread::sleep(Duration::from_secs(secs));
    relay.stop().expect("stop");
}
