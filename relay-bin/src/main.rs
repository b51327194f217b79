//! `turn-relay`: the STUN/TURN relay server.
//!
//! With no arguments it serves on an embedded default configuration that is
//! safe: authentication on (a random password printed at start), the
//! default peer policy, UDP port 3478, metrics on loopback.

mod admin;
mod alternates;
mod config;
mod metrics;
mod probe;
mod quota;
mod userdb;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use ipnet::IpNet;
use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::policy::PeerPolicy;
use relay_core::server::{Server, ServerConfig, ServerParts};
use relay_io::fastpath::FastPathMode;
use relay_io::stream::StreamLimits;
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts};

use crate::config::{BackendName, Config, ConfigError, LogFormat};
use crate::quota::Quotas;

/// Command line. Every flag overrides the configuration file's key of the
/// same meaning; repeatable flags replace the file's list.
#[derive(Debug, Parser)]
#[command(
    name = "turn-relay",
    version,
    about = "A fast STUN/TURN relay (RFC 8489, RFC 8656)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Instead of serving: a client check (see `turn-relay probe --help`).
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Run `turn-bench demo` (found next to turn-relay or on PATH): the
    /// relay on loopback with a few seconds of load from the bundled load
    /// generator, and what it measured.
    #[arg(long)]
    demo: bool,
    /// Length of the --demo load, seconds.
    #[arg(long, default_value_t = 5)]
    demo_seconds: u64,
    /// Listen address for UDP and TCP (repeatable) [listen.addresses]. With
    /// no listen address at all: UDP and TCP on 0.0.0.0:3478.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Listen address for UDP only (repeatable) [listen.udp].
    #[arg(long, value_name = "ADDR")]
    listen_udp: Vec<SocketAddr>,
    /// Listen address for TCP only (repeatable) [listen.tcp].
    #[arg(long, value_name = "ADDR")]
    listen_tcp: Vec<SocketAddr>,
    /// No TCP listener at all, whatever the other listen settings say (TLS
    /// stays).
    #[arg(long)]
    no_tcp: bool,
    /// TLS listen address (repeatable) [listen.tls].
    #[arg(long, value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,
    /// Join the listeners another turn-relay holds on these addresses, on
    /// purpose: the new process of a zero-downtime restart [listen.handover].
    #[arg(long)]
    handover: bool,
    /// A trusted L4 load balancer's network (repeatable): TCP and TLS
    /// connections from it must begin with a PROXY protocol header
    /// [listen.proxy_protocol_from].
    #[arg(long, value_name = "CIDR")]
    proxy_protocol_from: Vec<IpNet>,
    /// RFC 5780 second IP: also serve UDP on it and on port P+1 [listen.rfc5780_other].
    #[arg(long, value_name = "IP")]
    rfc5780_other: Option<IpAddr>,
    /// RFC 5780 second port (default: the first listen port + 1) [listen.rfc5780_port].
    #[arg(long)]
    rfc5780_port: Option<u16>,
    /// PEM certificate chain [tls.cert].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key [tls.key].
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Relay IP (repeatable) [relay.ips].
    #[arg(long)]
    relay_ip: Vec<IpAddr>,
    /// Relay port range LO-HI [relay.ports].
    #[arg(long)]
    relay_ports: Option<String>,
    /// Advertised relay address PUBLIC or PUBLIC/PRIVATE (repeatable) [relay.external].
    #[arg(long)]
    external_ip: Vec<String>,
    /// Seconds a released relay port rests before reuse [relay.quarantine].
    #[arg(long)]
    quarantine: Option<u64>,
    /// Realm [server.realm].
    #[arg(long)]
    realm: Option<String>,
    /// SOFTWARE attribute [server.software].
    #[arg(long)]
    software: Option<String>,
    /// Shards; 0 = one per core [server.shards].
    #[arg(long)]
    shards: Option<usize>,
    /// Do not pin shards to cores [server.pin_cores = false].
    #[arg(long)]
    no_pin: bool,
    /// Seconds a graceful stop waits for allocations to end [server.drain_timeout].
    #[arg(long)]
    drain_timeout: Option<u64>,
    /// Another node for UDP and TCP clients, IP:PORT (repeatable; with
    /// --alternate-tls, replaces the file's list) [server.alternates].
    #[arg(long, value_name = "ADDR")]
    alternate: Vec<String>,
    /// Another node for TLS clients, IP:PORT[=DOMAIN], DOMAIN sent as
    /// ALTERNATE-DOMAIN (repeatable) [server.alternates].
    #[arg(long, value_name = "ADDR[=DOMAIN]")]
    alternate_tls: Vec<String>,
    /// Redirect new allocations once this many are held [server.redirect_above_allocations].
    #[arg(long, value_name = "N")]
    redirect_above_allocations: Option<u64>,
    /// Redirect new allocations above this fraction (0-1) of a shard's
    /// relay ports [server.redirect_above_relay_ports].
    #[arg(long, value_name = "FRACTION")]
    redirect_above_relay_ports: Option<f64>,
    /// Largest datagram relayed, bytes [relay.max_datagram].
    #[arg(long)]
    max_datagram: Option<usize>,
    /// The kernel fast path for UDP ChannelData [server.fast_path].
    #[arg(long, value_enum)]
    fast_path: Option<config::FastPathName>,
    /// An interface for the fast path (repeat for more) [server.fast_path_interfaces].
    #[arg(long = "fast-path-interface")]
    fast_path_interface: Vec<String>,
    /// Send every UDP datagram alone: no GSO batches [relay.gso = false].
    #[arg(long)]
    no_gso: bool,
    /// Receive every UDP datagram alone: no GRO [relay.gro = false].
    #[arg(long)]
    no_gro: bool,
    /// Seconds a nonce stays valid [auth.nonce_lifetime].
    #[arg(long)]
    nonce_lifetime: Option<u64>,
    /// Do not offer SHA-256 keys [auth.sha256 = false].
    #[arg(long)]
    no_sha256: bool,
    /// Default allocation lifetime, seconds [limits.default_lifetime].
    #[arg(long)]
    default_lifetime: Option<u64>,
    /// Permissions per allocation [limits.max_permissions].
    #[arg(long)]
    max_permissions: Option<usize>,
    /// Channels per allocation [limits.max_channels].
    #[arg(long)]
    max_channels: Option<usize>,
    /// Answers per second to unauthenticated UDP requests per source; 0 =
    /// unlimited [limits.unauthenticated_rate].
    #[arg(long)]
    unauthenticated_rate: Option<u32>,
    /// Burst of unauthenticated answers per source [limits.unauthenticated_burst].
    #[arg(long)]
    unauthenticated_burst: Option<u32>,
    /// TCP and TLS client connections per shard [limits.max_tcp_connections].
    #[arg(long)]
    max_tcp_connections: Option<usize>,
    /// TCP and TLS client connections per shard from one source IP; 0 = no
    /// limit [limits.max_tcp_connections_per_source].
    #[arg(long)]
    max_tcp_connections_per_source: Option<usize>,
    /// Backend [server.backend].
    #[arg(long, value_enum)]
    backend: Option<BackendName>,
    /// user:password (repeatable) [auth.users].
    #[arg(long)]
    user: Vec<String>,
    /// coturn-style user file [auth.user_file].
    #[arg(long)]
    user_file: Option<PathBuf>,
    /// TURN REST API shared secret (repeatable) [auth.rest_secrets].
    #[arg(long)]
    rest_secret: Vec<String>,
    /// User database in coturn's schema: postgresql://…, redis://… or
    /// sqlite:///path [auth.database].
    #[arg(long, value_name = "URL")]
    user_database: Option<String>,
    /// A file holding that URL, which keeps its password out of the process
    /// list [auth.database_file].
    #[arg(long, value_name = "PATH")]
    user_database_file: Option<PathBuf>,
    /// Seconds between scheduled reads of the user database [auth.database_refresh].
    #[arg(long, value_name = "SECS")]
    user_database_refresh: Option<u64>,
    /// Allocations in total [limits.max_allocations].
    #[arg(long)]
    max_allocations: Option<u32>,
    /// Allocations per user [limits.max_allocations_per_user].
    #[arg(long)]
    max_allocations_per_user: Option<u32>,
    /// Bytes per second per allocation [limits.bandwidth].
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Longest allocation lifetime, seconds [limits.max_lifetime].
    #[arg(long)]
    max_lifetime: Option<u64>,
    /// Allow peers in this network (repeatable) [peers.allow].
    #[arg(long)]
    allow_peer: Vec<IpNet>,
    /// Deny peers in this network (repeatable) [peers.deny].
    #[arg(long)]
    deny_peer: Vec<IpNet>,
    /// Metrics/health HTTP address [metrics.listen].
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// No metrics listener [metrics.enabled = false].
    #[arg(long)]
    no_metrics: bool,
    /// Log level or filter [log.level].
    #[arg(long)]
    log_level: Option<String>,
    /// Log format [log.format].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// File holding the admin API's bearer token; without one the admin
    /// API is off [admin.token_file].
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// File holding the nonce secret a fleet's nodes share
    /// [auth.nonce_secret_file].
    #[arg(long, value_name = "FILE")]
    nonce_secret_file: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// STUN/TURN client checks: `probe stun:HOST[:PORT]`, `probe nat
    /// stun:HOST[:PORT]`, `probe turn turn:HOST[:PORT] --user U --password P`.
    Probe(probe::ProbeArgs),
    /// The admin API of a running turn-relay: `admin allocations [--user
    /// U]`, `admin end ID`, `admin end-user USER`, `admin reload`.
    Admin(admin::client::AdminArgs),
}

impl Cli {
    /// Applies the flags over `c`; returns the keys they set.
    fn apply(&self, c: &mut Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        macro_rules! set {
            ($key:literal, $cond:expr, $apply:expr) => {
                if $cond {
                    $apply;
                    keys.push($key);
                }
            };
        }
        // Each listen flag replaces the file's list of its own key; the
        // file's other lists stay (docs/configuration.md).
        set!("listen.addresses", !self.listen.is_empty(), c.listen.addresses = Some(self.listen.clone()));
        set!("listen.udp", !self.listen_udp.is_empty(), c.listen.udp = Some(self.listen_udp.clone()));
        set!("listen.tcp", !self.listen_tcp.is_empty(), c.listen.tcp = Some(self.listen_tcp.clone()));
        set!("listen.tcp", self.no_tcp, c.listen.no_tcp = true);
        set!("listen.tls", !self.listen_tls.is_empty(), c.listen.tls = Some(self.listen_tls.clone()));
        set!("listen.handover", self.handover, c.listen.handover = true);
        set!("listen.proxy_protocol_from", !self.proxy_protocol_from.is_empty(), {
            c.listen.proxy_protocol_from = self.proxy_protocol_from.clone()
        });
        set!("listen.rfc5780_other", self.rfc5780_other.is_some(), c.listen.rfc5780_other = self.rfc5780_other);
        set!("listen.rfc5780_port", self.rfc5780_port.is_some(), c.listen.rfc5780_port = self.rfc5780_port);
        set!("tls.cert", self.tls_cert.is_some(), c.tls.cert = self.tls_cert.clone());
        set!("tls.key", self.tls_key.is_some(), c.tls.key = self.tls_key.clone());
        set!("relay.ips", !self.relay_ip.is_empty(), c.relay.ips = self.relay_ip.clone());
        set!("relay.ports", self.relay_ports.is_some(), c.relay.ports = self.relay_ports.clone().unwrap_or_default());
        set!("relay.external", !self.external_ip.is_empty(), c.relay.external = self.external_ip.clone());
        set!("relay.quarantine", self.quarantine.is_some(), c.relay.quarantine = self.quarantine.unwrap_or(60));
        set!("server.realm", self.realm.is_some(), c.server.realm = self.realm.clone().unwrap_or_default());
        set!("server.software", self.software.is_some(), c.server.software = self.software.clone().unwrap_or_default());
        set!("server.shards", self.shards.is_some(), c.server.shards = self.shards.unwrap_or(0));
        set!("server.pin_cores", self.no_pin, c.server.pin_cores = false);
        set!("server.fast_path", self.fast_path.is_some(), c.server.fast_path = self.fast_path.unwrap_or_default());
        set!("server.fast_path_interfaces", !self.fast_path_interface.is_empty(), {
            c.server.fast_path_interfaces = self.fast_path_interface.clone()
        });
        set!("relay.gso", self.no_gso, c.relay.gso = false);
        set!("relay.gro", self.no_gro, c.relay.gro = false);
        set!("server.drain_timeout", self.drain_timeout.is_some(), {
            c.server.drain_timeout = self.drain_timeout.unwrap_or(30)
        });
        set!("server.alternates", !self.alternate.is_empty() || !self.alternate_tls.is_empty(), {
            let plain = self.alternate.iter().map(|a| toml::Value::String(a.clone()));
            c.server.alternates = plain.chain(self.alternate_tls.iter().map(|a| alternates::tls_flag(a))).collect()
        });
        set!("server.redirect_above_allocations", self.redirect_above_allocations.is_some(), {
            c.server.redirect_above_allocations = self.redirect_above_allocations
        });
        set!("server.redirect_above_relay_ports", self.redirect_above_relay_ports.is_some(), {
            c.server.redirect_above_relay_ports = self.redirect_above_relay_ports
        });
        set!("relay.max_datagram", self.max_datagram.is_some(), {
            c.relay.max_datagram = self.max_datagram.unwrap_or(2048)
        });
        set!("auth.nonce_lifetime", self.nonce_lifetime.is_some(), {
            c.auth.nonce_lifetime = self.nonce_lifetime.unwrap_or(600)
        });
        set!("auth.sha256", self.no_sha256, c.auth.sha256 = false);
        set!("limits.default_lifetime", self.default_lifetime.is_some(), {
            c.limits.default_lifetime = self.default_lifetime.unwrap_or(600)
        });
        set!("limits.max_permissions", self.max_permissions.is_some(), {
            c.limits.max_permissions = self.max_permissions.unwrap_or(64)
        });
        set!("limits.max_channels", self.max_channels.is_some(), {
            c.limits.max_channels = self.max_channels.unwrap_or(64)
        });
        set!("limits.unauthenticated_rate", self.unauthenticated_rate.is_some(), {
            c.limits.unauthenticated_rate = self.unauthenticated_rate.unwrap_or(1000)
        });
        set!("limits.unauthenticated_burst", self.unauthenticated_burst.is_some(), {
            c.limits.unauthenticated_burst = self.unauthenticated_burst.unwrap_or(2000)
        });
        set!("limits.max_tcp_connections", self.max_tcp_connections.is_some(), {
            c.limits.max_tcp_connections = self.max_tcp_connections.unwrap_or(10_000)
        });
        set!("limits.max_tcp_connections_per_source", self.max_tcp_connections_per_source.is_some(), {
            c.limits.max_tcp_connections_per_source = self.max_tcp_connections_per_source.unwrap_or(1_000)
        });
        set!("server.backend", self.backend.is_some(), c.server.backend = self.backend.unwrap_or_default());
        set!("auth.users", !self.user.is_empty(), c.auth.users = self.user.clone());
        set!("auth.user_file", self.user_file.is_some(), c.auth.user_file = self.user_file.clone());
        set!("auth.rest_secrets", !self.rest_secret.is_empty(), c.auth.rest_secrets = self.rest_secret.clone());
        set!("auth.database", self.user_database.is_some(), {
            c.auth.database = self.user_database.clone();
            c.auth.database_file = None;
        });
        set!("auth.database_file", self.user_database_file.is_some(), {
            c.auth.database_file = self.user_database_file.clone();
            c.auth.database = None;
        });
        set!("auth.database_refresh", self.user_database_refresh.is_some(), {
            c.auth.database_refresh = self.user_database_refresh.unwrap_or(30)
        });
        set!("limits.max_allocations", self.max_allocations.is_some(), {
            c.limits.max_allocations = self.max_allocations.unwrap_or(0)
        });
        set!("limits.max_allocations_per_user", self.max_allocations_per_user.is_some(), {
            c.limits.max_allocations_per_user = self.max_allocations_per_user.unwrap_or(0)
        });
        set!("limits.bandwidth", self.bandwidth.is_some(), c.limits.bandwidth = self.bandwidth.unwrap_or(0));
        set!(
            "limits.max_lifetime",
            self.max_lifetime.is_some(),
            c.limits.max_lifetime = self.max_lifetime.unwrap_or(0)
        );
        set!("peers.allow", !self.allow_peer.is_empty(), c.peers.allow = self.allow_peer.clone());
        set!("peers.deny", !self.deny_peer.is_empty(), c.peers.deny = self.deny_peer.clone());
        set!("metrics.listen", self.metrics.is_some(), c.metrics.listen = self.metrics.unwrap_or(c.metrics.listen));
        set!("metrics.enabled", self.no_metrics, c.metrics.enabled = false);
        set!("log.level", self.log_level.is_some(), c.log.level = self.log_level.clone().unwrap_or_default());
        set!("log.format", self.log_format.is_some(), c.log.format = self.log_format.unwrap_or_default());
        set!("admin.token_file", self.admin_token_file.is_some(), {
            c.admin.token_file = self.admin_token_file.clone();
            c.admin.token = None;
        });
        set!(
            "auth.nonce_secret_file",
            self.nonce_secret_file.is_some(),
            c.auth.nonce_secret_file = self.nonce_secret_file.clone()
        );
        keys
    }
}

/// Shortest shared nonce secret accepted (bytes).
const MIN_NONCE_SECRET_LEN: usize = 16;

/// The secret of `auth.nonce_secret_file`, when one is set (surrounding
/// whitespace trimmed). An error names the key and the file, never the
/// secret.
fn nonce_secret(c: &Config, cli_keys: &[&str]) -> Result<Option<String>, ConfigError> {
    let Some(path) = &c.auth.nonce_secret_file else { return Ok(None) };
    let key = "auth.nonce_secret_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| c.error_at(cli_keys, key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim();
    if secret.len() < MIN_NONCE_SECRET_LEN {
        let m = format!("{}: the secret must be at least {MIN_NONCE_SECRET_LEN} bytes long", path.display());
        return Err(c.error_at(cli_keys, key, m));
    }
    Ok(Some(secret.to_owned()))
}

/// What nonces are keyed with: the shared secret of
/// `auth.nonce_secret_file` when one is set (every node given the same file
/// accepts the others' nonces), else the key this process drew at start,
/// kept across reloads so that a reload leaves nonces valid unless the
/// secret or the lifetime changed.
struct NonceSetting {
    own: [u8; 32],
    shared: Option<String>,
    lifetime: u64,
}

impl NonceSetting {
    /// The configuration's setting, with a key of the process's own.
    fn load(c: &Config, cli_keys: &[&str]) -> Result<NonceSetting, ConfigError> {
        let shared = nonce_secret(c, cli_keys)?;
        Ok(NonceSetting { own: random_bytes::<32>(), shared, lifetime: c.auth.nonce_lifetime })
    }

    /// The issuer it gives.
    fn issuer(&self) -> NonceIssuer {
        match &self.shared {
            Some(secret) => NonceIssuer::shared(secret.as_bytes(), self.lifetime),
            None => NonceIssuer::new(self.own, self.lifetime),
        }
    }

    /// Takes a reload's secret and lifetime: true when either changed
    /// (the shards need the new issuer).
    fn update(&mut self, shared: Option<String>, lifetime: u64) -> bool {
        if self.shared == shared && self.lifetime == lifetime {
            return false;
        }
        (self.shared, self.lifetime) = (shared, lifetime);
        true
    }
}

/// `N` bytes from the kernel's random source. Without one (no
/// `/dev/urandom`: a broken container) the process stops with status 2, as
/// for a setting it cannot start with (not 1, which `probe` uses for a
/// server that failed its check): nonce keys, passwords and transaction ids
/// must not be guessable.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)) {
        eprintln!("turn-relay: cannot read /dev/urandom: {e}");
        std::process::exit(2);
    }
    b
}

/// Builds the credentials from the configuration. Without any user or
/// secret, a user `turn` with a random password is made up and returned so
/// that it can be printed.
fn credentials(c: &Config) -> Result<(Credentials, Option<String>), ConfigError> {
    let mut creds = Credentials::new(&c.server.realm);
    for (i, u) in c.auth.users.iter().enumerate() {
        let (name, password) = u.split_once(':').unwrap_or((u, ""));
        creds.add_user(name.trim(), password).map_err(|e| ConfigError {
            file: "configuration".into(),
            line: 0,
            key: format!("auth.users[{i}]"),
            message: e.to_string(),
        })?;
    }
    if let Some(path) = &c.auth.user_file {
        load_user_file(&mut creds, path)?;
    }
    for s in &c.auth.rest_secrets {
        creds.add_rest_secret(s.as_bytes());
    }
    let mut generated = None;
    if c.auth.users.is_empty()
        && c.auth.user_file.is_none()
        && c.auth.rest_secrets.is_empty()
        && c.auth.database.is_none()
    {
        use base64::Engine;
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<12>());
        creds.add_user("turn", &password).map_err(|e| ConfigError {
            file: "<generated>".into(),
            line: 0,
            key: "auth.users".into(),
            message: e.to_string(),
        })?;
        generated = Some(password);
    }
    Ok((creds, generated))
}

/// Reads the coturn-style user file at `path` into `creds` (relay-core
/// parses the text: [`Credentials::parse_user_file`]); returns how many
/// users it held. Errors name the file, and the line and user where the
/// text is wrong (line 0: the file could not be read).
fn load_user_file(creds: &mut Credentials, path: &Path) -> Result<usize, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        key: String::new(),
        message: e.to_string(),
    })?;
    creds.parse_user_file(&file, &text).map_err(|e| ConfigError {
        file: e.file,
        line: e.line,
        key: e.key,
        message: e.message,
    })
}

/// A reload (SIGHUP, or the admin API's, named by `by` in the log line it
/// writes): re-reads the configuration and gives the shards its
/// credentials, joined with the user database's ([`userdb::Composer`]), its
/// certificate and, when the secret or the lifetime changed, a new nonce
/// issuer (`nonces` holds what the shards have); the admin API gets the
/// configuration's token. Nothing applies when any of it fails.
fn apply_reload(
    cli: &Cli,
    running: &Config,
    users: &userdb::Composer,
    relay: &relay_io::RelayHandle,
    admin: Option<&admin::Admin>,
    nonces: &mut NonceSetting,
    by: &str,
) -> Result<(), String> {
    let result = reload(cli, running).map(|r| {
        users.set_configured(r.creds);
        if let Some(tls) = r.tls {
            relay.set_tls_config(&tls);
        }
        if nonces.update(r.nonce_secret, r.nonce_lifetime) {
            relay.set_nonces(&nonces.issuer());
            tracing::info!(
                "{by}: nonce secret or lifetime changed: the shards issue and check nonces with the new setting"
            );
        }
        match admin {
            Some(admin) => admin.set_token(r.admin_token),
            None if r.admin_token.is_some() => {
                tracing::warn!("{by}: admin API token ignored: the metrics listener was off at start (needs a restart)")
            }
            None => {}
        }
    });
    match &result {
        Ok(()) => tracing::info!("{by}: credentials and certificates reloaded"),
        Err(e) => tracing::error!("{by}: reload failed, keeping the old settings: {e}"),
    }
    result
}

/// What a reload read.
struct Reloaded {
    creds: Credentials,
    tls: Option<Arc<relay_io::tls::Rustls>>,
    /// `auth.nonce_secret_file`'s secret, if set.
    nonce_secret: Option<String>,
    nonce_lifetime: u64,
    admin_token: Option<admin::Token>,
}

/// Re-reads the configuration for a SIGHUP: credentials, certificate,
/// nonce secret and admin token; any error keeps every old setting.
fn reload(cli: &Cli, running: &Config) -> Result<Reloaded, String> {
    let mut c = Config::load_or_default(cli.config.as_deref()).map_err(|e| e.to_string())?;
    let cli_keys = cli.apply(&mut c);
    userdb::load_database_file(&mut c, &cli_keys).map_err(|e| e.to_string())?;
    userdb::check_reload(running, &c)?;
    let (creds, _) = credentials(&c).map_err(|e| e.to_string())?;
    let tls = tls_config(&c, &cli_keys).map_err(|e| e.to_string())?;
    let nonce_secret = nonce_secret(&c, &cli_keys).map_err(|e| e.to_string())?;
    let admin_token = admin::load_token(&c, &cli_keys).map_err(|e| e.to_string())?;
    Ok(Reloaded { creds, tls, nonce_secret, nonce_lifetime: c.auth.nonce_lifetime, admin_token })
}

/// The TLS certificate, when `[tls]` names one: read and checked against
/// its key (at the start, by `--check-config`, and at each reload). An
/// error names `tls.cert` or `tls.key` where it was set and the file.
fn tls_config(c: &Config, cli_keys: &[&str]) -> Result<Option<Arc<relay_io::tls::Rustls>>, ConfigError> {
    use relay_io::tls::TlsError;
    let (Some(cert), Some(key)) = (&c.tls.cert, &c.tls.key) else { return Ok(None) };
    relay_io::tls::load_server_config(cert, key).map(Some).map_err(|e| match e {
        TlsError::Certificate { path, message } => c.error_at(cli_keys, "tls.cert", format!("{path}: {message}")),
        TlsError::Key { path, message } => c.error_at(cli_keys, "tls.key", format!("{path}: {message}")),
        TlsError::Refused(why) => {
            let m = format!("{} does not go with the certificate {}: {why}", key.display(), cert.display());
            c.error_at(cli_keys, "tls.key", m)
        }
    })
}

fn server_config(c: &Config) -> ServerConfig {
    ServerConfig {
        software: (!c.server.software.is_empty()).then(|| c.server.software.clone()),
        default_lifetime: Duration::from_secs(c.limits.default_lifetime),
        max_lifetime: Duration::from_secs(c.limits.max_lifetime),
        max_permissions: c.limits.max_permissions,
        max_channels: c.limits.max_channels,
        relay_quarantine: Duration::from_secs(c.relay.quarantine),
        bandwidth_limit: c.limits.bandwidth,
        bandwidth_burst: c.limits.bandwidth,
        sha256: c.auth.sha256,
        unauthenticated_rate: c.limits.unauthenticated_rate,
        unauthenticated_burst: c.limits.unauthenticated_burst,
        // Checked by Config::validate already.
        alternates: c.alternates(&[]).unwrap_or_default(),
        redirect_above_allocations: c.server.redirect_above_allocations,
        redirect_above_relay_ports: c.server.redirect_above_relay_ports,
        ..ServerConfig::default()
    }
}

fn init_logging(c: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match c.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Probe(args)) = &cli.command {
        return probe::main(args);
    }
    if let Some(Command::Admin(args)) = &cli.command {
        return admin::client::main(args);
    }
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("turn-relay: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let cli_keys = cli.apply(&mut config);
    if let Err(e) = userdb::load_database_file(&mut config, &cli_keys) {
        eprintln!("turn-relay: {e}");
        return ExitCode::from(2);
    }
    if cli.demo {
        eprintln!("turn-relay --demo: {}", demo(&config, &cli));
        return ExitCode::FAILURE;
    }
    let (relay_addrs, (port_lo, port_hi)) = match config.validate(&cli_keys) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("turn-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let (creds, generated) = match credentials(&config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("turn-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let nonces = match NonceSetting::load(&config, &cli_keys) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("turn-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_token = match admin::load_token(&config, &cli_keys) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("turn-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match tls_config(&config, &cli_keys) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("turn-relay: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let loaded = Loaded { creds, generated, nonces, admin_token, tls };
    match run(&cli, &config, relay_addrs, (port_lo, port_hi), loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("turn-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--demo`: hands over to the load generator, `turn-bench demo`, which
/// starts this binary on an embedded loopback configuration and drives a
/// short load through it (turn-relay itself holds no load generator).
/// Looks for turn-bench next to this executable (cargo builds both into
/// one directory), then on PATH; returns only when it cannot start it.
fn demo(config: &Config, cli: &Cli) -> String {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().ok();
    let beside = me.as_ref().and_then(|exe| Some(exe.parent()?.join("turn-bench")));
    let bench = beside.clone().filter(|p| p.is_file()).or_else(|| {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths).map(|d| d.join("turn-bench")).find(|p| p.is_file())
    });
    let Some(bench) = bench else {
        let looked = beside.map_or_else(String::new, |p| format!(" (looked for {} and on PATH)", p.display()));
        return format!(
            "the demo is run by the load generator, turn-bench, which is not installed{looked}. \
             From the source tree run `scripts/demo`, which builds both and starts it, or \
             `cargo build --release -p relay-bin -p bench-harness && target/release/turn-bench demo`"
        );
    };
    let mut cmd = std::process::Command::new(&bench);
    cmd.arg("demo").arg("--duration").arg(cli.demo_seconds.max(1).to_string());
    if let Some(me) = &me {
        cmd.arg("--relay").arg(me);
    }
    // What the former in-process demo took from the configuration.
    let mut relay_flags = Vec::new();
    if config.server.backend != BackendName::Auto
        && let Some(v) = clap::ValueEnum::to_possible_value(&config.server.backend)
    {
        relay_flags.extend(["--backend".to_owned(), v.get_name().to_owned()]);
    }
    if let Some(level) = &cli.log_level {
        relay_flags.extend(["--log-level".to_owned(), level.clone()]);
    }
    if !relay_flags.is_empty() {
        cmd.arg("--").args(relay_flags);
    }
    let e = cmd.exec();
    format!("{}: {e}", bench.display())
}

/// What the start read besides the configuration itself (each checked,
/// its errors naming the file, line and key).
struct Loaded {
    /// The credentials.
    creds: Credentials,
    /// The password generated for user "turn" when none is configured.
    generated: Option<String>,
    /// What nonces are keyed with.
    nonces: NonceSetting,
    /// The admin API's token.
    admin_token: Option<admin::Token>,
    /// The TLS certificate.
    tls: Option<Arc<relay_io::tls::Rustls>>,
}

fn run(
    cli: &Cli,
    config: &Config,
    relay_addrs: Vec<(IpAddr, IpAddr)>,
    ports: (u16, u16),
    loaded: Loaded,
) -> Result<(), String> {
    let Loaded { creds, generated, mut nonces, admin_token, tls } = loaded;
    let issuer = nonces.issuer();
    // Signals and admin requests for the main loop. The handlers come
    // first: a SIGHUP or SIGTERM during the slow start (sockets, the user
    // database's first read) waits for the loop instead of ending the
    // process with the signal's default action.
    let (sig_tx, sig_rx) = std::sync::mpsc::channel();
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    let handle = signals.handle();
    let signal_tx = sig_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals;
            for s in signals.forever() {
                if signal_tx.send(admin::LoopEvent::Signal(s)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let shards = match config.server.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let rfc5780 = config.rfc5780(&[]).map_err(|e| e.to_string())?;
    let listeners = config.listen.listeners();
    let mut udp_listen = listeners.udp;
    if let Some(pair) = &rfc5780 {
        for a in pair.listen_addresses() {
            if !udp_listen.contains(&a) {
                udp_listen.push(a);
            }
        }
        tracing::info!(primary = %pair.primary, other = %pair.other, "RFC 5780 NAT behaviour discovery on");
    }
    let io = IoConfig {
        shards,
        pin_cores: config.server.pin_cores,
        backend: match config.server.backend {
            BackendName::Auto => Backend::Auto,
            BackendName::IoUring => Backend::IoUring,
            BackendName::Portable => Backend::Portable,
        },
        udp_listen,
        tcp_listen: listeners.tcp,
        tls_listen: listeners.tls,
        tls,
        relay_ips: relay_addrs.iter().map(|&(bind, advertised)| RelayIp { bind, advertised }).collect(),
        relay_ports: RelayPorts::Range(ports.0, ports.1),
        max_datagram: config.relay.max_datagram,
        stream_limits: StreamLimits {
            max_connections: config.limits.max_tcp_connections,
            max_per_source: config.limits.max_tcp_connections_per_source,
            ..StreamLimits::default()
        },
        handover: config.listen.handover,
        proxy_protocol_from: config.listen.proxy_protocol_from.clone(),
        gso: config.relay.gso,
        gro: config.relay.gro,
        fast_path: match config.server.fast_path {
            config::FastPathName::Auto => FastPathMode::Auto,
            config::FastPathName::Xdp => FastPathMode::Xdp,
            config::FastPathName::XdpGeneric => FastPathMode::XdpGeneric,
            config::FastPathName::Tc => FastPathMode::Tc,
            config::FastPathName::Off => FastPathMode::Off,
        },
        fast_path_interfaces: config.server.fast_path_interfaces.clone(),
        ..IoConfig::default()
    };
    let quotas = Arc::new(Quotas::new(config.limits.max_allocations, config.limits.max_allocations_per_user));
    let policy = PeerPolicy::with_lists(config.peers.allow.clone(), config.peers.deny.clone());
    let server_config = server_config(config);
    let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let make = |_shard: usize| {
        let parts = ServerParts {
            config: server_config.clone(),
            credentials: creds.clone(),
            nonces: issuer.clone(),
            policy: policy.clone(),
            quotas: quotas.clone(),
        };
        let mut server = Server::new(parts, Instant::now(), unix_now, u64::from_le_bytes(random_bytes::<8>()));
        if let Some(pair) = &rfc5780 {
            // Checked by Config::rfc5780 already.
            let _ = server.set_rfc5780(pair.primary, pair.other);
        }
        server
    };
    let relay = Relay::start(&io, make).map_err(|e| e.to_string())?;
    tracing::info!(
        backend = relay.backend().name(),
        reason = relay.backend_reason(),
        shards = relay.shard_count(),
        relay_ports = relay.relay_count(),
        "turn-relay listening on UDP {:?}, TCP {:?}, TLS {:?}",
        relay.udp_addrs(),
        relay.tcp_addrs(),
        relay.tls_addrs()
    );
    if let Some(password) = &generated {
        // Printed once so that a first run is usable; never logged.
        println!("turn-relay: no credentials configured; generated user \"turn\" with password \"{password}\"");
        println!(
            "turn-relay: realm \"{}\", listening on UDP {:?}, TCP {:?}, TLS {:?}",
            config.server.realm,
            relay.udp_addrs(),
            relay.tcp_addrs(),
            relay.tls_addrs()
        );
    }
    let health = Arc::new(metrics::Health::default());
    let mut admin = None;
    if config.metrics.enabled {
        let handle = metrics::install()?;
        let api = Arc::new(admin::Admin::new(admin_token, relay.handle().clone(), sig_tx.clone()));
        let addr = metrics::serve(config.metrics.listen, handle, health.clone(), api.clone())
            .map_err(|e| format!("metrics listener {}: {e}", config.metrics.listen))?;
        tracing::info!("metrics on http://{addr}/metrics");
        api.announce(addr);
        admin = Some(api);
    }
    let peer_lists = relay_io::PeerLists { allow: config.peers.allow.clone(), deny: config.peers.deny.clone() };
    let users = Arc::new(userdb::Composer::new(relay.handle().clone(), creds.clone(), peer_lists));
    let user_database = match &config.auth.database {
        // Checked by Config::validate already.
        Some(url) => Some(
            userdb::Refresher::start(
                userdb::DatabaseUrl::parse(url)?,
                &config.server.realm,
                Duration::from_secs(config.auth.database_refresh),
                users.clone(),
                health.clone(),
                Duration::from_secs(5),
            )
            .map_err(|e| format!("user database thread: {e}"))?,
        ),
        None => None,
    };

    let backend = relay.backend().name();
    let mut stop_requested = false;
    while !relay.is_finished() {
        match sig_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(admin::LoopEvent::Reload(reply)) => {
                let reloaded =
                    apply_reload(cli, config, &users, relay.handle(), admin.as_deref(), &mut nonces, "admin");
                let _ = reply.send(reloaded);
            }
            Ok(admin::LoopEvent::Signal(signal_hook::consts::SIGHUP)) => {
                let _ = apply_reload(cli, config, &users, relay.handle(), admin.as_deref(), &mut nonces, "SIGHUP");
            }
            Ok(_) if stop_requested => {
                tracing::info!("second stop signal: stopping now");
                break;
            }
            Ok(_) => {
                stop_requested = true;
                health.draining.store(true, Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(config.server.drain_timeout);
                tracing::info!(drain_timeout_s = config.server.drain_timeout, "draining: no new allocations");
                relay.drain(deadline);
            }
            Err(_) => {}
        }
        if config.metrics.enabled {
            metrics::publish(&relay.stats(Duration::from_millis(500)), backend, relay.fast_path());
            if let Some(db) = &user_database {
                userdb::publish(db.engine(), db.status());
            }
        }
    }
    if let Some(db) = &user_database {
        db.stop();
    }
    handle.close();
    relay.stop().map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// The listeners of `file` (TOML) with `args` over it, and the keys the
    /// flags set.
    fn listen(file: &str, args: &[&str]) -> (config::Listeners, Vec<&'static str>) {
        let cli = Cli::try_parse_from(std::iter::once("turn-relay").chain(args.iter().copied())).unwrap();
        let mut c = Config::parse("relay.toml", file).unwrap();
        let keys = cli.apply(&mut c);
        c.validate(&keys).unwrap();
        (c.listen.listeners(), keys)
    }

    #[test]
    fn a_nonce_secret_file_keys_every_node_alike() {
        use relay_core::server::auth::NonceCheck;
        let dir = std::env::temp_dir().join(format!("turn-relay-nonce-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        let toml = format!("[auth]\nnonce_secret_file = {:?}\n", file.display().to_string());
        let c = Config::parse("relay.toml", &toml).unwrap();
        std::fs::write(&file, "tiny\n").unwrap();
        let e = NonceSetting::load(&c, &[]).err().unwrap().to_string();
        assert!(e.starts_with("relay.toml:2: auth.nonce_secret_file: ") && e.contains("at least 16"), "{e}");
        assert!(!e.contains("tiny"), "the secret is never shown: {e}");
        std::fs::write(&file, "  a secret long enough for a fleet\n").unwrap();
        let (mut a, b) = (NonceSetting::load(&c, &[]).unwrap(), NonceSetting::load(&c, &[]).unwrap());
        let client: SocketAddr = "198.51.100.1:4000".parse().unwrap();
        let n = a.issuer().issue(1_000, client, true);
        assert_eq!(b.issuer().check(n.as_bytes(), 1_000, client), NonceCheck::Valid);
        // Without the file each process draws its own.
        let own = NonceSetting::load(&Config::default(), &[]).unwrap();
        assert_eq!(own.issuer().check(n.as_bytes(), 1_000, client), NonceCheck::Invalid);
        // A reload: the same secret and lifetime change nothing; dropping the
        // secret goes back to the process's own key, which keeps its nonces
        // across reloads; a new lifetime re-keys with the same key.
        let secret = a.shared.clone();
        assert!(!a.update(secret.clone(), 600));
        assert!(a.update(None, 600));
        let mine = a.issuer().issue(1_000, client, false);
        assert!(!a.update(None, 600));
        assert_eq!(a.issuer().check(mine.as_bytes(), 1_000, client), NonceCheck::Valid);
        assert!(a.update(None, 900));
        assert_eq!(a.issuer().check(mine.as_bytes(), 1_000, client), NonceCheck::Valid);
        assert!(a.update(secret, 900));
        assert_eq!(a.issuer().check(n.as_bytes(), 1_000, client), NonceCheck::Valid);
        std::fs::remove_file(&file).unwrap();
        let e = NonceSetting::load(&c, &[]).err().unwrap().to_string();
        assert!(e.contains("auth.nonce_secret_file: cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listen_flags_combine() {
        let (a, b) = ("127.0.0.1:3478", "127.0.0.2:3478");
        // --listen: UDP and TCP there, and nowhere else.
        let (l, keys) = listen("", &["--listen", a]);
        assert_eq!((l.udp, l.tcp, l.tls), (addrs(&[a]), addrs(&[a]), vec![]));
        assert_eq!(keys, ["listen.addresses"]);
        let (l, _) = listen("", &["--listen", a, "--listen-udp", b]);
        assert_eq!((l.udp, l.tcp), (addrs(&[a, b]), addrs(&[a])));
        let (l, _) = listen("", &["--listen", a, "--listen-tcp", b]);
        assert_eq!((l.udp, l.tcp), (addrs(&[a]), addrs(&[a, b])));
        // The old spelling of "UDP and TCP on A" still means that.
        let (l, _) = listen("", &["--listen", a, "--listen-tcp", a]);
        assert_eq!((l.udp, l.tcp), (addrs(&[a]), addrs(&[a])));
        // One transport's flag brings no default listener for another.
        let (l, _) = listen("", &["--listen-udp", a]);
        assert_eq!((l.udp, l.tcp), (addrs(&[a]), vec![]));
        let (l, _) = listen("", &["--listen-tcp", a]);
        assert_eq!((l.udp, l.tcp), (vec![], addrs(&[a])));
        // --no-tcp wins over every list; alone it keeps the default UDP.
        let (l, _) = listen("", &["--listen", a, "--listen-tcp", b, "--no-tcp"]);
        assert_eq!((l.udp, l.tcp), (addrs(&[a]), vec![]));
        let (l, _) = listen("", &["--no-tcp"]);
        assert_eq!((l.udp, l.tcp), (addrs(&["0.0.0.0:3478"]), vec![]));
        let (l, _) = listen("", &[]);
        assert_eq!((l.udp, l.tcp), (addrs(&["0.0.0.0:3478"]), addrs(&["0.0.0.0:3478"])));
    }

    #[test]
    fn listen_flags_replace_only_their_own_key_of_the_file() {
        let file = "[listen]\naddresses = [\"10.0.0.1:3478\"]\nudp = [\"10.0.0.2:3478\"]\n";
        let (l, _) = listen(file, &[]);
        assert_eq!((l.udp, l.tcp), (addrs(&["10.0.0.1:3478", "10.0.0.2:3478"]), addrs(&["10.0.0.1:3478"])));
        // --listen replaces `addresses`; the file's `udp` stays.
        let (l, _) = listen(file, &["--listen", "127.0.0.1:3478"]);
        assert_eq!((l.udp, l.tcp), (addrs(&["127.0.0.1:3478", "10.0.0.2:3478"]), addrs(&["127.0.0.1:3478"])));
        // --listen-udp replaces `udp`; the file's `addresses` stay.
        let (l, _) = listen(file, &["--listen-udp", "127.0.0.1:3478"]);
        assert_eq!((l.udp, l.tcp), (addrs(&["10.0.0.1:3478", "127.0.0.1:3478"]), addrs(&["10.0.0.1:3478"])));
        // A file with a TCP list only and a UDP flag: each its own.
        let (l, _) = listen("[listen]\ntcp = [\"10.0.0.1:443\"]\n", &["--listen-udp", "10.0.0.1:3478"]);
        assert_eq!((l.udp, l.tcp), (addrs(&["10.0.0.1:3478"]), addrs(&["10.0.0.1:443"])));
    }

    #[test]
    fn listen_flag_errors_name_the_flag_or_key() {
        let e = Cli::try_parse_from(["turn-relay", "--listen-udp", "127.0.0.1"]).unwrap_err().to_string();
        assert!(e.contains("--listen-udp"), "{e}");
        let e = Cli::try_parse_from(["turn-relay", "--listen", "nowhere:1"]).unwrap_err().to_string();
        assert!(e.contains("--listen <ADDR>"), "{e}");
        let cli = Cli::try_parse_from(["turn-relay", "--listen-tcp", "127.0.0.1:3478", "--no-tcp"]).unwrap();
        let mut c = Config::default();
        let keys = cli.apply(&mut c);
        let e = c.validate(&keys).unwrap_err().to_string();
        assert!(e.starts_with("<command line>: listen.tcp: "), "{e}");
    }

    #[test]
    fn user_file_is_read_here_and_parsed_by_relay_core() {
        let path = std::env::temp_dir().join(format!("turn-relay-users-{}.conf", std::process::id()));
        std::fs::write(&path, "alice:secret\nbob:0x8493fbc53ba582fb4c044c456bdc40eb\n").unwrap();
        let mut c = Credentials::new("realm");
        let loaded = load_user_file(&mut c, &path);
        std::fs::write(&path, "carol:pw\n\nno colon\n").unwrap();
        let bad = load_user_file(&mut Credentials::new("realm"), &path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), 2);
        assert!(c.has_user("alice") && c.has_user("bob"));
        // A wrong line: the file, the line number, nothing added.
        let e = bad.unwrap_err();
        assert_eq!((e.file.as_str(), e.line), (path.display().to_string().as_str(), 3), "{e}");
        assert!(e.to_string().starts_with(&format!("{}:3: expected", path.display())), "{e}");
        // A file that cannot be read: its name, line 0.
        let e = load_user_file(&mut c, &path).unwrap_err();
        assert_eq!((e.file, e.line), (path.display().to_string(), 0));
        assert_eq!(c.user_count(), 2);
    }

    #[test]
    fn handover_flag() {
        let cli = Cli::try_parse_from(["turn-relay"]).unwrap();
        let mut c = Config::default();
        cli.apply(&mut c);
        assert!(!c.listen.handover);
        let cli = Cli::try_parse_from(["turn-relay", "--handover"]).unwrap();
        assert_eq!(cli.apply(&mut c), ["listen.handover"]);
        assert!(c.listen.handover);
    }

    #[test]
    fn proxy_protocol_from_flag() {
        let mut c = Config::default();
        let cli = Cli::try_parse_from(["turn-relay"]).unwrap();
        cli.apply(&mut c);
        assert!(c.listen.proxy_protocol_from.is_empty());
        let args = ["turn-relay", "--proxy-protocol-from", "10.0.0.0/8", "--proxy-protocol-from", "192.0.2.7/32"];
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.apply(&mut c), ["listen.proxy_protocol_from"]);
        let want: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.7/32".parse().unwrap()];
        assert_eq!(c.listen.proxy_protocol_from, want);
        assert!(Cli::try_parse_from(["turn-relay", "--proxy-protocol-from", "10.0.0.0/40"]).is_err());
    }

    #[test]
    fn batching_flags() {
        let mut c = Config::default();
        assert!(c.relay.gso && c.relay.gro);
        let cli = Cli::try_parse_from(["turn-relay", "--fast-path", "off", "--fast-path-interface", "eth1"]).unwrap();
        assert_eq!(cli.apply(&mut c), ["server.fast_path", "server.fast_path_interfaces"]);
        assert_eq!(
            (c.server.fast_path, c.server.fast_path_interfaces.as_slice()),
            (config::FastPathName::Off, &["eth1".to_string()][..])
        );
        let cli = Cli::try_parse_from(["turn-relay", "--no-gso"]).unwrap();
        assert_eq!(cli.apply(&mut c), ["relay.gso"]);
        assert!(!c.relay.gso && c.relay.gro);
        let cli = Cli::try_parse_from(["turn-relay", "--no-gro"]).unwrap();
        assert_eq!(cli.apply(&mut c), ["relay.gro"]);
        assert!(!c.relay.gro);
    }
}
