//! Three hosts in network namespaces, for tests of what crosses a real
//! network path (the kernel fast path's XDP program on veth devices):
//!
//! ```text
//!  clients (vc)                relay                  (vp) peers
//!  10.201.1.2, .3  ─ veth ─ 10.201.1.1 (vrc)
//!  fd00:1::2, ::3            fd00:1::1
//!                            10.201.2.1 (vrp) ─ veth ─ 10.201.2.2, .3
//!                            fd00:2::1                 fd00:2::2, ::3
//! ```
//!
//! The relay's namespace forwards (bpf_fib_lookup requires it); the
//! clients' and peers' devices compute full UDP checksums (no transmit
//! offload), as a NIC's wire traffic has them, and receive through NAPI
//! (GRO on) so that XDP can redirect to them. Every namespace is deleted
//! on drop.

use std::net::UdpSocket;
use std::process::Command;

/// The three namespaces.
pub struct Topology {
    /// The clients' namespace.
    pub clients: String,
    /// The relay's namespace.
    pub relay: String,
    /// The peers' namespace.
    pub peers: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Topology {
    /// Builds it; `tag` keeps concurrent tests' namespaces apart. Fails
    /// (with the reason) without root or iproute2.
    pub fn new(tag: &str) -> Result<Topology, String> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let t = Topology {
            clients: format!("{tag}-c-{id}"),
            relay: format!("{tag}-r-{id}"),
            peers: format!("{tag}-p-{id}"),
        };
        let (c, r, p) = (t.clients.as_str(), t.relay.as_str(), t.peers.as_str());
        for ns in [c, r, p] {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        run(&["ip", "link", "add", "vc", "netns", c, "type", "veth", "peer", "name", "vrc", "netns", r])?;
        run(&["ip", "link", "add", "vp", "netns", p, "type", "veth", "peer", "name", "vrp", "netns", r])?;
        let addrs: [(&str, &str, &str); 12] = [
            (c, "vc", "10.201.1.2/24"),
            (c, "vc", "10.201.1.3/24"),
            (c, "vc", "fd00:1::2/64"),
            (c, "vc", "fd00:1::3/64"),
            (r, "vrc", "10.201.1.1/24"),
            (r, "vrc", "fd00:1::1/64"),
            (r, "vrp", "10.201.2.1/24"),
            (r, "vrp", "fd00:2::1/64"),
            (p, "vp", "10.201.2.2/24"),
            (p, "vp", "10.201.2.3/24"),
            (p, "vp", "fd00:2::2/64"),
            (p, "vp", "fd00:2::3/64"),
        ];
        for (ns, dev, a) in addrs {
            let mut args = vec!["ip", "-n", ns, "addr", "add", a, "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            run(&args)?;
        }
        for (ns, dev) in [(c, "vc"), (r, "vrc"), (r, "vrp"), (p, "vp")] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        for (ns, v4, v6) in [(c, "10.201.1.1", "fd00:1::1"), (p, "10.201.2.1", "fd00:2::1")] {
            run(&["ip", "-n", ns, "route", "add", "default", "via", v4])?;
            run(&["ip", "-n", ns, "-6", "route", "add", "default", "via", v6])?;
        }
        run(&["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
        for (ns, dev) in [(c, "vc"), (p, "vp")] {
            run(&["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "gro", "on"])?;
        }
        Ok(t)
    }

    /// Runs `f` on a thread in namespace `ns` (sockets it creates, and
    /// threads it starts, belong to that namespace) and returns its result.
    pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = ns.to_owned();
        std::thread::spawn(move || {
            relay_io::sys::enter_netns(&ns).expect("enter the namespace");
            f()
        })
        .join()
        .expect("the namespace's thread")
    }

    /// A UDP socket bound to `addr` in namespace `ns`.
    pub fn udp(ns: &str, addr: &str) -> UdpSocket {
        let addr = addr.to_owned();
        Topology::run_in(ns, move || {
            let s = UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            s.set_read_timeout(Some(crate::TIMEOUT)).unwrap();
            s
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.clients, &self.relay, &self.peers] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
