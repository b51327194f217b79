//! The probes' `--json` output: one object per probe, written with
//! serde_json on one line. Field names and nesting are stable (see
//! docs/operations.md); durations are milliseconds rounded to three
//! decimals, written without a fraction when they are whole.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A duration in milliseconds, three decimals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ms(pub Duration);

impl Serialize for Ms {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = (self.0.as_secs_f64() * 1e6).round() / 1e3;
        // 2 ms as `2`, not `2.0`.
        if ms.fract() == 0.0 && ms < 9e15 { s.serialize_u64(ms as u64) } else { s.serialize_f64(ms) }
    }
}

/// One object on one line (these types always serialise).
pub fn line(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `probe stun`.
#[derive(Serialize)]
pub struct Stun<'a> {
    /// `"stun"`.
    pub probe: &'static str,
    /// The server asked.
    pub server: SocketAddr,
    /// The local socket.
    pub local: SocketAddr,
    /// Whether the check passed.
    pub ok: bool,
    /// How the transaction ended.
    #[serde(flatten)]
    pub outcome: StunOutcome<'a>,
}

/// How a Binding transaction ended, as `probe stun` reports it.
#[allow(clippy::large_enum_variant)] // one value per run, serialised once
#[derive(Serialize)]
#[serde(untagged)]
pub enum StunOutcome<'a> {
    /// No answer.
    Timeout {
        /// `"no answer"`.
        error: &'static str,
        /// Requests sent.
        transmissions: u32,
    },
    /// An answer.
    Response {
        /// The error response's code and reason.
        error: Option<String>,
        /// The server-reflexive address.
        reflexive: Option<SocketAddr>,
        /// XOR-MAPPED-ADDRESS.
        xor_mapped_address: Option<SocketAddr>,
        /// MAPPED-ADDRESS.
        mapped_address: Option<SocketAddr>,
        /// Where the answer came from.
        answered_from: SocketAddr,
        /// Round-trip time.
        rtt_ms: Ms,
        /// Requests sent.
        transmissions: u32,
        /// RESPONSE-ORIGIN.
        response_origin: Option<SocketAddr>,
        /// OTHER-ADDRESS.
        other_address: Option<SocketAddr>,
        /// SOFTWARE.
        software: Option<&'a str>,
        /// MAPPED-ADDRESS and XOR-MAPPED-ADDRESS differ.
        alg: bool,
    },
}

/// `probe nat`.
#[derive(Serialize)]
pub struct Nat<'a> {
    /// `"nat"`.
    pub probe: &'static str,
    /// The server asked.
    pub server: SocketAddr,
    /// The socket under test.
    pub local: SocketAddr,
    /// Whether the check passed.
    pub ok: bool,
    /// No answer at all.
    pub udp_blocked: bool,
    /// The mapped address.
    pub mapped: Option<SocketAddr>,
    /// Whether the mapped address differs from the local one.
    pub behind_nat: Option<bool>,
    /// The server's OTHER-ADDRESS.
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN.
    pub response_origin: Option<SocketAddr>,
    /// SOFTWARE.
    pub software: Option<&'a str>,
    /// Round-trip time of the first test.
    pub rtt_ms: Option<Ms>,
    /// Mapping behaviour id.
    pub mapping: Option<&'static str>,
    /// Filtering behaviour id.
    pub filtering: Option<&'static str>,
    /// Hairpinning works.
    pub hairpinning: Option<bool>,
    /// An ALG rewrites addresses.
    pub alg: bool,
    /// The classic RFC 3489 name's id.
    pub classic: Option<&'static str>,
    /// Every test as it ran.
    pub tests: Vec<NatTest>,
    /// Notes.
    pub notes: &'a [String],
}

/// One test of `probe nat`.
#[derive(Serialize)]
pub struct NatTest {
    /// The test's id.
    pub test: &'static str,
    /// Where the request went.
    pub to: SocketAddr,
    /// The local socket it left from.
    pub socket: usize,
    /// What came of it.
    pub outcome: NatOutcome,
}

/// What came of one NAT test.
#[derive(Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum NatOutcome {
    /// An answer.
    Answer {
        /// Where it came from.
        from: SocketAddr,
        /// The reflexive address in it.
        mapped: Option<SocketAddr>,
        /// The error response's code and reason.
        error: Option<String>,
        /// Round-trip time.
        rtt_ms: Ms,
        /// Requests sent.
        transmissions: u32,
    },
    /// The hairpinned request came back.
    Received {
        /// Where it came from.
        from: SocketAddr,
        /// Round-trip time.
        rtt_ms: Ms,
        /// Requests sent.
        transmissions: u32,
    },
    /// Nothing.
    NoAnswer {
        /// Requests sent.
        transmissions: u32,
    },
}

/// `probe turn`.
#[derive(Serialize)]
pub struct Turn<'a> {
    /// `"turn"`.
    pub probe: &'static str,
    /// The server.
    pub server: SocketAddr,
    /// The alternate server a 300 (Try Alternate) from `server` sent the
    /// probe to, where everything after the Allocate ran; `None` when it
    /// was not redirected.
    pub redirected_to: Option<SocketAddr>,
    /// The client socket.
    pub local: SocketAddr,
    /// The echo peer's socket.
    pub peer: SocketAddr,
    /// The peer address given to the server.
    pub peer_reflexive: Option<SocketAddr>,
    /// Whether the check passed.
    pub ok: bool,
    /// Why it failed.
    pub error: Option<&'a str>,
    /// The realm.
    pub realm: Option<&'a str>,
    /// SOFTWARE.
    pub software: Option<&'a str>,
    /// XOR-MAPPED-ADDRESS.
    pub mapped: Option<SocketAddr>,
    /// XOR-RELAYED-ADDRESS.
    pub relayed: Option<SocketAddr>,
    /// Where the peer saw the relayed packets come from.
    pub peer_saw: Option<SocketAddr>,
    /// LIFETIME granted, seconds.
    pub lifetime: Option<u32>,
    /// Round-trip times of the echoes that came back.
    pub echo_rtt_ms: Vec<Ms>,
    /// Echoes that never came back.
    pub echoes_lost: u32,
    /// The allocation was released.
    pub released: bool,
    /// Every request, in order.
    pub requests: Vec<TurnStep<'a>>,
}

/// One request of `probe turn`.
#[derive(Serialize)]
pub struct TurnStep<'a> {
    /// Its name.
    pub request: &'static str,
    /// The error, if it failed.
    pub error: Option<&'a str>,
    /// Round-trip time of the answer.
    pub rtt_ms: Option<Ms>,
    /// Requests sent.
    pub transmissions: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_json_with_milliseconds() {
        let step = |rtt| TurnStep { request: "Allocate", error: Some("a\"b\\c\n\u{1}"), rtt_ms: rtt, transmissions: 3 };
        assert_eq!(
            line(&step(Some(Ms(Duration::from_micros(1234))))),
            r#"{"request":"Allocate","error":"a\"b\\c\n\u0001","rtt_ms":1.234,"transmissions":3}"#
        );
        assert_eq!(line(&vec![Ms(Duration::from_millis(2)), Ms(Duration::from_nanos(1_500))]), "[2,0.002]");
        assert!(line(&step(None)).contains(r#""rtt_ms":null"#));
        let o = NatOutcome::NoAnswer { transmissions: 7 };
        assert_eq!(line(&o), r#"{"result":"no_answer","transmissions":7}"#);
        let s = Stun {
            probe: "stun",
            server: "127.0.0.1:3478".parse().unwrap(),
            local: "[::1]:5000".parse().unwrap(),
            ok: false,
            outcome: StunOutcome::Timeout { error: "no answer", transmissions: 2 },
        };
        assert_eq!(
            line(&s),
            r#"{"probe":"stun","server":"127.0.0.1:3478","local":"[::1]:5000","ok":false,"error":"no answer","transmissions":2}"#
        );
    }
}
