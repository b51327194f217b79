//! `server.alternates` and the load thresholds: where new clients are sent
//! with 300 (Try Alternate) while this node drains or is loaded (relay-core
//! `server::alternate`). Parsed from the configuration's TOML values and
//! the `--alternate`/`--alternate-tls` flags; errors name the entry.
//!
//! An entry is a string, `"IP:PORT"`, for clients over UDP and TCP, or a
//! table naming one other node:
//!
//! ```toml
//! [server]
//! alternates = [
//!   "198.51.100.2:3478",
//!   { address = "198.51.100.3:3478", tls = "198.51.100.3:5349", domain = "turn-c.example.org" },
//! ]
//! ```
//!
//! `address` serves UDP and TCP clients, `tls` TLS clients (whose listener
//! has a port of its own), `domain` is sent to TLS clients as
//! ALTERNATE-DOMAIN (the name on that node's certificate).

use std::net::{IpAddr, SocketAddr};

use relay_core::server::Alternate;

/// A bad entry: which key (`server.alternates[1].tls`) and why.
#[derive(Debug, PartialEq, Eq)]
pub struct AlternateError {
    /// The dotted key of the entry or its field.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: String, message: impl Into<String>) -> AlternateError {
    AlternateError { key, message: message.into() }
}

/// An alternate's address: a specific IP and a port.
fn address(key: String, v: &toml::Value) -> Result<SocketAddr, AlternateError> {
    let Some(s) = v.as_str() else {
        return Err(err(key, "expected an address \"IP:PORT\" (\"[IPv6]:PORT\")"));
    };
    let a: SocketAddr =
        s.trim().parse().map_err(|_| err(key.clone(), format!("bad address {s:?}: expected IP:PORT")))?;
    if a.ip().is_unspecified() || a.ip().is_multicast() || a.port() == 0 {
        return Err(err(key, format!("{a} is not an address clients can be sent to")));
    }
    Ok(a)
}

/// A DNS name for ALTERNATE-DOMAIN: at most 255 bytes (RFC 8489 §14.16),
/// labels of letters, digits and hyphens.
fn domain(key: String, v: &toml::Value) -> Result<String, AlternateError> {
    let Some(d) = v.as_str() else { return Err(err(key, "expected a domain name")) };
    let labels_ok = d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if d.is_empty() || d.len() > 255 || !labels_ok {
        return Err(err(key, format!("{d:?} is not a domain name")));
    }
    Ok(d.to_owned())
}

/// The alternates of `server.alternates`.
pub fn parse(values: &[toml::Value]) -> Result<Vec<Alternate>, AlternateError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let key = format!("server.alternates[{i}]");
        let alt = match v {
            toml::Value::String(_) => Alternate::plain(address(key, v)?),
            toml::Value::Table(t) => {
                let mut a = Alternate { address: None, tls: None, domain: None };
                for (k, v) in t {
                    let field = format!("{key}.{k}");
                    match k.as_str() {
                        "address" => a.address = Some(address(field, v)?),
                        "tls" => a.tls = Some(address(field, v)?),
                        "domain" => a.domain = Some(domain(field, v)?),
                        _ => return Err(err(field, "unknown key (expected address, tls, domain)")),
                    }
                }
                if a.address.is_none() && a.tls.is_none() {
                    return Err(err(key, "needs address (UDP and TCP clients) or tls (TLS clients)"));
                }
                if a.domain.is_some() && a.tls.is_none() {
                    return Err(err(key, "domain is sent to TLS clients only: give tls too"));
                }
                a
            }
            _ => return Err(err(key, "expected \"IP:PORT\" or { address, tls, domain }")),
        };
        out.push(alt);
    }
    Ok(out)
}

/// The address of `alt` that is one of this node's `listeners`, if any:
/// the same address, or a wildcard listener's port on one of `host_ips`
/// (the host's interface addresses: a wildcard listener answers on all of
/// them; `[::]` takes IPv4 clients too, as the listeners are dual-stack).
/// IPv4-mapped forms count as IPv4.
pub fn own_listener(alt: &Alternate, listeners: &[SocketAddr], host_ips: &[IpAddr]) -> Option<SocketAddr> {
    let on_host = |ip: IpAddr| host_ips.iter().any(|h| h.to_canonical() == ip);
    [alt.address, alt.tls].into_iter().flatten().find(|x| {
        let ip = x.ip().to_canonical();
        listeners.iter().any(|l| {
            let lip = l.ip().to_canonical();
            l.port() == x.port()
                && (lip == ip || (lip.is_unspecified() && (lip.is_ipv6() || ip.is_ipv4()) && on_host(ip)))
        })
    })
}

/// The TOML value of an `--alternate-tls ADDR[=DOMAIN]` flag.
pub fn tls_flag(spec: &str) -> toml::Value {
    let mut t = toml::Table::new();
    let (addr, domain) = match spec.split_once('=') {
        Some((a, d)) => (a, Some(d)),
        None => (spec, None),
    };
    t.insert("tls".into(), toml::Value::String(addr.to_owned()));
    if let Some(d) = domain {
        t.insert("domain".into(), toml::Value::String(d.to_owned()));
    }
    toml::Value::Table(t)
}

/// Checks the thresholds: a fraction within 0–1, and alternates to send
/// clients to. Returns the key at fault and why.
pub fn check_thresholds(
    alternates: &[Alternate],
    above_allocations: Option<u64>,
    above_relay_ports: Option<f64>,
) -> Result<(), AlternateError> {
    if let Some(f) = above_relay_ports
        && !(0.0..=1.0).contains(&f)
    {
        let m = format!("{f} is not a fraction of the relay ports (0.0 to 1.0)");
        return Err(err("server.redirect_above_relay_ports".into(), m));
    }
    if alternates.is_empty() {
        let key = if above_allocations.is_some() {
            Some("server.redirect_above_allocations")
        } else if above_relay_ports.is_some() {
            Some("server.redirect_above_relay_ports")
        } else {
            None
        };
        if let Some(key) = key {
            return Err(err(key.into(), "redirects need server.alternates to send clients to"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn strings_and_tables() {
        let file = "[server]\nalternates = [\n  \"198.51.100.2:3478\",\n  { address = \"[2001:db8::3]:3478\", \
                    tls = \"[2001:db8::3]:5349\", domain = \"turn-c.example.org\" },\n  { tls = \"198.51.100.4:5349\" },\n]\n\
                    redirect_above_allocations = 1000\nredirect_above_relay_ports = 0.9\n";
        let c = Config::parse("relay.toml", file).unwrap();
        let alts = c.alternates(&[]).unwrap();
        assert_eq!(
            alts,
            vec![
                Alternate::plain(sa("198.51.100.2:3478")),
                Alternate {
                    address: Some(sa("[2001:db8::3]:3478")),
                    tls: Some(sa("[2001:db8::3]:5349")),
                    domain: Some("turn-c.example.org".into())
                },
                Alternate { address: None, tls: Some(sa("198.51.100.4:5349")), domain: None },
            ]
        );
        assert_eq!(c.server.redirect_above_allocations, Some(1000));
        assert_eq!(c.server.redirect_above_relay_ports, Some(0.9));
        c.validate(&[]).unwrap();
        // Nothing configured: nothing redirected.
        let c = Config::default();
        assert!(c.alternates(&[]).unwrap().is_empty());
        assert_eq!((c.server.redirect_above_allocations, c.server.redirect_above_relay_ports), (None, None));
    }

    /// The error of `file`'s validation, as printed.
    fn error_of(file: &str) -> String {
        Config::parse("relay.toml", file).unwrap().validate(&[]).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file_line_and_entry() {
        let e = error_of("[server]\nshards = 1\nalternates = [\"198.51.100.2\"]\n");
        assert!(e.starts_with("relay.toml:3: server.alternates[0]: bad address \"198.51.100.2\""), "{e}");
        let e = error_of("[server]\nalternates = [\"0.0.0.0:3478\"]\n");
        assert!(e.contains("server.alternates[0]: 0.0.0.0:3478 is not an address clients"), "{e}");
        let e = error_of("[server]\nalternates = [\"198.51.100.2:3478\", { adress = \"198.51.100.3:3478\" }]\n");
        assert!(e.starts_with("relay.toml:2: server.alternates[1].adress: unknown key"), "{e}");
        let e = error_of("[server]\nalternates = [{ address = \"198.51.100.3:3478\", domain = \"b.example\" }]\n");
        assert!(e.contains("server.alternates[0]: domain is sent to TLS clients only"), "{e}");
        let e = error_of("[server]\nalternates = [{ tls = \"198.51.100.3:5349\", domain = \"not a name\" }]\n");
        assert!(e.contains("server.alternates[0].domain: \"not a name\" is not a domain name"), "{e}");
        let e = error_of("[server]\nalternates = [{}]\n");
        assert!(e.contains("needs address"), "{e}");
        let e = error_of("[server]\nalternates = [3478]\n");
        assert!(e.contains("server.alternates[0]: expected"), "{e}");
        let e = error_of("[server]\nalternates = [\"198.51.100.2:3478\"]\nredirect_above_relay_ports = 1.5\n");
        assert!(e.starts_with("relay.toml:3: server.redirect_above_relay_ports: 1.5 is not a fraction"), "{e}");
        let e = error_of("[server]\nredirect_above_allocations = 10\n");
        assert!(e.starts_with("relay.toml:2: server.redirect_above_allocations: redirects need server.alternates"));
        // The node's own listener is not an alternate.
        let e = error_of("[listen]\naddresses = [\"127.0.0.1:3478\"]\n[server]\nalternates = [\"127.0.0.1:3478\"]\n");
        assert!(e.contains("server.alternates[0]: 127.0.0.1:3478 is this node's own listener"), "{e}");
    }

    #[test]
    fn a_wildcard_listener_is_every_address_of_the_host() {
        let host = [IpAddr::from([127, 0, 0, 1]), IpAddr::from([192, 0, 2, 9]), "2001:db8::9".parse().unwrap()];
        let alt = |s: &str| Alternate::plain(sa(s));
        let tls = |s: &str| Alternate { address: None, tls: Some(sa(s)), domain: None };
        let v4_any = [sa("0.0.0.0:3478"), sa("0.0.0.0:5349")];
        assert_eq!(own_listener(&alt("192.0.2.9:3478"), &v4_any, &host), Some(sa("192.0.2.9:3478")));
        assert_eq!(own_listener(&tls("127.0.0.1:5349"), &v4_any, &host), Some(sa("127.0.0.1:5349")));
        // Another port, an address not of this host, another family.
        assert_eq!(own_listener(&alt("192.0.2.9:3479"), &v4_any, &host), None);
        assert_eq!(own_listener(&alt("192.0.2.10:3478"), &v4_any, &host), None);
        assert_eq!(own_listener(&alt("[2001:db8::9]:3478"), &v4_any, &host), None);
        // [::] is dual-stack: IPv6 and IPv4 addresses of the host.
        let v6_any = [sa("[::]:3478")];
        assert_eq!(own_listener(&alt("[2001:db8::9]:3478"), &v6_any, &host), Some(sa("[2001:db8::9]:3478")));
        assert_eq!(own_listener(&alt("192.0.2.9:3478"), &v6_any, &host), Some(sa("192.0.2.9:3478")));
        assert_eq!(own_listener(&alt("[::ffff:192.0.2.9]:3478"), &v6_any, &host), Some(sa("[::ffff:192.0.2.9]:3478")));
        // A specific listener: that address only.
        let one = [sa("192.0.2.9:3478")];
        assert_eq!(own_listener(&alt("192.0.2.9:3478"), &one, &host), Some(sa("192.0.2.9:3478")));
        assert_eq!(own_listener(&alt("127.0.0.1:3478"), &one, &host), None);
        // Through the configuration: the host's loopback address behind the
        // default wildcard listener is refused at start.
        let e = error_of("[listen]\naddresses = [\"0.0.0.0:3478\"]\n[server]\nalternates = [\"127.0.0.1:3478\"]\n");
        assert!(e.contains("server.alternates[0]: 127.0.0.1:3478 is this node's own listener"), "{e}");
        let ok = "[listen]\naddresses = [\"0.0.0.0:3478\"]\n[server]\nalternates = [\"127.0.0.1:3479\"]\n";
        Config::parse("relay.toml", ok).unwrap().validate(&[]).unwrap();
    }

    #[test]
    fn tls_flag_values() {
        let alts = parse(&[tls_flag("198.51.100.4:5349=turn-d.example.org"), tls_flag("198.51.100.5:5349")]).unwrap();
        assert_eq!(alts[0].tls, Some(sa("198.51.100.4:5349")));
        assert_eq!(alts[0].domain.as_deref(), Some("turn-d.example.org"));
        assert_eq!((alts[1].address, alts[1].domain.as_deref()), (None, None));
        let e = parse(&[tls_flag("nowhere=turn-d.example.org")]).unwrap_err();
        assert_eq!(e.key, "server.alternates[0].tls");
    }
}
