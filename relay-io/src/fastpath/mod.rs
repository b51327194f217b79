//! The kernel fast path: an XDP program (`bpf/fastpath.bpf.c`, compiled by
//! `build.rs` with clang) relays UDP ChannelData between clients and peers
//! without waking a shard; the shards are its control plane.
//!
//! relay-core decides what may be relayed ([`relay_core::server::Event::FastPathInstall`]
//! and `FastPathRemove`, emitted for a channel whose permission is live,
//! whose peer passed the policy and whose allocation is not capped); the
//! shard turns each into two map entries (client → peer keyed by the
//! client's 5-tuple and channel, peer → client keyed by peer and relay
//! address) and reads the kernel's per-entry counters back into its stats
//! once a second and when an entry goes.
//!
//! Several shards write the same maps without coordination: their keys are
//! disjoint by construction (a relay address belongs to one shard, a
//! client's 5-tuple to one allocation), the kernel updates a hash map
//! element atomically, and each shard owns a disjoint range of counter
//! slots. Nothing of this is on a shard's packet path.
//!
//! Lifecycle: the program is attached through BPF links, which the kernel
//! detaches when the last descriptor closes — on exit, and after SIGKILL
//! too; nothing is pinned, so nothing outlives the process.

pub mod maps;

use std::collections::{HashMap as StdHashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use relay_core::server::FastEntry;

pub use maps::{COUNTERS, FIRST_PASS, FpAddr, FpChanKey, FpChanVal, FpPeerKey, FpPeerVal, FpSlotStats};

/// The compiled program (empty when clang was missing at build time).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

/// Which fast path to run (`server.fast_path`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FastPathMode {
    /// Native (driver) XDP on every interface that supports it and has
    /// forwarding on; elsewhere, and without privileges or kernel support,
    /// the socket path, with one log line saying why.
    #[default]
    Auto,
    /// Native XDP on every interface, or a start-up error.
    Xdp,
    /// Generic (skb) XDP on every interface, or a start-up error. Works on
    /// any device; `auto` does not pick it (measured on veth only).
    XdpGeneric,
    /// A TC classifier at clsact ingress (a TCX link, kernel 6.6 or later)
    /// on every interface, or a start-up error: for devices without native
    /// XDP or its headroom.
    Tc,
    /// The socket path only.
    Off,
}

impl FastPathMode {
    /// Parses `auto`, `xdp`, `xdp-generic`, `tc` or `off`.
    pub fn parse(s: &str) -> Option<FastPathMode> {
        Some(match s {
            "auto" => FastPathMode::Auto,
            "xdp" => FastPathMode::Xdp,
            "xdp-generic" => FastPathMode::XdpGeneric,
            "tc" => FastPathMode::Tc,
            "off" => FastPathMode::Off,
            _ => return None,
        })
    }

    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            FastPathMode::Auto => "auto",
            FastPathMode::Xdp => "xdp",
            FastPathMode::XdpGeneric => "xdp-generic",
            FastPathMode::Tc => "tc",
            FastPathMode::Off => "off",
        }
    }
}

/// Why a forced fast path could not start.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The program was not compiled into this binary.
    #[error("the kernel fast path was not built into this binary (clang was missing when it was compiled)")]
    NotBuilt,
    /// The kernel refused the program or its maps.
    #[error("cannot load the fast path program: {0}")]
    Load(String),
    /// An interface could not take the program.
    #[error("cannot attach the fast path ({mode}) to {interface}: {why}")]
    Attach {
        /// The interface.
        interface: String,
        /// The attach mode.
        mode: &'static str,
        /// Why.
        why: String,
    },
    /// No interface carries the configured addresses.
    #[error("no interface for the fast path: {0}")]
    NoInterface(String),
}

/// What [`FastPath::start`] did: the running fast path, if any, and a line
/// saying which path runs and why.
pub struct Started {
    /// The fast path, when attached somewhere.
    pub fast: Option<FastPath>,
    /// One entry writer per shard (empty without a fast path).
    pub shards: Vec<ShardFastPath>,
    /// The attach mode (generic XDP, TC) runs after GRO: the sockets must
    /// not ask for UDP GRO (a coalesced burst would reach the program as
    /// one datagram).
    pub after_gro: bool,
    /// For the log.
    pub why: String,
}

/// The loaded program, its attachments and the maps.
pub struct FastPath {
    ebpf: Ebpf,
    channels: MapData,
    peers: MapData,
    slots: MapData,
    counters: PerCpuArray<MapData, u64>,
    slot_count: u32,
    attached: Vec<String>,
    mode: FastPathMode,
    _devices: HashMap<MapData, u32, u32>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath").field("mode", &self.mode).field("attached", &self.attached).finish()
    }
}

/// The program's two entry points.
const XDP_PROGRAM: &str = "turn_fastpath";
const TC_PROGRAM: &str = "turn_fastpath_tc";

fn load(slot_count: u32, no_fib: bool, max_datagram: u32) -> Result<Ebpf, FastPathError> {
    load_as(slot_count, no_fib, max_datagram, false)
}

/// Loads the object and its XDP program, or (`tc`) its TC classifier.
fn load_as(slot_count: u32, no_fib: bool, max_datagram: u32, tc: bool) -> Result<Ebpf, FastPathError> {
    if cfg!(fastpath_missing) || OBJECT.is_empty() {
        return Err(FastPathError::NotBuilt);
    }
    let flag: u32 = no_fib.into();
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("fp_slots", slot_count.max(1))
        .override_global("fp_no_fib", &flag, true)
        .override_global("fp_max_datagram", &max_datagram, true)
        .load(OBJECT)
        .map_err(|e| FastPathError::Load(error_chain(&e)))?;
    let l = |e: &dyn std::error::Error| FastPathError::Load(error_chain(e));
    let name = if tc { TC_PROGRAM } else { XDP_PROGRAM };
    let prog = ebpf.program_mut(name).ok_or_else(|| FastPathError::Load(format!("no {name} program in the object")))?;
    if tc {
        let p: &mut SchedClassifier = prog.try_into().map_err(|e| l(&e))?;
        p.load().map_err(|e| l(&e))?;
    } else {
        let p: &mut Xdp = prog.try_into().map_err(|e| l(&e))?;
        p.load().map_err(|e| l(&e))?;
    }
    Ok(ebpf)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<MapData, FastPathError> {
    use aya::maps::Map;
    match ebpf.take_map(name) {
        Some(Map::HashMap(m) | Map::PerCpuArray(m) | Map::Array(m)) => Ok(m),
        _ => Err(FastPathError::Load(format!("map {name} missing or of the wrong type"))),
    }
}

/// A second handle to the same kernel map.
fn clone_map(m: &MapData) -> io::Result<MapData> {
    let fd = m.fd().as_fd().try_clone_to_owned()?;
    MapData::from_fd(fd).map_err(io::Error::other)
}

impl FastPath {
    /// Loads the program and attaches it as `mode` asks, to `interfaces`
    /// or, when that is empty, to the interfaces that hold `ips` (the UDP
    /// listeners' and relay sockets' addresses), and makes one entry writer
    /// for each of `shards`. `slot_count` bounds the channel bindings that
    /// can be on the fast path at once (the rest stay on the socket path);
    /// datagrams above `max_datagram` are left to the shards. `auto` never
    /// fails: it says why it runs nothing.
    pub fn start(
        mode: FastPathMode,
        interfaces: &[String],
        ips: &[IpAddr],
        slot_count: u32,
        max_datagram: usize,
        shards: usize,
    ) -> Result<Started, FastPathError> {
        let none = |why: String| Started { fast: None, shards: Vec::new(), after_gro: false, why };
        if mode == FastPathMode::Off {
            return Ok(none("socket path: server.fast_path is off".into()));
        }
        match FastPath::attach(mode, interfaces, ips, slot_count, max_datagram, shards) {
            Ok(started) => Ok(started),
            Err(e) if mode == FastPathMode::Auto => Ok(none(format!("socket path: {e}"))),
            Err(e) => Err(e),
        }
    }

    fn attach(
        mode: FastPathMode,
        interfaces: &[String],
        ips: &[IpAddr],
        slot_count: u32,
        max_datagram: usize,
        shards: usize,
    ) -> Result<Started, FastPathError> {
        if let Some(ip) = ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(FastPathError::NoInterface(format!(
                "a UDP listener or relay address is the wildcard {ip}: the kernel sees the real addresses, so \
                 listen on and relay from specific IPs"
            )));
        }
        let tc = mode == FastPathMode::Tc;
        if !kernel_at_least(5, 9) || (tc && !kernel_at_least(6, 6)) {
            // Older kernels attach through netlink, which outlives the
            // process (and its maps) after SIGKILL.
            let need = if tc { "6.6 (no TCX links)" } else { "5.9 (no XDP links)" };
            return Err(FastPathError::Load(format!("the kernel is older than {need}")));
        }
        let names = derive_interfaces(interfaces, ips).map_err(|e| FastPathError::NoInterface(e.to_string()))?;
        if names.is_empty() {
            return Err(FastPathError::NoInterface(format!("none holds {ips:?}")));
        }
        if mode == FastPathMode::Auto && names.iter().all(|n| n == "lo") {
            return Err(FastPathError::NoInterface("loopback only, which has no native XDP".into()));
        }
        let max = u32::try_from(max_datagram).unwrap_or(u32::MAX);
        let mut ebpf = load_as(slot_count, false, max, tc)?;
        let (xdp_mode, mode_name) = match mode {
            FastPathMode::XdpGeneric => (XdpMode::Skb, "generic XDP"),
            FastPathMode::Tc => (XdpMode::Skb, "TC ingress"),
            _ => (XdpMode::Driver, "native XDP"),
        };
        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        for name in &names {
            let why = if name == "lo" && mode == FastPathMode::Auto {
                Some("loopback has no native XDP".to_string())
            } else if let Some(sysctl) = forwarding_off(name, ips) {
                Some(format!("forwarding is off ({sysctl} = 0); bpf_fib_lookup refuses to route"))
            } else if tc {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(TC_PROGRAM)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| FastPathError::Load(format!("{TC_PROGRAM} is not a classifier")))?;
                // TCX only (no netlink fallback: a netlink filter would
                // outlive the process).
                let tcx = aya::programs::tc::TcAttachOptions::TcxOrder(aya::programs::links::LinkOrder::default());
                prog.attach_with_options(name.as_str(), TcAttachType::Ingress, tcx).err().map(|e| error_chain(&e))
            } else {
                let prog: &mut Xdp = ebpf
                    .program_mut(XDP_PROGRAM)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| FastPathError::Load(format!("{XDP_PROGRAM} is not an XDP program")))?;
                prog.attach(name.as_str(), xdp_mode).err().map(|e| error_chain(&e))
            };
            match why {
                None => attached.push(name.clone()),
                Some(why) if mode == FastPathMode::Auto => skipped.push(format!("{name}: {why}")),
                Some(why) => return Err(FastPathError::Attach { interface: name.clone(), mode: mode_name, why }),
            }
        }
        if attached.is_empty() {
            return Err(FastPathError::Attach { interface: names.join(","), mode: mode_name, why: skipped.join("; ") });
        }
        // The devices a rewritten frame may leave by.
        let mut devices: HashMap<MapData, u32, u32> =
            HashMap::try_from(aya::maps::Map::HashMap(take(&mut ebpf, "fp_devices")?))
                .map_err(|e| FastPathError::Load(e.to_string()))?;
        for name in &attached {
            let index = if_index(name).ok_or_else(|| FastPathError::NoInterface(format!("{name} vanished")))?;
            devices.insert(index, 1, 0).map_err(|e| FastPathError::Load(error_chain(&e)))?;
        }
        let channels = take(&mut ebpf, "fp_channels")?;
        let peers = take(&mut ebpf, "fp_peers")?;
        let slots = take(&mut ebpf, "fp_slots")?;
        let counters = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(take(&mut ebpf, "fp_counters")?))
            .map_err(|e| FastPathError::Load(e.to_string()))?;
        let mut why = format!("kernel fast path: {mode_name} on {}", attached.join(", "));
        if !skipped.is_empty() {
            why.push_str(&format!(" (socket path on {})", skipped.join("; ")));
        }
        let fast = FastPath { ebpf, channels, peers, slots, counters, slot_count, attached, mode, _devices: devices };
        let shards = (0..shards.max(1))
            .map(|k| fast.shard(k, shards.max(1)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| FastPathError::Load(format!("a shard's map handles: {e}")))?;
        let after_gro = matches!(mode, FastPathMode::XdpGeneric | FastPathMode::Tc);
        Ok(Started { fast: Some(fast), shards, after_gro, why })
    }

    /// The attach mode that runs (never `Auto` or `Off`).
    pub fn mode(&self) -> FastPathMode {
        if self.mode == FastPathMode::Auto { FastPathMode::Xdp } else { self.mode }
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.attached
    }

    /// The handle shard `index` of `count` writes its entries through; it
    /// owns an equal share of the counter slots.
    fn shard(&self, index: usize, count: usize) -> io::Result<ShardFastPath> {
        let per = self.slot_count / count.max(1) as u32;
        let first = per * index as u32;
        Ok(ShardFastPath {
            channels: HashMap::try_from(aya::maps::Map::HashMap(clone_map(&self.channels)?))
                .map_err(io::Error::other)?,
            peers: HashMap::try_from(aya::maps::Map::HashMap(clone_map(&self.peers)?)).map_err(io::Error::other)?,
            slots: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(clone_map(&self.slots)?))
                .map_err(io::Error::other)?,
            free: (first..first + per).collect(),
            installed: StdHashMap::new(),
            stats: ShardFastStats::default(),
        })
    }

    /// What the program did with the packets it saw, summed over CPUs,
    /// indexed as [`COUNTERS`].
    pub fn counters(&self) -> [u64; COUNTERS.len()] {
        sum_counters(&self.counters)
    }

    /// The program's own run time: (packets run, nanoseconds), from the
    /// kernel's statistics (`kernel.bpf_stats_enabled` must be 1; zeros
    /// otherwise).
    pub fn run_stats(&self) -> (u64, u64) {
        let name = if self.mode == FastPathMode::Tc { TC_PROGRAM } else { XDP_PROGRAM };
        let info = self.ebpf.program(name).and_then(|p| p.info().ok());
        info.map_or((0, 0), |i| (i.run_count(), i.run_time().as_nanos() as u64))
    }
}

/// A shard's counters of its fast path entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardFastStats {
    /// Entries (channel bindings) in the kernel now.
    pub installed: u64,
    /// Bindings kept on the socket path: no free counter slot.
    pub slots_full: u64,
    /// Map updates the kernel refused.
    pub errors: u64,
}

struct Installed {
    slot: u32,
    chan: FpChanKey,
    peer: FpPeerKey,
    seen: FpSlotStats,
}

/// One shard's writer of fast path entries.
pub struct ShardFastPath {
    channels: HashMap<MapData, FpChanKey, FpChanVal>,
    peers: HashMap<MapData, FpPeerKey, FpPeerVal>,
    slots: PerCpuArray<MapData, FpSlotStats>,
    /// Free counter slots, oldest released first (a packet still in
    /// flight for a removed entry lands on the slot it left, which then
    /// rests the longest before reuse).
    free: VecDeque<u32>,
    installed: StdHashMap<FastEntry, Installed>,
    stats: ShardFastStats,
}

impl std::fmt::Debug for ShardFastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardFastPath").field("stats", &self.stats).finish()
    }
}

/// What the kernel relayed for a shard since the last look: (packets,
/// bytes) client → peer and peer → client.
pub type Relayed = ((u64, u64), (u64, u64));

impl ShardFastPath {
    /// Installs `e`: ChannelData on `e.channel` from `e.client` to the
    /// listener `listener` goes to `e.peer` from `relay`, and the peer's
    /// datagrams to `relay` come back as ChannelData. `listener` and
    /// `relay` are the sockets' bound addresses (what the kernel sees).
    pub fn install(&mut self, e: &FastEntry, listener: SocketAddr, relay: SocketAddr) {
        if self.installed.contains_key(e) {
            return;
        }
        // The start refuses wildcard listeners and relay addresses; a key
        // with one would never match.
        if listener.ip().is_unspecified() || relay.ip().is_unspecified() {
            self.stats.errors += 1;
            return;
        }
        let Some(slot) = self.free.pop_front() else {
            self.stats.slots_full += 1;
            return;
        };
        let chan = FpChanKey {
            client: FpAddr::of(e.client.remote),
            listener: FpAddr::of(listener),
            channel: e.channel.to_be_bytes(),
            pad: [0; 2],
        };
        let peer = FpPeerKey { peer: FpAddr::of(e.peer), relay: FpAddr::of(relay) };
        let flags = if e.peer_is_relay { maps::PEER_IS_RELAY } else { 0 };
        let cv = FpChanVal { relay: peer.relay, peer: peer.peer, slot, flags };
        let pv = FpPeerVal { client: chan.client, listener: chan.listener, channel: chan.channel, pad: 0, slot };
        let seen = read_slot(&self.slots, slot).unwrap_or_default();
        // BPF_NOEXIST: never overwrite a key (none can exist: keys are
        // disjoint between allocations and shards); undo only our own.
        const NOEXIST: u64 = 1;
        let ok = match self.peers.insert(peer, pv, NOEXIST) {
            Err(_) => false,
            Ok(()) => {
                self.channels.insert(chan, cv, NOEXIST).is_ok() || {
                    let _ = self.peers.remove(&peer);
                    false
                }
            }
        };
        if !ok {
            self.free.push_back(slot);
            self.stats.errors += 1;
            return;
        }
        self.installed.insert(*e, Installed { slot, chan, peer, seen });
        self.stats.installed += 1;
    }

    /// Removes `e`'s entries; returns what the kernel relayed for it since
    /// the last [`ShardFastPath::collect`].
    pub fn remove(&mut self, e: &FastEntry) -> Relayed {
        let Some(i) = self.installed.remove(e) else { return ((0, 0), (0, 0)) };
        if self.channels.remove(&i.chan).is_err() | self.peers.remove(&i.peer).is_err() {
            self.stats.errors += 1;
        }
        self.stats.installed -= 1;
        // A packet the program is relaying right now may still count after
        // this read; the slot is read again when it is next handed out.
        let delta = read_slot(&self.slots, i.slot).map_or_else(FpSlotStats::default, |now| now.since(&i.seen));
        self.free.push_back(i.slot);
        relayed(&delta)
    }

    /// What the kernel relayed for each installed entry since the last
    /// look, handed to `credit` entry by entry (entries that relayed
    /// nothing are skipped; call it about once a second).
    pub fn collect(&mut self, mut credit: impl FnMut(&FastEntry, Relayed)) {
        for (e, i) in self.installed.iter_mut() {
            // A failed read keeps the last one (no history counted twice).
            if let Some(now) = read_slot(&self.slots, i.slot) {
                let delta = now.since(&i.seen);
                i.seen = now;
                let r = relayed(&delta);
                if r != ((0, 0), (0, 0)) {
                    credit(e, r);
                }
            }
        }
    }

    /// The shard's entry counters.
    pub fn stats(&self) -> ShardFastStats {
        self.stats
    }
}

impl Drop for ShardFastPath {
    /// A shard that ends (stopped, drained, or failed) takes its entries
    /// out of the kernel: nothing it no longer governs is relayed.
    fn drop(&mut self) {
        for (_, i) in self.installed.drain() {
            let _ = self.channels.remove(&i.chan);
            let _ = self.peers.remove(&i.peer);
        }
    }
}

/// A slot's counters, summed over CPUs (`None` when the kernel refused
/// the read).
fn read_slot(slots: &PerCpuArray<MapData, FpSlotStats>, slot: u32) -> Option<FpSlotStats> {
    let v = slots.get(&slot, 0).ok()?;
    let mut sum = FpSlotStats::default();
    for cpu in v.iter() {
        sum.add(cpu);
    }
    Some(sum)
}

/// The index of interface `name` in the calling thread's namespace.
fn if_index(name: &str) -> Option<u32> {
    crate::sys::interface_index(name)
}

/// True when the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// `fp_counters` summed over CPUs.
fn sum_counters(counters: &PerCpuArray<MapData, u64>) -> [u64; COUNTERS.len()] {
    let mut out = [0u64; COUNTERS.len()];
    for (i, slot) in out.iter_mut().enumerate() {
        if let Ok(v) = counters.get(&(i as u32), 0) {
            *slot = v.iter().sum();
        }
    }
    out
}

fn relayed(s: &FpSlotStats) -> Relayed {
    ((s.to_peer_packets, s.to_peer_bytes), (s.to_client_packets, s.to_client_bytes))
}

/// The interfaces to attach to: `names` as given, else those holding
/// `ips` (a wildcard: every interface but `lo`).
fn derive_interfaces(names: &[String], ips: &[IpAddr]) -> io::Result<Vec<String>> {
    if !names.is_empty() {
        return Ok(names.to_vec());
    }
    let all = crate::sys::interface_addresses()?;
    let mut out: Vec<String> = Vec::new();
    for ip in ips {
        for (name, addr) in &all {
            let hit = if ip.is_unspecified() { name != "lo" } else { addr == ip };
            if hit && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    Ok(out)
}

/// The forwarding sysctl that is off on `dev` for a family among `ips`, if
/// any: bpf_fib_lookup answers "forwarding disabled" on such a device.
fn forwarding_off(dev: &str, ips: &[IpAddr]) -> Option<String> {
    let families = [(true, "ipv4"), (false, "ipv6")];
    for (v4, fam) in families {
        if !ips.iter().any(|ip| ip.is_ipv4() == v4) {
            continue;
        }
        let path = format!("/proc/sys/net/{fam}/conf/{dev}/forwarding");
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "0") {
            return Some(format!("net.{fam}.conf.{dev}.forwarding"));
        }
    }
    None
}

/// The program attached with no entries, so that it passes every packet:
/// for test hosts at the far end of a veth pair, which delivers XDP_TX
/// frames only to a device that has an XDP program (a NIC needs nothing of
/// the sort). Detached on drop.
pub struct PassiveXdp {
    _ebpf: Ebpf,
}

impl PassiveXdp {
    /// Attaches natively to `interface` in the calling thread's namespace.
    pub fn attach(interface: &str) -> Result<PassiveXdp, FastPathError> {
        let mut ebpf = load(1, false, u32::from(u16::MAX))?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| FastPathError::Load("turn_fastpath is not an XDP program".into()))?;
        prog.attach(interface, XdpMode::Driver).map_err(|e| FastPathError::Attach {
            interface: interface.into(),
            mode: "native XDP",
            why: error_chain(&e),
        })?;
        Ok(PassiveXdp { _ebpf: ebpf })
    }
}

/// The program loaded for tests of its rewriting, attached nowhere, with
/// the route lookup replaced by "bounce it back" (`XDP_TX` with the MAC
/// addresses swapped): [`TestProgram::run`] hands it a frame through
/// `BPF_PROG_TEST_RUN`.
pub struct TestProgram {
    ebpf: Ebpf,
    tc: bool,
    channels: HashMap<MapData, FpChanKey, FpChanVal>,
    peers: HashMap<MapData, FpPeerKey, FpPeerVal>,
    slots: PerCpuArray<MapData, FpSlotStats>,
    counters: PerCpuArray<MapData, u64>,
}

/// XDP verdicts.
pub mod verdict {
    /// `XDP_PASS`: to the stack.
    pub const PASS: u32 = 2;
    /// `XDP_TX`: out of the ingress device.
    pub const TX: u32 = 3;
}

impl TestProgram {
    /// Loads the XDP program (needs CAP_BPF).
    pub fn load() -> Result<TestProgram, FastPathError> {
        TestProgram::load_as(false)
    }

    /// Loads the TC classifier instead: [`TestProgram::run`] reports its
    /// verdicts as the XDP ones (redirect as [`verdict::TX`], "next"
    /// (`TC_ACT_UNSPEC`) as [`verdict::PASS`], drop as 1).
    pub fn load_tc() -> Result<TestProgram, FastPathError> {
        TestProgram::load_as(true)
    }

    fn load_as(tc: bool) -> Result<TestProgram, FastPathError> {
        let mut ebpf = load_as(16, true, 2048, tc)?;
        let l = |e: aya::maps::MapError| FastPathError::Load(e.to_string());
        let channels = HashMap::try_from(aya::maps::Map::HashMap(take(&mut ebpf, "fp_channels")?)).map_err(l)?;
        let peers = HashMap::try_from(aya::maps::Map::HashMap(take(&mut ebpf, "fp_peers")?)).map_err(l)?;
        let slots = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(take(&mut ebpf, "fp_slots")?)).map_err(l)?;
        let counters =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(take(&mut ebpf, "fp_counters")?)).map_err(l)?;
        Ok(TestProgram { ebpf, tc, channels, peers, slots, counters })
    }

    /// Adds the entries of one channel binding to a peer that is not a
    /// relay address, counting into `slot` (< 16).
    pub fn install(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        channel: u16,
        relay: SocketAddr,
        peer: SocketAddr,
        slot: u32,
    ) {
        self.install_with(client, listener, channel, relay, peer, slot, false);
    }

    /// [`TestProgram::install`], saying whether the peer is one of the
    /// server's relay addresses (relay to relay).
    #[allow(clippy::too_many_arguments)]
    pub fn install_with(
        &mut self,
        client: SocketAddr,
        listener: SocketAddr,
        channel: u16,
        relay: SocketAddr,
        peer: SocketAddr,
        slot: u32,
        peer_is_relay: bool,
    ) {
        let chan = FpChanKey {
            client: FpAddr::of(client),
            listener: FpAddr::of(listener),
            channel: channel.to_be_bytes(),
            pad: [0; 2],
        };
        let pk = FpPeerKey { peer: FpAddr::of(peer), relay: FpAddr::of(relay) };
        let flags = if peer_is_relay { maps::PEER_IS_RELAY } else { 0 };
        let cv = FpChanVal { relay: pk.relay, peer: pk.peer, slot, flags };
        let pv = FpPeerVal { client: chan.client, listener: chan.listener, channel: chan.channel, pad: 0, slot };
        self.channels.insert(chan, cv, 0).expect("insert a channel entry");
        self.peers.insert(pk, pv, 0).expect("insert a peer entry");
    }

    /// Runs the program on an Ethernet frame: the verdict and the frame as
    /// the program left it.
    pub fn run(&mut self, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::new() };
        let no = || io::Error::other("no program");
        let r = if self.tc {
            let prog: &mut SchedClassifier =
                self.ebpf.program_mut(TC_PROGRAM).and_then(|p| p.try_into().ok()).ok_or_else(no)?;
            prog.test_run(opts).map_err(io::Error::other)?
        } else {
            let prog: &mut Xdp = self.ebpf.program_mut(XDP_PROGRAM).and_then(|p| p.try_into().ok()).ok_or_else(no)?;
            prog.test_run(opts).map_err(io::Error::other)?
        };
        out.truncate(r.data_size_out as usize);
        let v = match (self.tc, r.return_value) {
            (false, v) => v,
            (true, 0xffff_ffff) => verdict::PASS,
            (true, 7) => verdict::TX,
            (true, 2) => 1,
            (true, v) => 100 + v,
        };
        Ok((v, out))
    }

    /// A slot's counters, summed over CPUs.
    pub fn slot(&self, slot: u32) -> FpSlotStats {
        read_slot(&self.slots, slot).unwrap_or_default()
    }

    /// The program's counters, summed over CPUs, indexed as [`COUNTERS`].
    pub fn counters(&self) -> [u64; COUNTERS.len()] {
        sum_counters(&self.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(mode: FastPathMode, ips: &[&str]) -> Result<Started, FastPathError> {
        let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        FastPath::start(mode, &[], &ips, 1024, 2048, 1)
    }

    #[test]
    fn auto_runs_the_socket_path_and_says_why() {
        for (ips, why) in
            [(&["0.0.0.0"][..], "wildcard"), (&["127.0.0.1"][..], "loopback only"), (&["192.0.2.77"][..], "none holds")]
        {
            let s = start(FastPathMode::Auto, ips).expect("auto never fails the start");
            assert!(s.fast.is_none() && s.shards.is_empty(), "{ips:?}");
            assert!(s.why.starts_with("socket path: ") && s.why.contains(why), "{ips:?}: {}", s.why);
        }
        let off = start(FastPathMode::Off, &["127.0.0.1"]).unwrap();
        assert_eq!((off.fast.is_none(), off.why.as_str()), (true, "socket path: server.fast_path is off"));
    }

    #[test]
    fn a_forced_mode_fails_the_start_with_the_cause() {
        let e = start(FastPathMode::Xdp, &["0.0.0.0"]).err().expect("a wildcard cannot be forced");
        assert!(e.to_string().contains("wildcard 0.0.0.0"), "{e}");
        let e = start(FastPathMode::Tc, &["192.0.2.77"]).err().expect("no interface holds it");
        assert!(e.to_string().contains("no interface"), "{e}");
    }

    #[test]
    fn modes_parse_as_configured() {
        for m in [FastPathMode::Auto, FastPathMode::Xdp, FastPathMode::XdpGeneric, FastPathMode::Tc, FastPathMode::Off]
        {
            assert_eq!(FastPathMode::parse(m.name()), Some(m));
        }
        assert_eq!(FastPathMode::parse("ebpf"), None);
    }
}
