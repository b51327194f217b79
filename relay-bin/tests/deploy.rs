//! The deploy files (`deploy/`) against the binary they deploy:
//!
//! - the shipped configuration, `deploy/turn-relay.toml`, passes
//!   `--check-config` with a test certificate where its `[tls]` points
//!   (`--check-config` reads it; without it, it is refused naming
//!   `tls.cert`), and so does each key it leaves commented out, uncommented
//!   alone (every key it names is real);
//! - every command line of the systemd unit, the Docker image and the
//!   Kubernetes DaemonSet uses flags `turn-relay --help` lists and parses
//!   whole (`--check-config` appended); the Kubernetes Secret holds the
//!   shipped configuration, mounted where the arguments name it, with the
//!   certificate where the configuration names it;
//! - what the files declare agrees with the configuration and the binary:
//!   stop timeouts longer than the drain, the users, capabilities, file
//!   limits, the shared libraries the image installs, the PodMonitor;
//! - and, in a network namespace of its own with a "node address", the
//!   image's and the DaemonSet's command lines really start: the server's
//!   own account of its listeners equals the ports the files declare, each
//!   declared TURN port answers an Allocate, the probes and the scrape path
//!   answer 200 where the files point, the image's HEALTHCHECK passes (and
//!   fails once the server is gone), SIGHUP reloads, SIGTERM turns `/readyz`
//!   to 503 while `/healthz` stays 200 for the whole drain (which the
//!   server reports shorter than the stop timeouts); the shipped
//!   configuration holds no credential (the server generates one); and with
//!   a user database and the admin API on (their metrics appear only then)
//!   every metric the Grafana dashboard queries is exported.
//!
//! The live part substitutes only what cannot work in a test (the static
//! checks only the first): the TLS certificate and key (temporary files),
//! the node's IP (10.203.0.5 on a
//! veth device), and a small relay port range (`--relay-ports`; the full
//! range needs more open files than a test may hold). It needs root and
//! iproute2: it skips elsewhere, and fails in CI. Every process started here
//! is stopped by its pid; every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Killed, run_bounded};
use relay_core::wire::{Attribute, Method};
use serde_norway::Value as Yaml;
use test_kit::{Login, StreamClient, Topology, TurnClient};

const BIN: &str = env!("CARGO_BIN_EXE_turn-relay");
/// Where the unit and the image install the binary.
const BIN_PATH: &str = "/usr/local/bin/turn-relay";
/// Where the unit, the image and the DaemonSet read the configuration.
const CONFIG_PATH: &str = "/etc/turn-relay/turn-relay.toml";
/// The shipped configuration, relative to the repository.
const CONFIG: &str = "deploy/turn-relay.toml";
/// The node's address in the live test's namespace.
const NODE_IP: &str = "10.203.0.5";
/// The relay port range of the live runs (a substitute: see the module docs).
const LIVE_RELAY_PORTS: &str = "49152-49407";
const LIMIT: Duration = Duration::from_secs(15);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------
// The binary

/// `turn-relay ARGS --check-config`, bounded; Err with its output unless
/// it says the configuration is fine.
fn check_config(args: &[String]) -> Result<(), String> {
    let mut all = args.to_vec();
    if !all.iter().any(|a| a == "--check-config") {
        all.push("--check-config".into());
    }
    let out = run_bounded(Command::new(BIN).args(&all), LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("configuration ok") {
        Ok(())
    } else {
        Err(format!("turn-relay {}: {:?}: {stdout}{}", all.join(" "), out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

/// Every `--flag` that `turn-relay --help` lists.
fn help_flags() -> BTreeSet<String> {
    let out = run_bounded(Command::new(BIN).arg("--help"), LIMIT);
    assert!(out.status.success(), "turn-relay --help: {:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let name: String =
            text[i + 2..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').collect();
        if !name.is_empty() {
            flags.insert(format!("--{name}"));
        }
    }
    assert!(flags.contains("--config") && flags.contains("--metrics"), "no flags in --help: {text}");
    flags
}

/// A deployment's command line for this machine: `argv[0]` must be where
/// the deploy files install the binary, and the configuration path where
/// they put the configuration; both are mapped to this checkout's files.
fn local_args(what: &str, argv: &[String], config: &Path) -> Vec<String> {
    assert_eq!(argv.first().map(String::as_str), Some(BIN_PATH), "{what}: runs {argv:?}");
    let mut out = Vec::new();
    let mut it = argv[1..].iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if a == "--config" || a == "-c" {
            let path = it.next().unwrap_or_else(|| panic!("{what}: --config without a path"));
            assert_eq!(path, CONFIG_PATH, "{what}: the configuration path");
            out.push(config.display().to_string());
        }
    }
    assert!(out.iter().any(|a| a == "--config"), "{what}: no --config in {argv:?}");
    out
}

fn assert_flags_exist(what: &str, argv: &[String], flags: &BTreeSet<String>) {
    for a in argv.iter().filter(|a| a.starts_with("--")) {
        let name = a.split('=').next().unwrap_or(a);
        assert!(flags.contains(name), "{what}: {name} is not a flag of turn-relay (--help lists {flags:?})");
    }
}

// ---------------------------------------------------------------------------
// The configuration

/// What a command line makes of the shipped configuration, for the values
/// the deploy files must agree with. Flags the model does not know fail the
/// test, so that a new one cannot silently change what it compares.
struct Effective {
    drain_timeout: u64,
    relay_ports: (u16, u16),
    metrics: SocketAddr,
}

fn effective(what: &str, argv: &[String]) -> Effective {
    let file: toml::Table = toml::from_str(&read(CONFIG)).expect("the shipped configuration is TOML");
    let get = |section: &str, key: &str| file.get(section).and_then(|s| s.get(key)).cloned();
    let mut e = Effective {
        drain_timeout: get("server", "drain_timeout").map_or(30, |v| v.as_integer().expect("an integer") as u64),
        relay_ports: parse_range(get("relay", "ports").as_ref().and_then(|v| v.as_str()).unwrap_or("49152-65535")),
        metrics: get("metrics", "listen")
            .map_or_else(|| "127.0.0.1:9641".into(), |v| v.as_str().expect("a string").to_owned())
            .parse()
            .expect("metrics.listen"),
    };
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{what}: {a} without a value")).clone();
        match a.as_str() {
            "--config" | "-c" => drop(value()),
            "--check-config" => {}
            "--metrics" => e.metrics = value().parse().unwrap_or_else(|err| panic!("{what}: --metrics: {err}")),
            "--drain-timeout" => e.drain_timeout = value().parse().expect("--drain-timeout"),
            "--relay-ports" => e.relay_ports = parse_range(&value()),
            other => panic!("{what}: deploy.rs does not know what {other} sets; teach effective() about it"),
        }
    }
    e
}

fn parse_range(s: &str) -> (u16, u16) {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    (lo.trim().parse().expect("a port"), hi.trim().parse().expect("a port"))
}

/// Seconds of a systemd time span: `90`, `90s`, `1min 30s`, `2min`.
fn seconds(span: &str) -> u64 {
    let mut total = 0;
    for part in span.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().unwrap_or_else(|_| panic!("a time span: {span:?}"));
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "m" | "min" => n * 60,
            "h" => n * 3600,
            unit => panic!("a time span unit deploy.rs does not know: {unit:?} in {span:?}"),
        };
    }
    total
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("turn-relay-deploy-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A commented-out assignment, `# key = value`: its key.
fn commented_key(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let key_len = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))?;
    (key_len > 0 && rest[key_len..].trim_start().starts_with('=')).then(|| &rest[..key_len])
}

/// The configuration `text` with its `tls.cert` and `tls.key` files
/// substituted: a fresh test certificate and key written into `dir` (what
/// an operator installs where the shipped configuration points;
/// `--check-config` and the start read them).
fn with_test_certificate(dir: &TempDir, text: &str) -> (String, test_kit::TestCert) {
    let cert = test_kit::certificate(&["localhost"]);
    let file: toml::Table = toml::from_str(text).unwrap();
    let mut text = text.to_owned();
    for (key, pem) in [("cert", &cert.cert_pem), ("key", &cert.key_pem)] {
        let path = file["tls"][key].as_str().expect("tls paths in the shipped configuration");
        let tmp = dir.write(&format!("tls.{key}"), pem);
        text = text.replace(&format!("\"{path}\""), &format!("{:?}", tmp.display().to_string()));
    }
    (text, cert)
}

/// The shipped configuration with a test certificate (see
/// [`with_test_certificate`]), written into `dir`.
fn shipped_with_test_certificate(dir: &TempDir) -> PathBuf {
    dir.write("turn-relay.toml", &with_test_certificate(dir, &read(CONFIG)).0)
}

#[test]
fn the_shipped_configuration_passes_and_every_key_it_names_is_real() {
    // As shipped, it names a certificate this machine lacks: refused,
    // naming the key and the file.
    let shipped: toml::Table = toml::from_str(&read(CONFIG)).unwrap();
    let cert_path = shipped["tls"]["cert"].as_str().expect("tls.cert in the shipped configuration");
    if !Path::new(cert_path).exists() {
        let e = check_config(&["--config".into(), repo().join(CONFIG).display().to_string()]).unwrap_err();
        assert!(e.contains("tls.cert: ") && e.contains(cert_path), "{e}");
    }
    let dir = TempDir::new("keys");
    let path = shipped_with_test_certificate(&dir);
    check_config(&["--config".into(), path.display().to_string()]).unwrap();

    // Each commented-out key, uncommented alone (replacing the same key's
    // active line in its section, if any), passes too.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut section = String::new();
    let mut sections = Vec::new();
    for l in &lines {
        if let Some(s) = l.trim().strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_owned();
        }
        sections.push(section.clone());
    }
    let active_key = |l: &str| {
        let l = l.trim_start();
        let k: String = l.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        (!k.is_empty() && l[k.len()..].trim_start().starts_with('=')).then_some(k)
    };
    let mut tried = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(key) = commented_key(l) else { continue };
        let variant: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(j, m)| {
                if j == i {
                    m.trim_start().trim_start_matches('#').trim_start().to_owned()
                } else if sections[j] == sections[i] && active_key(m).as_deref() == Some(key) {
                    format!("# {m}")
                } else {
                    (*m).to_owned()
                }
            })
            .collect();
        let p = dir.write(&format!("variant-{i}.toml"), &(variant.join("\n") + "\n"));
        if let Err(e) = check_config(&["--config".into(), p.display().to_string()]) {
            panic!("{CONFIG}:{}: the commented-out [{}] {key} does not pass uncommented: {e}", i + 1, sections[i]);
        }
        tried += 1;
    }
    assert!(tried >= 3, "only {tried} commented-out keys found: the scan is broken");
}

// ---------------------------------------------------------------------------
// The systemd unit

/// A unit file's assignments in order, `(section, key, value)`, with
/// continuation lines joined.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        if let Some(s) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_owned();
        } else {
            let (k, v) = full.split_once('=').unwrap_or_else(|| panic!("a unit line without '=': {full}"));
            out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// The argv of an `Exec*=` value: its prefixes (`-@:+!`) dropped, split
/// at whitespace. The unit quotes nothing (checked), so that is exact.
fn exec_argv(value: &str) -> Vec<String> {
    assert!(
        !value.contains(['"', '\'', '\\', ';']),
        "quoting or ';' in an Exec line: deploy.rs splits at spaces: {value}"
    );
    value.trim_start_matches(['-', '@', ':', '+', '!']).split_whitespace().map(str::to_owned).collect()
}

struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn load() -> Unit {
        Unit(unit_entries(&read("deploy/systemd/turn-relay.service")))
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(s, k, _)| s == "Service" && k == key).map(|(_, _, v)| v.as_str()).collect()
    }

    fn one(&self, key: &str) -> &str {
        match self.all(key).as_slice() {
            [v] => v,
            other => panic!("turn-relay.service: expected one {key}=, found {other:?}"),
        }
    }

    /// The Exec lines that run turn-relay.
    fn turn_relay_lines(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for key in ["ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"] {
            for v in self.all(key) {
                let argv = exec_argv(v);
                if argv.first().is_some_and(|a| a.ends_with("/turn-relay")) {
                    out.push((format!("turn-relay.service {key}"), argv));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile

/// One instruction: the stage it belongs to (0 = first FROM), the
/// instruction (upper case) and its arguments, continuation lines joined.
struct Instr {
    stage: usize,
    op: String,
    args: String,
}

fn dockerfile() -> Vec<Instr> {
    let text = read("deploy/docker/Dockerfile");
    let mut out: Vec<Instr> = Vec::new();
    let mut stage = None::<usize>;
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let (op, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage = Some(stage.map_or(0, |s| s + 1));
        }
        let stage = stage.unwrap_or_else(|| panic!("Dockerfile: {op} before FROM"));
        out.push(Instr { stage, op, args: args.trim().to_owned() });
    }
    out
}

fn final_stage(instrs: &[Instr]) -> impl Iterator<Item = &Instr> {
    let last = instrs.iter().map(|i| i.stage).max().expect("a FROM");
    instrs.iter().filter(move |i| i.stage == last)
}

/// The exec (JSON) form of `op` in the final stage; the shell form would
/// make `sh` PID 1, which passes no SIGTERM on.
fn exec_form(instrs: &[Instr], op: &str) -> Vec<String> {
    let found: Vec<&Instr> = final_stage(instrs).filter(|i| i.op == op).collect();
    let [i] = found.as_slice() else { panic!("Dockerfile: expected one {op} in the final stage") };
    serde_json::from_str(&i.args).unwrap_or_else(|e| panic!("Dockerfile {op} is not the exec (JSON) form: {e}"))
}

/// The image's command line: ENTRYPOINT then CMD.
fn docker_argv(instrs: &[Instr]) -> Vec<String> {
    let mut argv = exec_form(instrs, "ENTRYPOINT");
    argv.extend(exec_form(instrs, "CMD"));
    argv
}

fn docker_healthcheck(instrs: &[Instr]) -> Vec<String> {
    let hc = final_stage(instrs).find(|i| i.op == "HEALTHCHECK").expect("Dockerfile: a HEALTHCHECK");
    let (_, cmd) = hc.args.split_once("CMD ").expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(cmd.trim()).expect("HEALTHCHECK CMD in the exec (JSON) form")
}

/// EXPOSE entries: (protocol, first port, last port).
fn docker_expose(instrs: &[Instr]) -> BTreeSet<(String, u16, u16)> {
    let mut out = BTreeSet::new();
    for i in final_stage(instrs).filter(|i| i.op == "EXPOSE") {
        for t in i.args.split_whitespace() {
            let (ports, proto) = t.split_once('/').unwrap_or((t, "tcp"));
            let (lo, hi) = parse_range(ports);
            out.insert((proto.to_ascii_lowercase(), lo, hi));
        }
    }
    out
}

/// The packages `apt-get install` names in the RUN lines of `stage`.
fn apt_packages(instrs: &[Instr], stage: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for i in instrs.iter().filter(|i| i.stage == stage && i.op == "RUN") {
        for cmd in i.args.split("&&") {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            if let Some(p) = words.windows(2).position(|w| w == ["apt-get", "install"]) {
                out.extend(words[p + 2..].iter().filter(|w| !w.starts_with('-')).map(|w| w.to_string()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The Kubernetes manifests

fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `v` at a dotted path (`spec.template.spec`; numbers index lists);
/// fails the test, naming the path, where it is missing.
fn at<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for seg in path.split('.') {
        let next = match seg.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(seg),
        };
        cur = next.unwrap_or_else(|| panic!("no {path} (at {seg})"));
    }
    cur
}

fn str_at<'a>(v: &'a Yaml, path: &str) -> &'a str {
    at(v, path).as_str().unwrap_or_else(|| panic!("{path} is not a string"))
}

fn list_at<'a>(v: &'a Yaml, path: &str) -> &'a [Yaml] {
    at(v, path).as_sequence().unwrap_or_else(|| panic!("{path} is not a list")).as_slice()
}

/// The resources kustomization.yaml lists, by kind.
fn kubernetes() -> BTreeMap<String, Yaml> {
    let k = yaml("deploy/kubernetes/kustomization.yaml");
    assert!(k.get("namespace").is_none(), "kustomization.yaml: the manifests are namespace-agnostic");
    let mut out = BTreeMap::new();
    for r in list_at(&k, "resources") {
        let file = format!("deploy/kubernetes/{}", r.as_str().expect("a file name"));
        let doc = yaml(&file);
        assert!(at(&doc, "metadata").get("namespace").is_none(), "{file}: names a namespace");
        out.insert(str_at(&doc, "kind").to_owned(), doc);
    }
    for kind in ["DaemonSet", "Secret", "PodMonitor"] {
        assert!(out.contains_key(kind), "kustomization.yaml lists no {kind}");
    }
    out
}

/// The DaemonSet's single container.
fn container(ds: &Yaml) -> &Yaml {
    let cs = list_at(ds, "spec.template.spec.containers");
    assert_eq!(cs.len(), 1, "the DaemonSet runs one container");
    &cs[0]
}

/// The DaemonSet's command line as the kubelet runs it: `command` (or the
/// image's ENTRYPOINT) and `args` (or its CMD), `$(VAR)` expanded from
/// the container's env, the downward API's node and pod IP being `node_ip`.
fn daemonset_argv(ds: &Yaml, docker: &[Instr], node_ip: &str) -> Vec<String> {
    let c = container(ds);
    let strings = |v: &Yaml| -> Vec<String> {
        v.as_sequence().expect("a list").iter().map(|s| s.as_str().expect("a string").to_owned()).collect()
    };
    let mut argv = c.get("command").map_or_else(|| exec_form(docker, "ENTRYPOINT"), strings);
    argv.extend(c.get("args").map_or_else(|| exec_form(docker, "CMD"), strings));
    let mut env = BTreeMap::new();
    for e in c.get("env").and_then(Yaml::as_sequence).map_or(&[][..], Vec::as_slice) {
        let name = str_at(e, "name").to_owned();
        let value = match (e.get("value"), e.get("valueFrom")) {
            (Some(v), _) => v.as_str().expect("an env value").to_owned(),
            (None, Some(from)) => match str_at(from, "fieldRef.fieldPath") {
                "status.hostIP" | "status.podIP" => node_ip.to_owned(),
                other => panic!("env {name}: deploy.rs does not know the field {other}"),
            },
            _ => panic!("env {name} without a value"),
        };
        env.insert(name, value);
    }
    argv.iter()
        .map(|a| {
            let mut s = a.clone();
            for (k, v) in &env {
                s = s.replace(&format!("$({k})"), v);
            }
            assert!(!s.contains("$("), "the DaemonSet's argument {a:?} names a variable its env does not set");
            s
        })
        .collect()
}

/// The container's ports: (protocol, port) by name.
fn container_ports(ds: &Yaml) -> Vec<(String, String, u16)> {
    list_at(container(ds), "ports")
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Yaml::as_str).unwrap_or("TCP").to_ascii_lowercase();
            let port = at(p, "containerPort").as_u64().expect("containerPort") as u16;
            let name = p.get("name").and_then(Yaml::as_str).unwrap_or("").to_owned();
            (name, proto, port)
        })
        .collect()
}

/// A probe's (port, path), the port resolved through the named ports.
fn probe(ds: &Yaml, which: &str) -> (u16, String) {
    let p = at(container(ds), &format!("{which}.httpGet"));
    assert!(p.get("host").is_none(), "{which}: a host of its own; the kubelet probes the pod IP (the node's)");
    let port = match at(p, "port") {
        Yaml::Number(n) => n.as_u64().expect("a port") as u16,
        Yaml::String(name) => {
            let ports = container_ports(ds);
            ports.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("{which}: no port named {name}")).2
        }
        other => panic!("{which}: port {other:?}"),
    };
    (port, str_at(p, "path").to_owned())
}

// ---------------------------------------------------------------------------
// Static checks

#[test]
fn every_command_line_uses_real_flags_and_parses() {
    let flags = help_flags();
    let dir = TempDir::new("argv");
    let config = shipped_with_test_certificate(&dir);
    let docker = dockerfile();
    let k8s = kubernetes();
    let mut lines = Unit::load().turn_relay_lines();
    assert!(lines.iter().any(|(w, _)| w.ends_with("ExecStart")), "the unit's ExecStart runs no turn-relay");
    lines.push(("Dockerfile ENTRYPOINT + CMD".into(), docker_argv(&docker)));
    lines.push(("DaemonSet command + args".into(), daemonset_argv(&k8s["DaemonSet"], &docker, NODE_IP)));
    for (what, argv) in &lines {
        assert_flags_exist(what, argv, &flags);
        let args = local_args(what, argv, &config);
        check_config(&args).unwrap_or_else(|e| panic!("{what}: {e}"));
        effective(what, argv);
    }
    // A command line the binary refuses is refused here too.
    let bad = local_args(
        "a wrong line",
        &[BIN_PATH.into(), "--config".into(), CONFIG_PATH.into(), "--metrics".into(), "nowhere".into()],
        &config,
    );
    assert!(check_config(&bad).is_err(), "--metrics nowhere passed --check-config");
}

#[test]
fn the_kubernetes_secret_holds_the_shipped_configuration_where_the_arguments_name_it() {
    let k8s = kubernetes();
    let (ds, secret) = (&k8s["DaemonSet"], &k8s["Secret"]);
    let secret_name = str_at(secret, "metadata.name");
    let text =
        at(secret, "stringData").get("turn-relay.toml").and_then(Yaml::as_str).expect("stringData turn-relay.toml");
    assert!(text == read(CONFIG), "deploy/kubernetes/secret.yaml's turn-relay.toml differs from {CONFIG}");

    // The files the container sees: mount path + projected or secret items.
    let volumes: BTreeMap<&str, &Yaml> =
        list_at(ds, "spec.template.spec.volumes").iter().map(|v| (str_at(v, "name"), v)).collect();
    let mut files: BTreeMap<String, (String, String)> = BTreeMap::new(); // path -> (secret, key)
    let mut optional = std::collections::BTreeSet::new(); // Secrets marked optional
    for m in list_at(container(ds), "volumeMounts") {
        let (name, dir) = (str_at(m, "name"), str_at(m, "mountPath").trim_end_matches('/'));
        assert!(m.get("subPath").is_none(), "mount {name}: subPath mounts never see a Secret's update");
        let v = volumes.get(name).unwrap_or_else(|| panic!("no volume {name}"));
        let sources: Vec<&Yaml> = match (v.get("projected"), v.get("secret")) {
            (Some(p), _) => list_at(p, "sources").iter().filter_map(|s| s.get("secret")).collect(),
            (None, Some(s)) => vec![s],
            _ => continue,
        };
        for s in sources {
            let sname = str_at(s, "name");
            if s.get("optional").and_then(Yaml::as_bool) == Some(true) {
                optional.insert(sname.to_owned());
            }
            for item in list_at(s, "items") {
                let file = format!("{dir}/{}", str_at(item, "path"));
                files.insert(file, (sname.to_owned(), str_at(item, "key").to_owned()));
            }
        }
    }
    let argv = daemonset_argv(ds, &dockerfile(), NODE_IP);
    let config_arg = argv.windows(2).find(|w| w[0] == "--config").map(|w| w[1].clone()).expect("--config");
    assert_eq!(
        files.get(&config_arg),
        Some(&(secret_name.to_owned(), "turn-relay.toml".to_owned())),
        "the DaemonSet's --config {config_arg} is not the Secret's turn-relay.toml (mounted: {files:?})"
    );
    // The certificate and key the configuration names are mounted there,
    // from a kubernetes.io/tls Secret's keys.
    let file: toml::Table = toml::from_str(text).unwrap();
    for key in ["cert", "key"] {
        let Some(path) = file.get("tls").and_then(|t| t.get(key)).and_then(|v| v.as_str()) else { continue };
        let (_, k) = files.get(path).unwrap_or_else(|| panic!("tls.{key} = {path:?} is not mounted ({files:?})"));
        assert!(["tls.crt", "tls.key"].contains(&k.as_str()), "tls.{key} from the key {k}");
    }
    // The optional Secrets docs/deploy.md tells operators to create are
    // mounted where it says their files are.
    let guide = read("docs/deploy.md");
    for (path, secret, key) in [
        ("/etc/turn-relay/admin/token", "turn-relay-admin", "token"),
        ("/etc/turn-relay/nonce/secret", "turn-relay-nonce", "secret"),
    ] {
        assert_eq!(files.get(path), Some(&(secret.to_owned(), key.to_owned())), "{path} is not mounted: {files:?}");
        // Optional: pods on a cluster without it (as shipped) still start.
        assert!(optional.contains(secret), "the Secret {secret} is not optional: pods would not start without it");
        assert!(
            guide.contains(path) && guide.contains(&format!("{secret} --from-file={key}=")),
            "docs/deploy.md: {path}"
        );
    }
}

#[test]
fn the_deploy_files_agree_with_the_configuration_and_the_binary() {
    let docker = dockerfile();
    let k8s = kubernetes();
    let ds = &k8s["DaemonSet"];
    let unit = Unit::load();
    let unit_start = exec_argv(unit.one("ExecStart"));
    let (unit_cfg, docker_cfg) = (effective("unit", &unit_start), effective("Dockerfile", &docker_argv(&docker)));
    let ds_cfg = effective("DaemonSet", &daemonset_argv(ds, &docker, NODE_IP));

    // Stopping: SIGTERM, and longer than the drain.
    assert_eq!(unit.one("KillSignal"), "SIGTERM");
    let stop = seconds(unit.one("TimeoutStopSec"));
    assert!(stop > unit_cfg.drain_timeout, "TimeoutStopSec {stop} s <= drain_timeout {} s", unit_cfg.drain_timeout);
    let grace = at(ds, "spec.template.spec.terminationGracePeriodSeconds").as_u64().unwrap();
    assert!(grace > ds_cfg.drain_timeout, "terminationGracePeriodSeconds {grace} <= drain {}", ds_cfg.drain_timeout);
    let stopsignal: Vec<&Instr> = final_stage(&docker).filter(|i| i.op == "STOPSIGNAL").collect();
    assert!(matches!(stopsignal.as_slice(), [i] if i.args == "SIGTERM"), "Dockerfile: STOPSIGNAL SIGTERM");
    assert_eq!(unit.one("Restart"), "on-failure");
    let reload = unit.all("ExecReload");
    assert!(reload.last().is_some_and(|r| exec_argv(r) == ["/bin/kill", "-HUP", "$MAINPID"]), "ExecReload: {reload:?}");

    // Who runs it: a system user, never root.
    let user = unit.one("User");
    assert_ne!(user, "root");
    let sysusers = read("deploy/systemd/turn-relay.sysusers");
    assert!(
        sysusers.lines().any(|l| l.split_whitespace().take(2).eq(["u", user])),
        "turn-relay.sysusers does not create the unit's User={user}"
    );
    let docker_user = final_stage(&docker).filter(|i| i.op == "USER").last().expect("Dockerfile: USER").args.clone();
    let uid: u64 = docker_user.split(':').next().unwrap().parse().expect("a numeric USER (runAsNonRoot can check it)");
    assert_ne!(uid, 0);
    let pod_sc = at(ds, "spec.template.spec.securityContext");
    assert_eq!(at(pod_sc, "runAsNonRoot").as_bool(), Some(true));
    assert_eq!(at(pod_sc, "runAsUser").as_u64(), Some(uid), "runAsUser is not the image's USER");
    let c_sc = at(container(ds), "securityContext");
    assert_eq!(at(c_sc, "allowPrivilegeEscalation").as_bool(), Some(false));
    assert!(list_at(c_sc, "capabilities.drop").iter().any(|c| c.as_str() == Some("ALL")), "capabilities: drop ALL");

    // Capabilities and sandbox of the unit.
    let bounding: BTreeSet<&str> = unit.one("CapabilityBoundingSet").split_whitespace().collect();
    for cap in unit.one("AmbientCapabilities").split_whitespace() {
        assert!(bounding.contains(cap), "AmbientCapabilities {cap} outside CapabilityBoundingSet");
    }
    let families: BTreeSet<&str> = unit.one("RestrictAddressFamilies").split_whitespace().collect();
    // AF_NETLINK: getifaddrs, which the peer policy needs for the host's own addresses.
    for f in ["AF_INET", "AF_INET6", "AF_NETLINK"] {
        assert!(families.contains(f), "RestrictAddressFamilies lacks {f}");
    }
    let allowed: BTreeSet<&str> = unit
        .all("SystemCallFilter")
        .iter()
        .filter(|v| !v.starts_with('~'))
        .flat_map(|v| v.split_whitespace())
        .collect();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.is_empty() || allowed.contains(call), "SystemCallFilter does not allow {call}");
    }
    // Open files: a socket per relay port, and a reserve.
    let nofile: u64 = unit.one("LimitNOFILE").split(':').next_back().unwrap().parse().expect("LimitNOFILE");
    let (lo, hi) = unit_cfg.relay_ports;
    assert!(nofile >= u64::from(hi - lo) + 1 + 4096, "LimitNOFILE {nofile} for {lo}-{hi}");
    // The kernel's ephemeral ports stay below the relay range.
    let sysctl = read("deploy/sysctl/60-turn-relay.conf");
    let eph = sysctl.lines().find_map(|l| l.strip_prefix("net.ipv4.ip_local_port_range")).expect("ip_local_port_range");
    let eph_hi: u16 = eph.trim_start_matches([' ', '=']).split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(eph_hi < lo, "ip_local_port_range ends at {eph_hi}, inside the relay range {lo}-{hi}");

    // The image: built from this workspace's binary, installed where the
    // command line runs it.
    let build = docker.iter().find(|i| i.op == "RUN" && i.args.contains("cargo build")).expect("a cargo build");
    assert!(build.args.contains("--release") && build.args.contains("-p relay-bin"), "{}", build.args);
    let entry = exec_form(&docker, "ENTRYPOINT");
    assert!(
        final_stage(&docker).any(|i| i.op == "COPY" && i.args.contains("--from=") && i.args.ends_with(&entry[0])),
        "the final stage does not COPY the binary to {}",
        entry[0]
    );
    assert_eq!(docker_cfg.metrics, unit_cfg.metrics);

    // Every shared library the binary links beyond glibc is installed in
    // the runtime image (Debian's package of that soname), and its -dev
    // package in the build stage.
    let runtime = apt_packages(&docker, final_stage(&docker).next().unwrap().stage);
    let build_pkgs = apt_packages(&docker, build.stage);
    let ldd = run_bounded(Command::new("ldd").arg(BIN), LIMIT);
    assert!(ldd.status.success(), "ldd {BIN}");
    let glibc =
        ["linux-vdso", "libc.so", "libm.so", "libgcc_s.so", "ld-linux", "libpthread.so", "libdl.so", "librt.so"];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let soname = line.split_whitespace().next().unwrap_or("");
        if soname.is_empty() || glibc.iter().any(|g| soname.contains(g)) {
            continue;
        }
        let (stem, version) = soname.split_once(".so.").unwrap_or_else(|| panic!("a soname: {soname}"));
        let version = version.split('.').next().unwrap();
        let pkg = if stem.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{stem}-{version}")
        } else {
            format!("{stem}{version}")
        };
        assert!(
            runtime.contains(&pkg),
            "turn-relay links {soname}: the runtime image must install {pkg} ({runtime:?})"
        );
        let dev = format!("{stem}-dev");
        assert!(build_pkgs.contains(&dev), "turn-relay links {soname}: the build stage must install {dev}");
    }

    // Kubernetes: host network, the image the kustomization sets, the
    // PodMonitor on the pods' metrics port.
    let spec = at(ds, "spec.template.spec");
    assert_eq!(at(spec, "hostNetwork").as_bool(), Some(true));
    assert_eq!(str_at(spec, "dnsPolicy"), "ClusterFirstWithHostNet");
    let images = list_at(&yaml("deploy/kubernetes/kustomization.yaml"), "images").to_vec();
    assert!(
        images.iter().any(|i| str_at(i, "name") == str_at(container(ds), "image")),
        "kustomization.yaml sets no image for {}",
        str_at(container(ds), "image")
    );
    let labels = at(ds, "spec.template.metadata.labels");
    let pm = &k8s["PodMonitor"];
    for (k, v) in at(pm, "spec.selector.matchLabels").as_mapping().expect("matchLabels") {
        assert_eq!(labels.get(k.as_str().unwrap()), Some(v), "the PodMonitor selects {k:?}={v:?}, the pods lack it");
    }
    let ports = container_ports(ds);
    let metrics_port = ports.iter().find(|(n, _, _)| n == "metrics").expect("a port named metrics").2;
    assert_eq!(metrics_port, ds_cfg.metrics.port(), "the metrics containerPort is not --metrics'");
    for e in list_at(pm, "spec.podMetricsEndpoints") {
        assert_eq!(str_at(e, "port"), "metrics");
        assert_eq!(str_at(e, "path"), "/metrics");
    }
    let ann = at(ds, "spec.template.metadata.annotations");
    let ann = |k: &str| ann.get(k).and_then(Yaml::as_str).unwrap_or_else(|| panic!("no annotation {k}"));
    assert_eq!(ann("prometheus.io/scrape"), "true");
    assert_eq!(ann("prometheus.io/port"), metrics_port.to_string());
    assert_eq!(ann("prometheus.io/path"), "/metrics");
    assert_eq!(probe(ds, "readinessProbe"), (metrics_port, "/readyz".to_owned()));
    assert_eq!(probe(ds, "livenessProbe"), (metrics_port, "/healthz".to_owned()));
    // With hostNetwork the kubelet probes the node's IP: a loopback
    // listener could never answer.
    assert!(!ds_cfg.metrics.ip().is_loopback(), "the DaemonSet's metrics listen on loopback: its probes cannot work");
}

#[test]
fn the_grafana_dashboard_is_valid_and_lives_beside_the_deploy_files() {
    let d: serde_json::Value = serde_json::from_str(&read("deploy/grafana/turn-relay.json")).expect("valid JSON");
    let names = dashboard_metrics(&d);
    assert!(names.len() >= 20, "only {} metric names in the dashboard: {names:?}", names.len());
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("an id")), "two panels share an id");
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "panel {} has no query", p["title"]);
    }
    assert!(!repo().join("docs/grafana-dashboard.json").exists(), "the dashboard's old copy is back");
}

/// Every `turn_…` metric name the dashboard's queries and variables use.
fn dashboard_metrics(d: &serde_json::Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("a target's expr").to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        exprs.push(v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("").to_owned());
    }
    let mut names = BTreeSet::new();
    for e in exprs {
        for (i, _) in e.match_indices("turn_") {
            if i > 0 && e[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let n: String = e[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(n);
        }
    }
    names
}

// ---------------------------------------------------------------------------
// Live: the deployments' command lines in a network namespace

/// A network namespace with a "node": `lo`, and NODE_IP on a device (one
/// end of a veth pair whose other end stays in the namespace) with the
/// default route, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Netns, String> {
        let ns = Netns(format!("trdeploy-{}", std::process::id()));
        let n = ns.0.as_str();
        common::sh(&["ip", "netns", "add", n])?;
        let steps: [&[&str]; 6] = [
            &["ip", "-n", n, "link", "set", "lo", "up"],
            &["ip", "-n", n, "link", "add", "node0", "type", "veth", "peer", "name", "node1"],
            &["ip", "-n", n, "addr", "add", &format!("{NODE_IP}/24"), "dev", "node0"],
            &["ip", "-n", n, "link", "set", "node1", "up"],
            &["ip", "-n", n, "link", "set", "node0", "up"],
            &["ip", "-n", n, "route", "add", "default", "via", "10.203.0.1", "dev", "node0"],
        ];
        for s in steps {
            common::sh(s)?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A turn-relay started in the namespace, its stdout and stderr lines
/// collected.
struct Server {
    child: Killed,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(ns: &Netns, args: &[String]) -> Server {
        let mut child: Child = Command::new("ip")
            .args(["netns", "exec", &ns.0, BIN])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for r in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    // A JSON log line: its message and fields; otherwise the line.
                    let l = serde_json::from_str::<serde_json::Value>(&l)
                        .ok()
                        .and_then(|v| Some(v.get("fields")?.to_string()))
                        .unwrap_or(l);
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Server { child: Killed(child), lines, seen: Vec::new() }
    }

    /// The first line (seen so far or within LIMIT) containing `needle`.
    fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("turn-relay never said {needle:?}; it said:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.0.id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success(), "kill {sig} {pid}");
    }

    /// Waits (bounded) for the process to exit; its status.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "turn-relay did not exit within {limit:?}:\n{}", self.seen.join("\n"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What the server says it serves, from its start-up lines.
struct Served {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    metrics: SocketAddr,
    /// The generated user and password, when the server made one.
    login: Option<(String, String)>,
}

fn addr_list(line: &str, label: &str) -> Vec<SocketAddr> {
    let start =
        line.find(&format!("{label} [")).unwrap_or_else(|| panic!("no {label} list in {line}")) + label.len() + 2;
    let end = start + line[start..].find(']').expect("]");
    line[start..end].split(", ").filter(|s| !s.is_empty()).map(|s| s.parse().expect("an address")).collect()
}

/// `generated`: the configuration holds no credential, so the server prints
/// the one it made (once, on stdout); wait for it.
fn served(s: &mut Server, generated: bool) -> Served {
    let listening = s.line("turn-relay listening on");
    let metrics_line = s.line("metrics on http://");
    let m = &metrics_line[metrics_line.find("http://").unwrap() + 7..];
    let metrics = m[..m.find("/metrics").expect("/metrics")].parse().expect("the metrics address");
    let login = generated.then(|| s.line("generated user")).map(|g| {
        let field = |after: &str| {
            let i = g.find(after).unwrap_or_else(|| panic!("{after} in {g}")) + after.len();
            g[i..i + g[i..].find('"').unwrap()].to_owned()
        };
        (field("user \""), field("password \""))
    });
    Served {
        udp: addr_list(&listening, "UDP"),
        tcp: addr_list(&listening, "TCP"),
        tls: addr_list(&listening, "TLS"),
        metrics,
        login,
    }
}

/// `GET path` from inside the namespace: the status code, or None when
/// nothing answers.
fn http_status(ns: &Netns, addr: SocketAddr, path: &str) -> Option<u16> {
    common::http_in(&ns.0, addr, "GET", path, None).map(|a| a.status)
}

/// `GET` from inside the namespace, waiting (bounded) for the listener to
/// answer 200; the body.
fn http_ok(ns: &Netns, addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        match common::http_in(&ns.0, addr, "GET", path, None) {
            Some(a) if a.status == 200 => return a.body,
            other if Instant::now() > deadline => panic!("GET http://{addr}{path}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The declared ports as (protocol, port): the listeners the server says
/// it serves, with their wildcard or address dropped.
fn served_ports(s: &Served) -> BTreeSet<(String, u16)> {
    let mut out = BTreeSet::new();
    out.extend(s.udp.iter().map(|a| ("udp".to_owned(), a.port())));
    out.extend(s.tcp.iter().chain(&s.tls).map(|a| ("tcp".to_owned(), a.port())));
    out
}

/// Allocates through every TURN port: UDP and TCP (TURN) and TLS (TURNS)
/// at the node's address; returns one UDP client holding its allocation.
fn allocate_everywhere(ns: &Netns, s: &Served, login: (&str, &str, &str), cert: &test_kit::TestCert) -> TurnClient {
    let node: IpAddr = NODE_IP.parse().unwrap();
    let (user, password, realm) = (login.0.to_owned(), login.1.to_owned(), login.2.to_owned());
    let (udp, tcp, tls) = (s.udp.clone(), s.tcp.clone(), s.tls.clone());
    let root = cert.der.clone();
    Topology::run_in(&ns.0, move || {
        let login = Login { user: &user, password: &password, realm: &realm };
        let check = |what: String, r: Result<SocketAddr, u16>| {
            let relayed = r.unwrap_or_else(|code| panic!("Allocate over {what}: error {code}"));
            assert_eq!(relayed.ip(), node, "{what}: the relayed address is not the node's primary address");
        };
        for a in &tcp {
            let mut c = StreamClient::tcp(SocketAddr::new(node, a.port()), login);
            check(format!("TCP {}", a.port()), c.allocate());
        }
        for a in &tls {
            let mut c = StreamClient::tls(SocketAddr::new(node, a.port()), login, &root);
            check(format!("TLS {}", a.port()), c.allocate());
        }
        let mut held = None;
        for a in &udp {
            let sock = UdpSocket::bind(SocketAddr::new(node, 0)).unwrap();
            let mut c = TurnClient::with_socket(sock, SocketAddr::new(node, a.port()), login);
            check(format!("UDP {}", a.port()), c.allocate());
            held = Some(c);
        }
        held.expect("a UDP listener")
    })
}

/// Metric names in a Prometheus text body.
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_shipped_deployments_serve_what_they_declare() {
    const TEST: &str = "the_shipped_deployments_serve_what_they_declare";
    let ns = match Netns::new() {
        Ok(ns) => ns,
        Err(why) => return test_kit::skip(TEST, &format!("needs root and iproute2 (network namespaces): {why}")),
    };
    // The shipped configuration with only the certificate substituted.
    let dir = TempDir::new("live");
    let (text, cert) = with_test_certificate(&dir, &read(CONFIG));
    let file: toml::Table = toml::from_str(&text).unwrap();
    let config = dir.write("turn-relay.toml", &text);
    let realm = file["server"]["realm"].as_str().unwrap().to_owned();
    let docker = dockerfile();
    let k8s = kubernetes();
    let ds = &k8s["DaemonSet"];
    let unit = Unit::load();
    let live = |what: &str, argv: &[String]| {
        let mut args = local_args(what, argv, &config);
        args.extend(["--relay-ports".into(), LIVE_RELAY_PORTS.into()]);
        args
    };

    // 1. The image's command line (the unit's ExecStart is the same one:
    //    checked), with the image's HEALTHCHECK and the unit's reload.
    let docker_args = docker_argv(&docker);
    assert_eq!(docker_args[1..], exec_argv(unit.one("ExecStart"))[1..], "the unit and the image run different lines");
    let mut s = Server::start(&ns, &live("Dockerfile", &docker_args));
    let sv = served(&mut s, true);
    let (lo, hi) = effective("Dockerfile", &docker_args).relay_ports;
    let mut declared: BTreeSet<(String, u16)> = BTreeSet::new();
    for (proto, a, b) in docker_expose(&docker) {
        if (a, b) == (lo, hi) && proto == "udp" {
            continue; // the relay range
        }
        assert_eq!(a, b, "EXPOSE {a}-{b}/{proto} is neither a listener nor the relay range {lo}-{hi}");
        declared.insert((proto, a));
    }
    assert!(docker_expose(&docker).contains(&("udp".into(), lo, hi)), "EXPOSE lacks the relay range {lo}-{hi}/udp");
    assert_eq!(declared, served_ports(&sv), "EXPOSE vs what the server serves");
    assert!(sv.metrics.ip().is_loopback(), "the image's metrics ({}) are not loopback: EXPOSE them", sv.metrics);
    for path in ["/healthz", "/readyz", "/metrics"] {
        http_ok(&ns, sv.metrics, path);
    }
    let hc = docker_healthcheck(&docker);
    let run_hc = || run_bounded(Command::new("ip").args(["netns", "exec", &ns.0]).args(&hc), LIMIT).status.success();
    assert!(run_hc(), "the HEALTHCHECK fails against a healthy server: {hc:?}");
    // The shipped configuration carries no credential: the server makes one
    // and prints it once (it fails closed until the operator sets a secret).
    let (user, password) = sv.login.clone().expect("a generated credential");
    let mut held = allocate_everywhere(&ns, &sv, (&user, &password, &realm), &cert);
    s.signal("-HUP");
    s.line("SIGHUP: credentials and certificates reloaded");
    held.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
    s.signal("-TERM");
    assert!(s.wait_exit(LIMIT).success(), "the image's server did not stop cleanly");
    assert!(!run_hc(), "the HEALTHCHECK passes with no server: it checks nothing");

    // 2. The DaemonSet's command line, the node's IP from the downward API.
    let argv = daemonset_argv(ds, &docker, NODE_IP);
    let mut s = Server::start(&ns, &live("DaemonSet", &argv));
    let sv = served(&mut s, true);
    let mut declared = BTreeSet::new();
    let ports = container_ports(ds);
    for (name, proto, port) in &ports {
        if name != "metrics" {
            declared.insert((proto.clone(), *port));
        }
    }
    assert_eq!(declared, served_ports(&sv), "the DaemonSet's containerPorts vs what the server serves");
    let node: IpAddr = NODE_IP.parse().unwrap();
    assert_eq!(sv.metrics.ip(), node, "with hostNetwork the probes reach the node's IP");
    let at_node = |port: u16| SocketAddr::new(node, port);
    let (ready_port, ready) = probe(ds, "readinessProbe");
    let (live_port, alive) = probe(ds, "livenessProbe");
    assert_eq!((ready_port, live_port), (sv.metrics.port(), sv.metrics.port()));
    http_ok(&ns, at_node(ready_port), &ready);
    http_ok(&ns, at_node(live_port), &alive);
    let (user, password) = sv.login.clone().expect("a generated credential");
    let held = allocate_everywhere(&ns, &sv, (&user, &password, &realm), &cert);
    let pm = &k8s["PodMonitor"];
    let scrape_port = ports.iter().find(|(n, _, _)| n == str_at(pm, "spec.podMetricsEndpoints.0.port")).unwrap().2;
    let scrape_path = str_at(pm, "spec.podMetricsEndpoints.0.path").to_owned();
    // Published once a second.
    let deadline = Instant::now() + LIMIT;
    while !http_ok(&ns, at_node(scrape_port), &scrape_path).contains("turn_build_info") {
        assert!(Instant::now() < deadline, "GET {scrape_path}: no metrics");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM, as the kubelet sends it: not ready at once, alive for the
    // whole drain, and the drain shorter than the grace period.
    s.signal("-TERM");
    let drain = s.line("draining: no new allocations");
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_status(&ns, at_node(ready_port), &ready) != Some(503) {
        assert!(Instant::now() < deadline, "/readyz did not turn 503 on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_status(&ns, at_node(live_port), &alive), Some(200), "liveness fails while draining");
    let drain_s: u64 = serde_json::from_str::<serde_json::Value>(&drain)
        .ok()
        .and_then(|v| v["drain_timeout_s"].as_u64())
        .unwrap_or_else(|| panic!("no drain_timeout_s in {drain}"));
    let grace = at(ds, "spec.template.spec.terminationGracePeriodSeconds").as_u64().unwrap();
    assert!(grace > drain_s, "grace {grace} s <= the drain the server runs, {drain_s} s");
    assert!(seconds(unit.one("TimeoutStopSec")) > drain_s, "TimeoutStopSec <= the drain, {drain_s} s");
    // The drain ends with the last allocation.
    let mut held = held;
    held.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert!(s.wait_exit(LIMIT).success(), "the DaemonSet's server did not exit once its last allocation ended");

    // 3. The dashboard: the DaemonSet's line with the features on whose
    //    metrics appear only when configured (a user database in coturn's
    //    schema, the admin API) and used once; every metric it queries is
    //    exported then.
    let db = dir.0.join("turndb");
    let c = rusqlite::Connection::open(&db).unwrap();
    for table in [
        "turnusers_lt (realm varchar(127) default '', name varchar(512), hmackey char(128))",
        "turn_secret (realm varchar(127) default '', value varchar(256))",
        "allowed_peer_ip (realm varchar(127) default '', ip_range varchar(256))",
        "denied_peer_ip (realm varchar(127) default '', ip_range varchar(256))",
    ] {
        c.execute(&format!("CREATE TABLE {table}"), []).unwrap();
    }
    drop(c);
    let token = "deploy-test-admin-token-0123456789";
    let token_file = dir.write("admin-token", token);
    let mut args = live("DaemonSet", &argv);
    let db_url = format!("sqlite://{}", db.display());
    let user_flag = "probe:probe-password".to_owned();
    args.extend(["--user-database".into(), db_url, "--admin-token-file".into(), token_file.display().to_string()]);
    args.extend(["--user".into(), user_flag]);
    let mut s = Server::start(&ns, &args);
    let sv = served(&mut s, false);
    let mut held = allocate_everywhere(&ns, &sv, ("probe", "probe-password", &realm), &cert);
    let admin = common::http_in(&ns.0, sv.metrics, "GET", "/admin/allocations", Some(token));
    assert!(admin.as_ref().is_some_and(|a| a.status == 200), "the admin API: {admin:?}");
    let d: serde_json::Value = serde_json::from_str(&read("deploy/grafana/turn-relay.json")).unwrap();
    let wanted = dashboard_metrics(&d);
    // Published once a second: wait (bounded) for the last of them.
    let deadline = Instant::now() + LIMIT;
    loop {
        let names = exported(&http_ok(&ns, at_node(scrape_port), &scrape_path));
        let missing: Vec<&String> = wanted.iter().filter(|n| !names.contains(*n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the dashboard queries metrics the server does not export: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    held.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
    s.signal("-TERM");
    assert!(s.wait_exit(LIMIT).success(), "the server with every feature on did not stop cleanly");
}
