//! Configuration: a TOML file, command-line flags over it, and an embedded
//! default that is safe to run as is. Every error names the file (or the
//! command line), the line and the key, before any socket is opened.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use relay_core::server::Rfc5780;
use serde::Deserialize;

/// A configuration error: where, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<command line>`.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// The key, dotted (`relay.ports`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: {}: {}", self.file, self.key, self.message),
            (l, true) => write!(f, "{}:{}: {}", self.file, l, self.message),
            (l, false) => write!(f, "{}:{}: {}: {}", self.file, l, self.key, self.message),
        }
    }
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    file: String,
    text: String,
}

impl Origin {
    fn command_line() -> Origin {
        Origin { file: "<command line>".into(), text: String::new() }
    }

    /// The line on which `key`'s value stands (best effort: the first line
    /// assigning the key's last component), 0 when unknown.
    fn line_of(&self, key: &str) -> usize {
        let last = key.rsplit('.').next().unwrap_or(key);
        let last = last.split('[').next().unwrap_or(last);
        self.text
            .lines()
            .position(|l| {
                let l = l.trim_start();
                l.strip_prefix(last).is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map_or(0, |i| i + 1)
    }

    fn error(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        ConfigError { file: self.file.clone(), line: self.line_of(key), key: key.into(), message: message.to_string() }
    }
}

/// Which data plane backend to run.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    /// io_uring when available, else portable.
    #[default]
    Auto,
    /// io_uring only.
    #[value(name = "io_uring")]
    IoUring,
    /// epoll + recvmmsg/sendmmsg.
    Portable,
}

/// Which kernel fast path to run (`server.fast_path`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FastPathName {
    /// Native XDP where the devices allow it, else the socket path.
    #[default]
    Auto,
    /// Native XDP or a start-up error.
    Xdp,
    /// Generic (skb) XDP or a start-up error.
    XdpGeneric,
    /// A TC classifier at clsact ingress or a start-up error.
    Tc,
    /// The socket path only.
    Off,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// The authentication realm.
    pub realm: String,
    /// SOFTWARE attribute; empty sends none.
    pub software: String,
    /// Shards (threads); 0 = one per core.
    pub shards: usize,
    /// Pin each shard to a core.
    pub pin_cores: bool,
    /// Data plane backend.
    pub backend: BackendName,
    /// Seconds a graceful stop waits for allocations to end.
    pub drain_timeout: u64,
    /// The kernel fast path for UDP ChannelData (XDP).
    pub fast_path: FastPathName,
    /// Interfaces for the fast path; empty: those holding the UDP
    /// listeners' and relay addresses.
    pub fast_path_interfaces: Vec<String>,
    /// Other nodes new clients are sent to (300 Try Alternate) while
    /// draining or loaded: `"IP:PORT"` or `{ address, tls, domain }`
    /// (crate::alternates).
    pub alternates: Vec<toml::Value>,
    /// Redirect new allocations once this many are held (all shards).
    pub redirect_above_allocations: Option<u64>,
    /// Redirect new allocations above this fraction of a shard's relay ports.
    pub redirect_above_relay_ports: Option<f64>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            realm: "turn-relay".into(),
            software: String::new(),
            shards: 0,
            pin_cores: true,
            backend: BackendName::Auto,
            drain_timeout: 30,
            fast_path: FastPathName::Auto,
            fast_path_interfaces: Vec::new(),
            alternates: Vec::new(),
            redirect_above_allocations: None,
            redirect_above_relay_ports: None,
        }
    }
}

/// `[listen]`. Each list is `None` when neither the file nor a flag sets
/// it: the default (UDP and TCP on `0.0.0.0:3478`) applies only when no
/// list is set at all ([`ListenSection::listeners`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSection {
    /// Addresses served over UDP *and* TCP (as coturn's `listening-ip`).
    pub addresses: Option<Vec<SocketAddr>>,
    /// Addresses served over UDP only.
    pub udp: Option<Vec<SocketAddr>>,
    /// Addresses served over TCP only (TURN over TCP).
    pub tcp: Option<Vec<SocketAddr>>,
    /// TLS addresses clients reach (TURN over TLS); needs `[tls]`.
    pub tls: Option<Vec<SocketAddr>>,
    /// RFC 5780 NAT behaviour discovery: the server's second IP. With it,
    /// UDP is also served on this IP and on a second port, so that the
    /// four addresses `A1:P1`, `A1:P2`, `A2:P1`, `A2:P2` exist (A1:P1 is the
    /// first UDP address).
    pub rfc5780_other: Option<IpAddr>,
    /// RFC 5780: the second port P2; default P1 + 1.
    pub rfc5780_port: Option<u16>,
    /// Join listeners another process already holds on these addresses
    /// (SO_REUSEPORT), on purpose: the new process of a zero-downtime
    /// restart. Without it the data plane refuses to start there.
    pub handover: bool,
    /// Trusted L4 load balancers: TCP and TLS connections from these
    /// networks must begin with a PROXY protocol header (v1 or v2), whose
    /// client address is then used; empty: no connection may carry one.
    pub proxy_protocol_from: Vec<IpNet>,
    /// `--no-tcp`: no TCP listener at all, whatever the lists say (TLS
    /// stays). Command line only.
    #[serde(skip)]
    pub no_tcp: bool,
}

/// The listeners the data plane opens, resolved from `[listen]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listeners {
    /// UDP: `addresses`, then `udp`.
    pub udp: Vec<SocketAddr>,
    /// TCP: `addresses`, then `tcp`; none with `--no-tcp`.
    pub tcp: Vec<SocketAddr>,
    /// TLS: `tls`.
    pub tls: Vec<SocketAddr>,
}

impl ListenSection {
    /// Where a server listens when no listen address is configured at all:
    /// UDP and TCP on every interface, port 3478.
    pub const DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 3478);

    /// True when the file or a flag set any listen list (even an empty
    /// one): then the default address is not added.
    pub fn any_set(&self) -> bool {
        self.addresses.is_some() || self.udp.is_some() || self.tcp.is_some() || self.tls.is_some()
    }

    /// The listeners: UDP on `addresses` and `udp`, TCP on `addresses` and
    /// `tcp` (none with `no_tcp`), TLS on `tls`, each without repeats and in
    /// the order given; [`Self::DEFAULT`] as an `addresses` entry when no
    /// list is set.
    pub fn listeners(&self) -> Listeners {
        let default = [Self::DEFAULT];
        let both: &[SocketAddr] = if self.any_set() { self.addresses.as_deref().unwrap_or(&[]) } else { &default };
        let join = |more: &Option<Vec<SocketAddr>>| {
            let mut out: Vec<SocketAddr> = Vec::new();
            for a in both.iter().chain(more.iter().flatten()) {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
            out
        };
        let mut tls: Vec<SocketAddr> = Vec::new();
        for a in self.tls.iter().flatten() {
            if !tls.contains(a) {
                tls.push(*a);
            }
        }
        Listeners { udp: join(&self.udp), tcp: if self.no_tcp { Vec::new() } else { join(&self.tcp) }, tls }
    }
}

/// `[relay]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// Local IPs relay sockets bind to; empty = the host's primary address.
    pub ips: Vec<IpAddr>,
    /// Advertised addresses behind a 1:1 NAT: `"PUBLIC"` (for the single
    /// relay IP) or `"PUBLIC/PRIVATE"`, as coturn's `external-ip`.
    pub external: Vec<String>,
    /// Port range `"LO-HI"`, split between shards.
    pub ports: String,
    /// Seconds a released relay port rests before reuse.
    pub quarantine: u64,
    /// Largest datagram relayed, bytes.
    pub max_datagram: usize,
    /// Send a loop turn's datagrams of one flow and size as one GSO send
    /// (`UDP_SEGMENT`).
    pub gso: bool,
    /// Receive coalesced datagrams (`UDP_GRO`).
    pub gro: bool,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            ips: Vec::new(),
            external: Vec::new(),
            ports: "49152-65535".into(),
            quarantine: 60,
            max_datagram: 2048,
            gso: true,
            gro: true,
        }
    }
}

/// `[tls]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `"user:password"` entries.
    pub users: Vec<String>,
    /// A coturn-style user file (`user:password` or `user:0x<md5 key>`).
    pub user_file: Option<PathBuf>,
    /// TURN REST API shared secrets (several for rotation).
    pub rest_secrets: Vec<String>,
    /// Seconds a nonce stays valid.
    pub nonce_lifetime: u64,
    /// Offer SHA-256 keys (RFC 8489 PASSWORD-ALGORITHMS).
    pub sha256: bool,
    /// A user database in coturn's schema: `postgresql://…`, `redis://…`
    /// or `sqlite:///path` (crate::userdb).
    pub database: Option<String>,
    /// A file holding that URL (crate::userdb::load_database_file), so that
    /// its password stays off the command line.
    pub database_file: Option<PathBuf>,
    /// Seconds between scheduled reads of the user database.
    pub database_refresh: u64,
    /// A file holding the nonce secret the nodes of a fleet share (at least
    /// 16 bytes; surrounding whitespace ignored), so that each accepts
    /// the others' nonces; without one every process draws its own.
    pub nonce_secret_file: Option<PathBuf>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            users: Vec::new(),
            user_file: None,
            rest_secrets: Vec::new(),
            nonce_lifetime: 600,
            sha256: true,
            database: None,
            database_file: None,
            database_refresh: 30,
            nonce_secret_file: None,
        }
    }
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Allocations in total; 0 = unlimited.
    pub max_allocations: u32,
    /// Allocations per user; 0 = unlimited.
    pub max_allocations_per_user: u32,
    /// Bandwidth per allocation, bytes per second; 0 = unlimited.
    pub bandwidth: u64,
    /// Default allocation lifetime, seconds.
    pub default_lifetime: u64,
    /// Longest allocation lifetime, seconds.
    pub max_lifetime: u64,
    /// Permissions per allocation.
    pub max_permissions: usize,
    /// Channels per allocation.
    pub max_channels: usize,
    /// Answers per second to unauthenticated UDP requests per source IP.
    pub unauthenticated_rate: u32,
    /// Burst allowance of `unauthenticated_rate`.
    pub unauthenticated_burst: u32,
    /// TCP and TLS client connections per shard.
    pub max_tcp_connections: usize,
    /// TCP and TLS client connections per shard from one source IP; 0 =
    /// no limit.
    pub max_tcp_connections_per_source: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_allocations: 0,
            max_allocations_per_user: 0,
            bandwidth: 0,
            default_lifetime: 600,
            max_lifetime: 3600,
            max_permissions: 64,
            max_channels: 64,
            unauthenticated_rate: 1000,
            unauthenticated_burst: 2000,
            max_tcp_connections: 10_000,
            max_tcp_connections_per_source: 1_000,
        }
    }
}

/// `[peers]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeersSection {
    /// Networks allowed even though the default policy denies them.
    pub allow: Vec<IpNet>,
    /// Networks denied in addition to the default list.
    pub deny: Vec<IpNet>,
}

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve `/metrics`, `/healthz`, `/readyz` here.
    pub enabled: bool,
    /// The HTTP address.
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 9641)) }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Level or tracing filter (`info`, `relay_io=debug`).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { level: "info".into(), format: LogFormat::Human }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSection,
    /// `[listen]`.
    pub listen: ListenSection,
    /// `[relay]`.
    pub relay: RelaySection,
    /// `[tls]`.
    pub tls: TlsSection,
    /// `[auth]`.
    pub auth: AuthSection,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[peers]`.
    pub peers: PeersSection,
    /// `[metrics]`.
    pub metrics: MetricsSection,
    /// `[log]`.
    pub log: LogSection,
    /// `[admin]`: the admin API's token (see `admin.rs`).
    pub admin: crate::admin::AdminSection,
    #[serde(skip)]
    origin: Origin,
}

/// The relay IPs resolved: bind address and advertised address.
pub type RelayAddr = (IpAddr, IpAddr);

impl Config {
    /// Parses TOML text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let origin = Origin { file: file.into(), text: text.into() };
        let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(&origin, "", &e))?;
        let mut c: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            toml_error(&origin, &key, e.inner())
        })?;
        c.origin = origin;
        Ok(c)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Reads `path`, or the embedded default when there is none.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load(p),
            None => Ok(Config::default()),
        }
    }

    fn origin_of(&self, from_cli: bool) -> Origin {
        if from_cli { Origin::command_line() } else { self.origin.clone() }
    }

    /// An error about `key`, naming where its value came from (the command
    /// line when `cli_keys` holds the key, else the file and line).
    pub fn error_at(&self, cli_keys: &[&str], key: &str, message: impl fmt::Display) -> ConfigError {
        self.origin_of(cli_keys.contains(&key)).error(key, message)
    }

    /// Checks values that parse but make no sense, and resolves the relay
    /// addresses. `cli_keys` are the keys the command line set (errors in
    /// them name the command line).
    pub fn validate(&self, cli_keys: &[&str]) -> Result<(Vec<RelayAddr>, (u16, u16)), ConfigError> {
        let origin = |key: &str| self.origin_of(cli_keys.contains(&key));
        let ports = parse_ports(&self.relay.ports).map_err(|m| origin("relay.ports").error("relay.ports", m))?;
        self.check_listeners(cli_keys)?;
        self.check_proxy_protocol(cli_keys)?;
        for (i, u) in self.auth.users.iter().enumerate() {
            let ok = u.split_once(':').is_some_and(|(n, p)| !n.trim().is_empty() && !p.is_empty());
            if !ok {
                let key = format!("auth.users[{i}]");
                return Err(origin("auth.users").error(&key, "expected \"user:password\""));
            }
        }
        self.rfc5780(cli_keys)?;
        self.alternates(cli_keys)?;
        if let Some(url) = &self.auth.database {
            crate::userdb::DatabaseUrl::parse(url).map_err(|m| origin("auth.database").error("auth.database", m))?;
        }
        let most = relay_core::server::auth::MAX_REST_SECRETS;
        if self.auth.rest_secrets.len() > most {
            let m = format!("at most {most} secrets (each is tried per request)");
            return Err(origin("auth.rest_secrets").error("auth.rest_secrets", m));
        }
        if !(1..=86_400).contains(&self.auth.database_refresh) {
            let key = "auth.database_refresh";
            return Err(origin(key).error(key, "must be within 1..=86400 seconds"));
        }
        if !self.listen.listeners().tls.is_empty() && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err(origin("listen.tls").error("listen.tls", "TLS listeners need tls.cert and tls.key"));
        }
        if self.limits.max_lifetime == 0 || self.limits.default_lifetime == 0 {
            return Err(origin("limits.max_lifetime").error("limits.max_lifetime", "lifetimes must be positive"));
        }
        if self.relay.max_datagram < 576 || self.relay.max_datagram > 65535 {
            return Err(origin("relay.max_datagram").error("relay.max_datagram", "must be within 576..=65535"));
        }
        let ips = if self.relay.ips.is_empty() { vec![primary_ip()] } else { self.relay.ips.clone() };
        let mut addrs: Vec<RelayAddr> = ips.iter().map(|&ip| (ip, ip)).collect();
        for e in &self.relay.external {
            let o = origin("relay.external");
            let (public, private) = match e.split_once('/') {
                Some((p, q)) => (p, Some(q)),
                None => (e.as_str(), None),
            };
            let public: IpAddr =
                public.trim().parse().map_err(|_| o.error("relay.external", format!("bad address {public:?}")))?;
            match private {
                Some(q) => {
                    let q: IpAddr =
                        q.trim().parse().map_err(|_| o.error("relay.external", format!("bad address {q:?}")))?;
                    let Some(a) = addrs.iter_mut().find(|a| a.0 == q) else {
                        return Err(o.error("relay.external", format!("{q} is not one of relay.ips")));
                    };
                    a.1 = public;
                }
                None if addrs.len() == 1 => addrs[0].1 = public,
                None => {
                    return Err(o.error("relay.external", "with several relay IPs, write PUBLIC/PRIVATE"));
                }
            }
        }
        Ok((addrs, ports))
    }
}

impl Config {
    /// At least one listener is left, and no TLS listener shares a port
    /// with a plain TCP one (the kernel would hand each connection to
    /// either at random, or to the more specific address).
    fn check_listeners(&self, cli_keys: &[&str]) -> Result<(), ConfigError> {
        let l = self.listen.listeners();
        let origin = |key: &str| self.origin_of(cli_keys.contains(&key));
        if l.udp.is_empty() && l.tcp.is_empty() && l.tls.is_empty() {
            let given = [
                ("listen.addresses", &self.listen.addresses),
                ("listen.udp", &self.listen.udp),
                ("listen.tcp", &self.listen.tcp),
                ("listen.tls", &self.listen.tls),
            ];
            let key = if self.listen.no_tcp {
                "listen.tcp"
            } else {
                given.iter().find(|(_, v)| v.is_some()).map_or("listen.addresses", |(k, _)| *k)
            };
            let why = if self.listen.no_tcp {
                "no listen address is left once --no-tcp removes the TCP ones"
            } else {
                "no listen address: the lists set are empty (the default, UDP and TCP on 0.0.0.0:3478, \
                 applies only when no listen list is set)"
            };
            return Err(origin(key).error(key, why));
        }
        for t in &l.tls {
            let clash = l.tcp.iter().find(|a| {
                a.port() == t.port() && (a.ip() == t.ip() || a.ip().is_unspecified() || t.ip().is_unspecified())
            });
            if let Some(a) = clash {
                let m = format!(
                    "{t} shares its port with the TCP listener {a} (listen.addresses or listen.tcp): \
                     TURN over TLS and over plain TCP need different ports"
                );
                return Err(origin("listen.tls").error("listen.tls", m));
            }
        }
        Ok(())
    }

    /// `server.alternates`, checked with the redirect thresholds: entries
    /// well formed (crate::alternates), none of them one of this node's
    /// listeners (a wildcard listener's port on any address of the host).
    pub fn alternates(&self, cli_keys: &[&str]) -> Result<Vec<relay_core::server::Alternate>, ConfigError> {
        let s = &self.server;
        let fail = |e: crate::alternates::AlternateError| {
            // The line of the list (entries may be inline tables).
            let top = e.key.split('[').next().unwrap_or(&e.key);
            let origin = self.origin_of(cli_keys.contains(&top));
            ConfigError { line: origin.line_of(top), ..origin.error(&e.key, e.message) }
        };
        let alts = crate::alternates::parse(&s.alternates).map_err(fail)?;
        let l = self.listen.listeners();
        let listeners: Vec<SocketAddr> = l.udp.iter().chain(&l.tcp).chain(&l.tls).copied().collect();
        // A wildcard listener answers on every address of the host.
        let wildcard = listeners.iter().any(|l| l.ip().is_unspecified()) && !alts.is_empty();
        let host = if wildcard { relay_io::sys::host_addresses().unwrap_or_default() } else { Vec::new() };
        for (i, a) in alts.iter().enumerate() {
            if let Some(x) = crate::alternates::own_listener(a, &listeners, &host) {
                let key = format!("server.alternates[{i}]");
                let message = format!("{x} is this node's own listener");
                return Err(fail(crate::alternates::AlternateError { key, message }));
            }
        }
        crate::alternates::check_thresholds(&alts, s.redirect_above_allocations, s.redirect_above_relay_ports)
            .map_err(fail)?;
        Ok(alts)
    }

    /// The RFC 5780 address pair (`listen.rfc5780_other`), checked: the
    /// first UDP listen address must name a specific IP and port, the other IP
    /// must differ from it and be of its family.
    pub fn rfc5780(&self, cli_keys: &[&str]) -> Result<Option<Rfc5780>, ConfigError> {
        let Some(other_ip) = self.listen.rfc5780_other else { return Ok(None) };
        let key = "listen.rfc5780_other";
        let origin = self.origin_of(cli_keys.contains(&key));
        let primary = match self.listen.listeners().udp.first() {
            Some(a) if !a.ip().is_unspecified() && a.port() != 0 => *a,
            first => {
                let first = first.map_or_else(|| "none".to_owned(), |a| a.to_string());
                let m = format!(
                    "RFC 5780 needs the first UDP listen address (listen.addresses, then listen.udp) to name a \
                     specific IP and port, not {first}"
                );
                return Err(origin.error(key, m));
            }
        };
        let port = match self.listen.rfc5780_port {
            Some(p) => p,
            None => primary.port().checked_add(1).ok_or_else(|| {
                origin.error("listen.rfc5780_port", format!("no port after {}: set rfc5780_port", primary.port()))
            })?,
        };
        let other = SocketAddr::new(other_ip, port);
        Rfc5780::new(primary, other)
            .map(Some)
            .map_err(|e| origin.error(key, format!("{e} (primary {primary}, other {other})")))
    }
}

impl Config {
    /// `listen.proxy_protocol_from`: networks written as networks (no host
    /// bits: `10.0.0.5/8` is likely a slip for `10.0.0.5/32` or
    /// `10.0.0.0/8`), and a TCP or TLS listener for them to apply to.
    fn check_proxy_protocol(&self, cli_keys: &[&str]) -> Result<(), ConfigError> {
        let key = "listen.proxy_protocol_from";
        let nets = &self.listen.proxy_protocol_from;
        let origin = self.origin_of(cli_keys.contains(&key));
        for (i, n) in nets.iter().enumerate() {
            if n.addr() != n.network() {
                let m = format!(
                    "{n} has host bits set: write {} (the network) or {}/{} (one host)",
                    n.trunc(),
                    n.addr(),
                    n.max_prefix_len()
                );
                return Err(origin.error(&format!("{key}[{i}]"), m));
            }
        }
        let l = self.listen.listeners();
        if !nets.is_empty() && l.tcp.is_empty() && l.tls.is_empty() {
            return Err(origin.error(key, "the PROXY protocol applies to TCP and TLS listeners, and there is none"));
        }
        Ok(())
    }
}

fn toml_error(origin: &Origin, key: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map_or_else(|| origin.line_of(key), |s| origin.text[..s.start.min(origin.text.len())].lines().count().max(1));
    let line = if e.span().is_some_and(|s| s.start > 0 && origin.text.as_bytes().get(s.start - 1) == Some(&b'\n')) {
        line + 1
    } else {
        line
    };
    ConfigError { file: origin.file.clone(), line, key: key.into(), message: e.message().trim().to_string() }
}

/// Parses `"LO-HI"`.
pub fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("expected \"LO-HI\", got {s:?}"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("bad port {lo:?}"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("bad port {hi:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("empty or invalid range {lo}-{hi}"));
    }
    Ok((lo, hi))
}

/// The address the host would use to reach the Internet (no packet is
/// sent: connecting a UDP socket only picks a route).
pub fn primary_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn listeners(text: &str) -> Listeners {
        let c = Config::parse("r", text).unwrap();
        c.validate(&[]).unwrap();
        c.listen.listeners()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse("x.toml", "").unwrap();
        let any = addrs(&["0.0.0.0:3478"]);
        assert_eq!(c.listen.listeners(), Listeners { udp: any.clone(), tcp: any, tls: vec![] });
        assert!(c.validate(&[]).is_ok());
    }

    #[test]
    fn listen_lists_combine() {
        // addresses: UDP and TCP; nothing on the wildcard.
        let l = listeners("[listen]\naddresses = [\"127.0.0.1:3478\"]\n");
        assert_eq!((l.udp, l.tcp), (addrs(&["127.0.0.1:3478"]), addrs(&["127.0.0.1:3478"])));
        // One transport's address brings no listener for another.
        let l = listeners("[listen]\nudp = [\"127.0.0.1:3478\"]\n");
        assert_eq!((l.udp, l.tcp), (addrs(&["127.0.0.1:3478"]), vec![]));
        let l = listeners("[listen]\ntcp = [\"127.0.0.1:3478\"]\n");
        assert_eq!((l.udp, l.tcp), (vec![], addrs(&["127.0.0.1:3478"])));
        let text = "[listen]\ntls = [\"127.0.0.1:5349\"]\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        assert_eq!(listeners(text), Listeners { udp: vec![], tcp: vec![], tls: addrs(&["127.0.0.1:5349"]) });
        // addresses first, then the transport's own list, without repeats.
        let l = listeners("[listen]\naddresses = [\"10.0.0.1:3478\"]\nudp = [\"10.0.0.2:3478\", \"10.0.0.1:3478\"]\n");
        assert_eq!((l.udp, l.tcp), (addrs(&["10.0.0.1:3478", "10.0.0.2:3478"]), addrs(&["10.0.0.1:3478"])));
        let l = listeners("[listen]\naddresses = [\"10.0.0.1:3478\"]\ntcp = [\"10.0.0.1:3478\", \"10.0.0.1:443\"]\n");
        assert_eq!((l.udp, l.tcp), (addrs(&["10.0.0.1:3478"]), addrs(&["10.0.0.1:3478", "10.0.0.1:443"])));
        // --no-tcp: no TCP whatever the lists say; the default UDP stays.
        let mut c = Config::parse("r", "[listen]\naddresses = [\"10.0.0.1:3478\"]\ntcp = [\"10.0.0.1:80\"]\n").unwrap();
        c.listen.no_tcp = true;
        assert_eq!((c.listen.listeners().udp, c.listen.listeners().tcp), (addrs(&["10.0.0.1:3478"]), vec![]));
        let mut c = Config::parse("r", "").unwrap();
        c.listen.no_tcp = true;
        assert_eq!((c.listen.listeners().udp, c.listen.listeners().tcp), (addrs(&["0.0.0.0:3478"]), vec![]));
    }

    #[test]
    fn listen_errors_name_the_key() {
        let e = Config::parse("relay.toml", "[listen]\naddresses = [\"127.0.0.1\"]\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.key.as_str()), ("relay.toml", 2, "listen.addresses[0]"), "{e}");
        // An empty list is a list set: no default then, and nothing left.
        let c = Config::parse("relay.toml", "[listen]\n\ntcp = []\n").unwrap();
        let e = c.validate(&[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "listen.tcp"), "{e}");
        assert!(e.message.contains("no listen address"), "{e}");
        let mut c = Config::parse("relay.toml", "[listen]\ntcp = [\"127.0.0.1:3478\"]\n").unwrap();
        c.listen.no_tcp = true;
        let e = c.validate(&["listen.tcp"]).unwrap_err();
        assert!(e.to_string().starts_with("<command line>: listen.tcp: "), "{e}");
        // TLS and plain TCP on one port.
        let tls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let text = format!("[listen]\naddresses = [\"0.0.0.0:5349\"]\ntls = [\"192.0.2.1:5349\"]\n{tls}");
        let e = Config::parse("relay.toml", &text).unwrap().validate(&[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "listen.tls"), "{e}");
        let text = format!("[listen]\naddresses = [\"0.0.0.0:3478\"]\ntls = [\"192.0.2.1:5349\"]\n{tls}");
        assert!(Config::parse("relay.toml", &text).unwrap().validate(&[]).is_ok());
        let e =
            Config::parse("relay.toml", "[listen]\ntls = [\"127.0.0.1:5349\"]\n").unwrap().validate(&[]).unwrap_err();
        assert_eq!(e.key, "listen.tls", "{e}");
    }

    #[test]
    fn batching_keys() {
        let c = Config::parse("r", "").unwrap();
        assert!(c.relay.gso && c.relay.gro);
        assert_eq!(c.server.fast_path, FastPathName::Auto);
        let c =
            Config::parse("r", "[server]\nfast_path = \"xdp-generic\"\nfast_path_interfaces = [\"eth0\"]\n").unwrap();
        assert_eq!(
            (c.server.fast_path, c.server.fast_path_interfaces.as_slice()),
            (FastPathName::XdpGeneric, &["eth0".to_string()][..])
        );
        assert_eq!(Config::parse("r", "[server]\nfast_path = \"tc\"\n").unwrap().server.fast_path, FastPathName::Tc);
        let e = Config::parse("r", "[server]\nfast_path = \"ebpf\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "server.fast_path"), "{e}");
        let c = Config::parse("r", "[relay]\ngso = false\ngro = false\n").unwrap();
        assert!(!c.relay.gso && !c.relay.gro);
        let e = Config::parse("r", "[relay]\ngso = \"no\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "relay.gso"), "{e}");
    }

    #[test]
    fn proxy_protocol_from_key() {
        assert!(Config::parse("r", "").unwrap().listen.proxy_protocol_from.is_empty());
        let text = "[listen]\naddresses = [\"127.0.0.1:3478\"]\nproxy_protocol_from = [\"10.0.0.0/8\", \"fd00::/8\"]\n";
        let c = Config::parse("r", text).unwrap();
        assert!(c.validate(&[]).is_ok());
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        assert_eq!(c.listen.proxy_protocol_from, nets);
        // Not a network: named by file, line and key.
        let e = Config::parse("relay.toml", "[listen]\n\nproxy_protocol_from = [\"10.0.0.0/8\", \"nonsense\"]\n")
            .unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("relay.toml", 3, "listen.proxy_protocol_from[1]"),
            "{e}"
        );
        // Host bits set.
        let c = Config::parse("relay.toml", "[listen]\nproxy_protocol_from = [\"10.1.2.3/8\"]\n").unwrap();
        let e = c.validate(&[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "listen.proxy_protocol_from[0]"), "{e}");
        assert!(e.message.contains("10.0.0.0/8") && e.message.contains("10.1.2.3/32"), "{e}");
        let e = c.validate(&["listen.proxy_protocol_from"]).unwrap_err();
        assert!(e.to_string().starts_with("<command line>: listen.proxy_protocol_from[0]: "), "{e}");
        // Nothing for it to apply to: UDP only.
        let text = "[listen]\nudp = [\"127.0.0.1:3478\"]\nproxy_protocol_from = [\"10.0.0.0/8\"]\n";
        let e = Config::parse("relay.toml", text).unwrap().validate(&[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "listen.proxy_protocol_from"), "{e}");
    }

    #[test]
    fn handover_key() {
        assert!(!Config::parse("r", "").unwrap().listen.handover);
        assert!(Config::parse("r", "[listen]\nhandover = true\n").unwrap().listen.handover);
        let e = Config::parse("r", "[listen]\nhandover = 1\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "listen.handover"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "[server]\nrealm = \"r\"\n\n[relay]\nports = 5\n";
        let e = Config::parse("relay.toml", text).unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.key.as_str()), ("relay.toml", 5, "relay.ports"), "{e}");

        let e = Config::parse("relay.toml", "[server]\nrelm = \"r\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "server.relm"), "{e}");
        assert!(e.message.contains("relm"), "{e}");

        let e = Config::parse("relay.toml", "[peers]\nallow = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "peers.allow[0]"), "{e}");

        let c = Config::parse("relay.toml", "[relay]\nports = \"9-3\"\n").unwrap();
        let e = c.validate(&[]).unwrap_err();
        assert_eq!(e.to_string(), "relay.toml:2: relay.ports: empty or invalid range 9-3");
        let e = c.validate(&["relay.ports"]).unwrap_err();
        assert!(e.to_string().starts_with("<command line>: relay.ports:"), "{e}");

        let c = Config::parse("relay.toml", "[auth]\nusers = [\"nopassword\"]\n").unwrap();
        assert_eq!(c.validate(&[]).unwrap_err().to_string(), "relay.toml:2: auth.users[0]: expected \"user:password\"");
    }

    #[test]
    fn user_database_keys() {
        let c = Config::parse("r", "").unwrap();
        assert_eq!((c.auth.database.as_deref(), c.auth.database_refresh), (None, 30));
        let text = "[auth]\ndatabase = \"postgresql://turn:pw@127.0.0.1/coturn\"\ndatabase_refresh = 5\n";
        let c = Config::parse("relay.toml", text).unwrap();
        assert!(c.validate(&[]).is_ok());
        assert_eq!(c.auth.database_refresh, 5);
        let text = "[auth]\n\ndatabase = \"mysql://turn:hunter2@db/coturn\"\n";
        let e = Config::parse("relay.toml", text).unwrap().validate(&[]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.key.as_str()), ("relay.toml", 3, "auth.database"), "{e}");
        assert!(e.message.contains("unknown scheme") && !e.to_string().contains("hunter2"), "{e}");
        let e = Config::parse("r", "[auth]\ndatabase = \"sqlite://turndb\"\n").unwrap().validate(&[]).unwrap_err();
        assert!(e.message.contains("absolute"), "{e}");
        let e = Config::parse("relay.toml", "[auth]\ndatabase_refresh = 0\n").unwrap().validate(&[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "auth.database_refresh"), "{e}");
        let e = Config::parse("relay.toml", "[auth]\ndatabase = 5\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "auth.database"), "{e}");
        let c = Config::parse("relay.toml", "[auth]\ndatabase = \"redis://:pw@\"\n").unwrap();
        let e = c.validate(&["auth.database"]).unwrap_err();
        assert!(e.to_string().starts_with("<command line>: auth.database: "), "{e}");
    }

    #[test]
    fn rfc5780_pair() {
        let c = Config::parse("r", "[listen]\nudp = [\"192.0.2.1:3478\"]\nrfc5780_other = \"192.0.2.2\"\n").unwrap();
        let pair = c.rfc5780(&[]).unwrap().unwrap();
        assert_eq!(pair.other, "192.0.2.2:3479".parse::<SocketAddr>().unwrap());
        assert!(c.validate(&[]).is_ok());
        let c = Config::parse("r", "[listen]\nrfc5780_other = \"192.0.2.2\"\n").unwrap();
        let e = c.validate(&[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "listen.rfc5780_other"), "{e}");
        assert!(e.message.contains("0.0.0.0:3478"), "{e}");
        let c = Config::parse("r", "[listen]\nudp = [\"192.0.2.1:3478\"]\nrfc5780_other = \"::1\"\n").unwrap();
        assert!(c.validate(&[]).unwrap_err().message.contains("one family"));
        let text = "[listen]\nudp = [\"192.0.2.1:3478\"]\nrfc5780_other = \"192.0.2.1\"\n";
        assert!(
            Config::parse("r", text)
                .unwrap()
                .validate(&["listen.rfc5780_other"])
                .unwrap_err()
                .to_string()
                .starts_with("<command line>: listen.rfc5780_other:")
        );
        let text = "[listen]\nudp = [\"192.0.2.1:3478\"]\nrfc5780_other = \"192.0.2.2\"\nrfc5780_port = 4000\n";
        assert_eq!(Config::parse("r", text).unwrap().rfc5780(&[]).unwrap().unwrap().other.port(), 4000);
    }

    #[test]
    fn external_addresses() {
        let c = Config::parse("r", "[relay]\nips = [\"10.0.0.5\"]\nexternal = [\"203.0.113.9\"]\n").unwrap();
        let (addrs, _) = c.validate(&[]).unwrap();
        assert_eq!(addrs, vec![("10.0.0.5".parse().unwrap(), "203.0.113.9".parse().unwrap())]);
        let c =
            Config::parse("r", "[relay]\nips = [\"10.0.0.5\", \"10.0.0.6\"]\nexternal = [\"203.0.113.9\"]\n").unwrap();
        assert!(c.validate(&[]).is_err());
        let c =
            Config::parse("r", "[relay]\nips = [\"10.0.0.5\", \"10.0.0.6\"]\nexternal = [\"203.0.113.9/10.0.0.6\"]\n")
                .unwrap();
        let (addrs, _) = c.validate(&[]).unwrap();
        assert_eq!(addrs[1].1, "203.0.113.9".parse::<IpAddr>().unwrap());
    }
}
