//! The PROXY protocol, versions 1 and 2 (haproxy's `proxy-protocol.txt`):
//! the header an L4 load balancer writes at the start of a TCP connection
//! to say which client it accepted the connection from.
//!
//! Sans-IO and incremental: [`parse`] looks at the bytes a connection has
//! delivered so far and says [`Parsed::Incomplete`] (read more and call it
//! again on everything read), [`Parsed::Complete`] with the header and its
//! length (the bytes after it — STUN, ChannelData, a TLS ClientHello — are
//! the caller's, untouched), or an error. It decides as early as the bytes
//! allow: a first byte that begins neither signature is
//! [`ProxyError::NotAHeader`] at once, a bad version, command, family or a
//! length over [`V2_MAX_PAYLOAD`] as soon as the byte holding it arrives,
//! a byte a version 1 line may not hold when it arrives. Everything is
//! bounded: a version 1 line is at most [`V1_MAX_LEN`] bytes (CRLF
//! included), a version 2 header at most [`MAX_HEADER_LEN`]; so a caller
//! that buffers [`MAX_HEADER_LEN`] bytes always gets an answer.
//!
//! What is read:
//! - version 1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` (single spaces,
//!   dotted-quad or RFC 4291 addresses of the family named, decimal ports
//!   0..=65535 of at most five digits), or `PROXY UNKNOWN…\r\n` (anything
//!   up to the CRLF, ignored: no addresses);
//! - version 2: the 12-byte signature, version 2 with the LOCAL or PROXY
//!   command, the family (UNSPEC, INET, INET6, UNIX) and transport
//!   (UNSPEC, STREAM, DGRAM), the length, the addresses; TLVs after the
//!   addresses are skipped unread. A LOCAL header (the balancer's own
//!   connection, a health check) carries no addresses whatever its family
//!   says, as the specification asks; a PROXY header for a UNIX or UNSPEC
//!   family has none either. A PROXY header's family/transport pair must
//!   be one of the seven the specification defines.
//!
//! What a server does with a header without addresses is its own choice
//! (relay-io keeps the connection's own peer address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The start of a version 1 header.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The 12 bytes a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's
/// bound).
pub const V1_MAX_LEN: usize = 107;
/// The fixed part of a version 2 header: signature, version and command,
/// family and transport, length.
pub const V2_HEADER_LEN: usize = 16;
/// The longest version 2 address and TLV block accepted (the
/// specification allows 65,535; balancers send well under 256: addresses
/// take at most 216, AWS's, GCP's and Azure's TLVs a few dozen, haproxy's
/// SSL TLVs a few hundred).
pub const V2_MAX_PAYLOAD: usize = 2048;
/// The longest header of either version.
pub const MAX_HEADER_LEN: usize = V2_HEADER_LEN + V2_MAX_PAYLOAD;

/// The protocol version of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text format.
    V1,
    /// The binary format.
    V2,
}

/// What the header says the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// The balancer's own connection (a health check): no client behind
    /// it. Version 2 only.
    Local,
    /// A client's connection relayed by the balancer.
    Proxy,
}

/// The transport the balancer accepted the client's connection on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Not said (version 1 `UNKNOWN`, version 2 UNSPEC, LOCAL).
    Unspec,
    /// TCP (version 1 `TCP4`/`TCP6`, version 2 STREAM).
    Stream,
    /// UDP (version 2 DGRAM).
    Datagram,
}

/// The two ends of the client's connection to the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// The address the client connected to (the balancer's).
    pub destination: SocketAddr,
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Its version.
    pub version: Version,
    /// LOCAL or PROXY.
    pub command: Command,
    /// The client's transport.
    pub transport: Transport,
    /// The client's and the balancer's addresses, when the header gives
    /// IP addresses (never for LOCAL).
    pub addresses: Option<Addresses>,
}

impl Header {
    /// A PROXY header for a TCP client `source` that connected to
    /// `destination`.
    pub fn tcp(version: Version, source: SocketAddr, destination: SocketAddr) -> Header {
        Header {
            version,
            command: Command::Proxy,
            transport: Transport::Stream,
            addresses: Some(Addresses { source, destination }),
        }
    }

    /// The client's address: the source of a PROXY header that has
    /// addresses; `None` for LOCAL and for headers without addresses.
    pub fn client(&self) -> Option<SocketAddr> {
        match self.command {
            Command::Proxy => self.addresses.map(|a| a.source),
            Command::Local => None,
        }
    }

    /// The header in the text format: PROXY over TCP with addresses of one
    /// family (`TCP4`/`TCP6`), or PROXY without addresses or transport
    /// (`UNKNOWN`); `None` for anything version 1 cannot say.
    pub fn encode_v1(&self) -> Option<Vec<u8>> {
        let line = match (self.command, self.transport, self.addresses) {
            (Command::Proxy, Transport::Unspec, None) => "PROXY UNKNOWN\r\n".to_owned(),
            (Command::Proxy, Transport::Stream, Some(a)) => {
                let family = match (a.source.ip(), a.destination.ip()) {
                    (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
                    (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
                    _ => return None,
                };
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    a.source.ip(),
                    a.destination.ip(),
                    a.source.port(),
                    a.destination.port()
                )
            }
            _ => return None,
        };
        Some(line.into_bytes())
    }

    /// The header in the binary format, followed by `tlvs` (type, value);
    /// `None` when the addresses are of two families or the block would
    /// pass [`V2_MAX_PAYLOAD`]. LOCAL is written with the UNSPEC family
    /// (its addresses, if any, are left out), PROXY without addresses with
    /// UNSPEC (and then needs [`Transport::Unspec`]).
    pub fn encode_v2(&self, tlvs: &[(u8, &[u8])]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(V2_HEADER_LEN + 36);
        out.extend_from_slice(&V2_SIGNATURE);
        let transport = match self.transport {
            Transport::Unspec => 0,
            Transport::Stream => 1,
            Transport::Datagram => 2,
        };
        let mut body = Vec::new();
        let (command, family) = match (self.command, self.addresses) {
            (Command::Local, _) => (0x20, 0x00),
            (Command::Proxy, None) if self.transport == Transport::Unspec => (0x21, 0x00),
            (Command::Proxy, None) => return None,
            (Command::Proxy, Some(_)) if self.transport == Transport::Unspec => return None,
            (Command::Proxy, Some(a)) => match (a.source.ip(), a.destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    body.extend_from_slice(&s.octets());
                    body.extend_from_slice(&d.octets());
                    (0x21, 0x10 | transport)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    body.extend_from_slice(&s.octets());
                    body.extend_from_slice(&d.octets());
                    (0x21, 0x20 | transport)
                }
                _ => return None,
            },
        };
        if let (Command::Proxy, Some(a)) = (self.command, self.addresses) {
            body.extend_from_slice(&a.source.port().to_be_bytes());
            body.extend_from_slice(&a.destination.port().to_be_bytes());
        }
        for (t, v) in tlvs {
            body.push(*t);
            body.extend_from_slice(&u16::try_from(v.len()).ok()?.to_be_bytes());
            body.extend_from_slice(v);
        }
        if body.len() > V2_MAX_PAYLOAD {
            return None;
        }
        out.push(command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        Some(out)
    }
}

/// What [`parse`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far begin a header: read more.
    Incomplete,
    /// A whole header, `len` bytes long; what follows is not part of it.
    Complete {
        /// The header.
        header: Header,
        /// Its length in bytes.
        len: usize,
    },
}

/// Why bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// They begin neither signature (a connection without a header).
    #[error("not a PROXY protocol header")]
    NotAHeader,
    /// They begin a signature, and then break the format.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(&'static str),
}

/// True when `buf` begins, or is the beginning of, either signature: what
/// a connection that must not carry a header is refused for.
pub fn starts_like_header(buf: &[u8]) -> bool {
    let v1 = buf.len().min(V1_PREFIX.len());
    let v2 = buf.len().min(V2_SIGNATURE.len());
    buf[..v1] == V1_PREFIX[..v1] || buf[..v2] == V2_SIGNATURE[..v2]
}

/// Parses the header at the start of `buf` (everything a connection has
/// delivered so far). See the [module documentation](self).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let v1 = buf.len().min(V1_PREFIX.len());
    if buf[..v1] == V1_PREFIX[..v1] {
        if v1 < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        return parse_v1(buf);
    }
    let v2 = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2] == V2_SIGNATURE[..v2] {
        return parse_v2(buf);
    }
    Err(ProxyError::NotAHeader)
}

fn invalid(why: &'static str) -> ProxyError {
    ProxyError::Invalid(why)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // The line ends at the first CRLF, within V1_MAX_LEN bytes; any other
    // control byte (or a byte above ASCII) before it is refused when it
    // arrives.
    let scan = &buf[..buf.len().min(V1_MAX_LEN)];
    let mut end = None;
    for (i, &b) in scan.iter().enumerate().skip(V1_PREFIX.len()) {
        match b {
            b'\r' => match scan.get(i + 1) {
                Some(b'\n') => {
                    end = Some(i);
                    break;
                }
                Some(_) => return Err(invalid("CR without LF in a version 1 header")),
                None => break,
            },
            0x20..=0x7e => {}
            _ => return Err(invalid("a byte a version 1 header may not hold")),
        }
    }
    let Some(end) = end else {
        return if buf.len() >= V1_MAX_LEN { Err(invalid("no CRLF within 107 bytes")) } else { Ok(Parsed::Incomplete) };
    };
    let len = end + 2;
    // ASCII, checked above.
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| invalid("not ASCII"))?;
    let header = if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        Header { version: Version::V1, command: Command::Proxy, transport: Transport::Unspec, addresses: None }
    } else {
        let mut fields = line.split(' ');
        let family = fields.next().unwrap_or("");
        let v6 = match family {
            "TCP4" => false,
            "TCP6" => true,
            _ => return Err(invalid("version 1 protocol is not TCP4, TCP6 or UNKNOWN")),
        };
        let (Some(src), Some(dst), Some(sport), Some(dport), None) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(invalid("a version 1 header needs exactly four fields after the protocol"));
        };
        let ip = |s: &str| -> Result<IpAddr, ProxyError> {
            if v6 {
                s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| invalid("bad IPv6 address"))
            } else {
                s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| invalid("bad IPv4 address"))
            }
        };
        let source = SocketAddr::new(ip(src)?, port(sport)?);
        let destination = SocketAddr::new(ip(dst)?, port(dport)?);
        Header::tcp(Version::V1, source, destination)
    };
    Ok(Parsed::Complete { header, len })
}

/// A decimal port: one to five digits, at most 65535.
fn port(s: &str) -> Result<u16, ProxyError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("bad port"));
    }
    s.parse().map_err(|_| invalid("port above 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // Each fixed byte is checked as soon as it is there.
    let command = match buf.get(12) {
        None => return Ok(Parsed::Incomplete),
        Some(b) if b >> 4 != 2 => return Err(invalid("version 2 signature with a version other than 2")),
        Some(b) => match b & 0x0f {
            0 => Command::Local,
            1 => Command::Proxy,
            _ => return Err(invalid("version 2 command is neither LOCAL nor PROXY")),
        },
    };
    let Some(&fam) = buf.get(13) else { return Ok(Parsed::Incomplete) };
    let (family, proto) = (fam >> 4, fam & 0x0f);
    if command == Command::Proxy && !matches!(fam, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
        return Err(invalid("version 2 family and transport are not a defined pair"));
    }
    let Some(len) = buf.get(14..16) else { return Ok(Parsed::Incomplete) };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > V2_MAX_PAYLOAD {
        return Err(invalid("version 2 address block longer than 2048 bytes"));
    }
    let total = V2_HEADER_LEN + len;
    let Some(body) = buf.get(V2_HEADER_LEN..total) else { return Ok(Parsed::Incomplete) };
    let transport = match (command, proto) {
        (Command::Local, _) | (_, 0) => Transport::Unspec,
        (_, 1) => Transport::Stream,
        _ => Transport::Datagram,
    };
    let addresses = match (command, family) {
        (Command::Local, _) | (_, 0) => None,
        (_, 1) => {
            let a = body.get(..12).ok_or(invalid("version 2 INET block shorter than 12 bytes"))?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some(Addresses { source: SocketAddr::new(ip(0), port(8)), destination: SocketAddr::new(ip(4), port(10)) })
        }
        (_, 2) => {
            let a = body.get(..36).ok_or(invalid("version 2 INET6 block shorter than 36 bytes"))?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some(Addresses { source: SocketAddr::new(ip(0), port(32)), destination: SocketAddr::new(ip(16), port(34)) })
        }
        _ => {
            if body.len() < 216 {
                return Err(invalid("version 2 UNIX block shorter than 216 bytes"));
            }
            None
        }
    };
    Ok(Parsed::Complete { header: Header { version: Version::V2, command, transport, addresses }, len: total })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    /// haproxy writing a version 2 header in front of an HTTP request (a
    /// capture, byte for byte).
    #[test]
    fn a_captured_v2_header_and_what_follows_it() {
        let mut wire = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c, 0xac, 0x13,
            0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
        ];
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (h, len) = complete(&wire);
        assert_eq!(len, 28);
        assert_eq!(h, Header::tcp(Version::V2, addr("172.19.0.1:42578"), addr("172.19.0.3:80")));
        assert_eq!(h.client(), Some(addr("172.19.0.1:42578")));
        assert_eq!(&wire[len..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn v1_lines() {
        let wire = b"PROXY TCP4 172.19.0.1 172.19.0.3 42272 80\r\nGET";
        let (h, len) = complete(wire);
        assert_eq!(
            (h, &wire[len..]),
            (Header::tcp(Version::V1, addr("172.19.0.1:42272"), addr("172.19.0.3:80")), &b"GET"[..])
        );
        let wire = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
        let (h, len) = complete(wire);
        assert_eq!((h.client(), len), (Some(addr("[2001:db8::1]:65535")), wire.len()));
        for unknown in [&b"PROXY UNKNOWN\r\n"[..], b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"] {
            let (h, len) = complete(unknown);
            assert_eq!((h.transport, h.addresses, h.client(), len), (Transport::Unspec, None, None, unknown.len()));
        }
        // The longest line the specification allows is 107 bytes.
        let longest = format!("PROXY TCP6 {0} {0} 65535 65535\r\n", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(longest.len(), 104);
        assert_eq!(complete(longest.as_bytes()).1, 104);
        let padded = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 16));
        assert_eq!(padded.len(), V1_MAX_LEN);
        assert_eq!(complete(padded.as_bytes()).1, V1_MAX_LEN);
    }

    #[test]
    fn bad_v1_lines_are_invalid() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
        ];
        for b in bad {
            assert!(
                matches!(parse(b), Err(ProxyError::Invalid(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(b),
                parse(b)
            );
        }
        // No CRLF within 107 bytes.
        let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert!(matches!(parse(&long.as_bytes()[..V1_MAX_LEN - 1]), Ok(Parsed::Incomplete)));
        assert!(matches!(parse(&long.as_bytes()[..V1_MAX_LEN]), Err(ProxyError::Invalid(_))));
        // A line whose CRLF would end at byte 108.
        let over = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
        assert_eq!(over.len(), V1_MAX_LEN + 1);
        assert!(matches!(parse(over.as_bytes()), Err(ProxyError::Invalid(_))));
    }

    #[test]
    fn v2_variants() {
        let src = addr("[2001:db8::7]:5555");
        let dst = addr("[2001:db8::1]:3478");
        let h = Header::tcp(Version::V2, src, dst);
        let wire = h.encode_v2(&[(0x04, b"noop"), (0xea, b"\x01vpce-0123")]).unwrap();
        assert_eq!(wire.len(), 16 + 36 + 7 + 13);
        assert_eq!(&wire[12..16], &[0x21, 0x21, 0x00, 56]);
        assert_eq!(complete(&wire), (h, wire.len()));
        // LOCAL: no addresses, whatever the family says.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x11, 0x00, 0x0c]);
        local.extend_from_slice(&[1; 12]);
        let (h, len) = complete(&local);
        assert_eq!((h.command, h.addresses, h.client(), len), (Command::Local, None, None, 28));
        // UNSPEC and UNIX: no addresses.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert_eq!(complete(&unspec).0.client(), None);
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        unix.extend_from_slice(&[0; 216]);
        let (h, len) = complete(&unix);
        assert_eq!((h.transport, h.client(), len), (Transport::Stream, None, 232));
        // UDP over IPv4.
        let mut udp = V2_SIGNATURE.to_vec();
        udp.extend_from_slice(&[0x21, 0x12, 0x00, 0x0c, 192, 0, 2, 10, 192, 0, 2, 1, 0x15, 0xb3, 0x0d, 0x96]);
        let (h, _) = complete(&udp);
        assert_eq!((h.transport, h.client()), (Transport::Datagram, Some(addr("192.0.2.10:5555"))));
    }

    #[test]
    fn bad_v2_headers_are_invalid_as_soon_as_the_byte_arrives() {
        let header = |b12: u8, b13: u8, len: u16| {
            let mut v = V2_SIGNATURE.to_vec();
            v.push(b12);
            v.push(b13);
            v.extend_from_slice(&len.to_be_bytes());
            v
        };
        // Version 1 in a version 2 signature, an unknown command, an
        // undefined family/transport pair: refused with 13 or 14 bytes.
        assert!(matches!(parse(&header(0x11, 0x11, 12)[..13]), Err(ProxyError::Invalid(_))));
        assert!(matches!(parse(&header(0x22, 0x11, 12)[..13]), Err(ProxyError::Invalid(_))));
        assert!(matches!(parse(&header(0x21, 0x41, 12)[..14]), Err(ProxyError::Invalid(_))));
        assert!(matches!(parse(&header(0x21, 0x13, 12)[..14]), Err(ProxyError::Invalid(_))));
        assert!(matches!(parse(&header(0x21, 0x10, 12)[..14]), Err(ProxyError::Invalid(_))));
        // Too long: refused before any of the block arrives.
        assert!(matches!(parse(&header(0x21, 0x11, 2049)), Err(ProxyError::Invalid(_))));
        assert!(matches!(parse(&header(0x21, 0x11, 2048)), Ok(Parsed::Incomplete)));
        // A block too short for its family.
        let mut short = header(0x21, 0x11, 8);
        short.extend_from_slice(&[0; 8]);
        assert!(matches!(parse(&short), Err(ProxyError::Invalid(_))));
        let mut short = header(0x21, 0x21, 12);
        short.extend_from_slice(&[0; 12]);
        assert!(matches!(parse(&short), Err(ProxyError::Invalid(_))));
    }

    #[test]
    fn what_is_not_a_header_is_said_at_the_first_byte() {
        for first in [0x00u8, 0x01, 0x16, 0x40, 0x4f, b'G', 0xff] {
            assert_eq!(parse(&[first]), Err(ProxyError::NotAHeader), "{first:#x}");
            assert!(!starts_like_header(&[first]));
        }
        assert_eq!(parse(b"PROXX"), Err(ProxyError::NotAHeader));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyError::NotAHeader));
        for prefix in [&b""[..], b"P", b"PROX", b"PROXY ", b"\r", b"\r\n\r\n\0", &V2_SIGNATURE] {
            assert_eq!(parse(prefix), Ok(Parsed::Incomplete), "{prefix:?}");
            assert!(starts_like_header(prefix));
        }
    }

    #[test]
    fn encoders_refuse_what_their_version_cannot_say() {
        let v4 = addr("192.0.2.1:1");
        let v6 = addr("[::1]:2");
        assert_eq!(Header::tcp(Version::V1, v4, v6).encode_v1(), None);
        assert_eq!(Header::tcp(Version::V2, v4, v6).encode_v2(&[]), None);
        let local =
            Header { version: Version::V2, command: Command::Local, transport: Transport::Unspec, addresses: None };
        assert_eq!(local.encode_v1(), None);
        let big = vec![0u8; V2_MAX_PAYLOAD];
        assert_eq!(local.encode_v2(&[(1, &big)]), None);
        assert_eq!(local.encode_v2(&[(1, &big[..V2_MAX_PAYLOAD - 3])]).map(|v| v.len()), Some(MAX_HEADER_LEN));
    }

    // Property tests.

    fn arb_ip(v6: bool) -> BoxedStrategy<IpAddr> {
        if v6 {
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))).boxed()
        } else {
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))).boxed()
        }
    }

    fn arb_addresses() -> impl Strategy<Value = Addresses> {
        any::<bool>().prop_flat_map(|v6| {
            (arb_ip(v6), any::<u16>(), arb_ip(v6), any::<u16>()).prop_map(|(s, sp, d, dp)| Addresses {
                source: SocketAddr::new(s, sp),
                destination: SocketAddr::new(d, dp),
            })
        })
    }

    /// A header and its bytes, in either version, with TLVs for version 2.
    fn arb_wire() -> impl Strategy<Value = (Header, Vec<u8>)> {
        let tlvs = proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..4);
        (0u8..6, arb_addresses(), tlvs).prop_map(|(kind, a, tlvs)| {
            let tlvs: Vec<(u8, &[u8])> = tlvs.iter().map(|(t, v)| (*t, &v[..])).collect();
            let (version, command, transport, addresses) = match kind {
                0 => (Version::V1, Command::Proxy, Transport::Stream, Some(a)),
                1 => (Version::V1, Command::Proxy, Transport::Unspec, None),
                2 => (Version::V2, Command::Proxy, Transport::Stream, Some(a)),
                3 => (Version::V2, Command::Proxy, Transport::Datagram, Some(a)),
                4 => (Version::V2, Command::Proxy, Transport::Unspec, None),
                _ => (Version::V2, Command::Local, Transport::Unspec, None),
            };
            let h = Header { version, command, transport, addresses };
            let wire = match version {
                Version::V1 => h.encode_v1(),
                Version::V2 => h.encode_v2(&tlvs),
            };
            (h, wire.expect("representable"))
        })
    }

    /// Feeds `stream` to the parser in pieces cut at `cuts`, as a reader
    /// would: parse everything so far after each piece until it is no
    /// longer incomplete.
    fn incremental(stream: &[u8], cuts: &[usize]) -> Result<Parsed, ProxyError> {
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
        ends.push(stream.len());
        ends.sort_unstable();
        for end in ends {
            match parse(&stream[..end]) {
                Ok(Parsed::Incomplete) => {}
                other => return other,
            }
        }
        Ok(Parsed::Incomplete)
    }

    proptest! {
        #[test]
        fn headers_round_trip_and_leave_what_follows((h, wire) in arb_wire(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let stream = [wire.clone(), tail.clone()].concat();
            let got = parse(&stream);
            prop_assert_eq!(got, Ok(Parsed::Complete { header: h, len: wire.len() }));
            prop_assert!(wire.len() <= MAX_HEADER_LEN);
            if h.version == Version::V1 {
                prop_assert!(wire.len() <= V1_MAX_LEN);
            }
            // Every strict prefix is incomplete.
            for end in 0..wire.len() {
                prop_assert_eq!(parse(&stream[..end]), Ok(Parsed::Incomplete), "prefix of {}", end);
            }
        }

        #[test]
        fn a_split_header_parses_as_a_whole_one((_h, wire) in arb_wire(), tail in proptest::collection::vec(any::<u8>(), 0..16), cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let stream = [wire, tail].concat();
            prop_assert_eq!(incremental(&stream, &cuts), parse(&stream));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_splits_agree(
            start in 0usize..5,
            rest in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..320,
        ) {
            // Bytes after nothing, or after the start of a header (random
            // bytes alone would almost never reach the parsers).
            let starts: [&[u8]; 5] = [b"", b"PROXY ", b"PROXY TCP4 ", &V2_SIGNATURE, b"\r\n\r\n\0\r\nQUIT\n\x21\x11"];
            let bytes = [starts[start], &rest[..]].concat();
            let whole = parse(&bytes);
            if let Ok(Parsed::Complete { len, .. }) = whole {
                prop_assert!(len <= bytes.len() && len <= MAX_HEADER_LEN);
            }
            // An answer on a prefix is the answer on the whole.
            let cut = cut.min(bytes.len());
            match parse(&bytes[..cut]) {
                Ok(Parsed::Incomplete) => {}
                early => prop_assert_eq!(early, whole),
            }
        }

        #[test]
        fn mutated_headers_never_panic((_h, wire) in arb_wire(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut wire = wire;
            let i = at.index(wire.len());
            wire[i] = byte;
            let whole = parse(&wire);
            for end in 0..wire.len() {
                match parse(&wire[..end]) {
                    Ok(Parsed::Incomplete) => {}
                    early => prop_assert_eq!(early, whole),
                }
            }
        }
    }
}
