//! NAT behaviour discovery (RFC 5780 §4) with the classic RFC 3489 verdict.
//!
//! [`NatDiscovery`] runs these Binding transactions one after another,
//! from socket 0 unless said otherwise, at most ten a second (RFC 5780 §5):
//!
//! | test | sent to | asks | tells |
//! |---|---|---|---|
//! | I | the server `A1:P1` | — | UDP works at all; the mapped address M1; OTHER-ADDRESS `A2:P2`; NAT or not (M1 = local) |
//! | filtering II | `A1:P1` | change IP and port | an answer from `A2:P2` gets through: endpoint-independent filtering |
//! | filtering III | `A1:P1` | change port | an answer from `A1:P2` gets through: address-dependent filtering, else address-and-port-dependent |
//! | mapping II | `A2:P1` | — | M2 = M1: endpoint-independent mapping |
//! | mapping III | `A2:P2` | — | M3 = M2: address-dependent mapping, else address-and-port-dependent |
//! | hairpin | M1, from socket 1 | — | socket 0 receives it: the NAT hairpins |
//!
//! The filtering tests run before the mapping tests: they must not follow
//! traffic to the other address, which would open the NAT's filter to it
//! (RFC 5780 §3.2, "a precondition to these tests is that no binding be
//! established to the alternate address and port"). Mapping III runs only
//! when mapping II found a new mapping (RFC 5780 §4.3).
//!
//! The classic name follows the RFC 3489 flowchart as the project's founding
//! document gives it ([`classic`]): no answer to test I → blocked; not
//! NATed → open Internet if the changed-address answer arrives, else
//! symmetric UDP firewall; NATed → full cone if it arrives; else symmetric
//! if the mapping seen by the server's other IP differs; else restricted
//! cone if the changed-port answer arrives, else port-restricted cone.
//!
//! Step 4 ("send to the STUN server's other IP address", as the founding
//! document words it) uses mapping test II: the other IP, the same port.
//! RFC 3489 §10.1 sent it to CHANGED-ADDRESS, the other IP *and* port; but
//! filtering test II's answer came from exactly that address, and on a NAT
//! that dropped it (Linux conntrack, for one) it left a half-open entry for
//! that address pair, which forces a fresh port for the client's own
//! request there and would make a port-restricted cone look symmetric.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stun::{
    BindingRequest, BindingResponse, encode_binding_request, is_binding_request, parse_binding_response,
};
use super::{Probe, RetransmitPolicy, Rng, Transaction, Transmit};
use crate::wire::Message;
use crate::wire::attr::ChangeRequest;

/// Least time between the starts of two tests: RFC 5780 §5, "A client
/// SHOULD NOT generate more than ten new STUN transactions per second".
pub const PACING: Duration = Duration::from_millis(100);

/// A mapping or filtering behaviour (RFC 4787).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behavior {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address- and port-dependent.
    AddressAndPortDependent,
}

impl Behavior {
    /// "endpoint-independent", …, for people.
    pub const fn name(self) -> &'static str {
        match self {
            Behavior::EndpointIndependent => "endpoint-independent",
            Behavior::AddressDependent => "address-dependent",
            Behavior::AddressAndPortDependent => "address-and-port-dependent",
        }
    }

    /// "endpoint_independent", …, for scripts.
    pub const fn id(self) -> &'static str {
        match self {
            Behavior::EndpointIndependent => "endpoint_independent",
            Behavior::AddressDependent => "address_dependent",
            Behavior::AddressAndPortDependent => "address_and_port_dependent",
        }
    }
}

/// The classic RFC 3489 NAT types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClassicNat {
    /// No answer at all: UDP is blocked.
    Blocked,
    /// No NAT and no filtering.
    OpenInternet,
    /// No NAT, but a firewall lets only answers from where we sent through.
    SymmetricUdpFirewall,
    /// One mapping for every destination, and anyone may send to it.
    FullCone,
    /// One mapping; hosts we sent to may answer from any port.
    RestrictedCone,
    /// One mapping; only the address and port we sent to may answer.
    PortRestrictedCone,
    /// A new mapping for each destination.
    Symmetric,
}

impl ClassicNat {
    /// "full cone", …, for people.
    pub const fn name(self) -> &'static str {
        match self {
            ClassicNat::Blocked => "blocked",
            ClassicNat::OpenInternet => "open internet",
            ClassicNat::SymmetricUdpFirewall => "symmetric UDP firewall",
            ClassicNat::FullCone => "full cone",
            ClassicNat::RestrictedCone => "restricted cone",
            ClassicNat::PortRestrictedCone => "port-restricted cone",
            ClassicNat::Symmetric => "symmetric",
        }
    }

    /// "full_cone", …, for scripts.
    pub const fn id(self) -> &'static str {
        match self {
            ClassicNat::Blocked => "blocked",
            ClassicNat::OpenInternet => "open_internet",
            ClassicNat::SymmetricUdpFirewall => "symmetric_udp_firewall",
            ClassicNat::FullCone => "full_cone",
            ClassicNat::RestrictedCone => "restricted_cone",
            ClassicNat::PortRestrictedCone => "port_restricted_cone",
            ClassicNat::Symmetric => "symmetric",
        }
    }
}

/// What the RFC 3489 flowchart looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassicInputs {
    /// The client's own address.
    pub local: SocketAddr,
    /// Test I: the mapped address, `None` when nothing answered.
    pub test1: Option<SocketAddr>,
    /// Test II (change IP and port): did the answer arrive? `None`: unknown.
    pub test2: Option<bool>,
    /// Test I sent to the server's other IP: the mapped address; `None`:
    /// unknown.
    pub test1_other: Option<SocketAddr>,
    /// Test III (change port): did the answer arrive? `None`: unknown.
    pub test3: Option<bool>,
}

/// The RFC 3489 flowchart, step by step as the founding document gives it;
/// `None` where a step it needs is unknown.
pub fn classic(i: &ClassicInputs) -> Option<ClassicNat> {
    // 1. Test I: no answer → blocked.
    let Some(m1) = i.test1 else { return Some(ClassicNat::Blocked) };
    if m1 == i.local {
        // 2. Not NATed: test II answered → open; else a symmetric firewall.
        return i.test2.map(|a| if a { ClassicNat::OpenInternet } else { ClassicNat::SymmetricUdpFirewall });
    }
    // 3. NATed: test II answered → full cone.
    if i.test2? {
        return Some(ClassicNat::FullCone);
    }
    // 4. Test I to the server's other IP: another mapping → symmetric.
    if i.test1_other? != m1 {
        return Some(ClassicNat::Symmetric);
    }
    // 5. Test III answered → restricted cone; else port-restricted cone.
    i.test3.map(|a| if a { ClassicNat::RestrictedCone } else { ClassicNat::PortRestrictedCone })
}

/// The tests [`NatDiscovery`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Test {
    /// Test I: a plain Binding to the server.
    Binding,
    /// Filtering test II: CHANGE-REQUEST with both flags.
    ChangeIpAndPort,
    /// Filtering test III: CHANGE-REQUEST with the port flag.
    ChangePort,
    /// Mapping test II: to the other IP, primary port.
    OtherIp,
    /// Mapping test III: to OTHER-ADDRESS.
    OtherIpAndPort,
    /// Hairpinning: from socket 1 to the mapped address of socket 0.
    Hairpin,
}

impl Test {
    /// A name for scripts ("binding", "change_ip_and_port", …).
    pub const fn id(self) -> &'static str {
        match self {
            Test::Binding => "binding",
            Test::ChangeIpAndPort => "change_ip_and_port",
            Test::ChangePort => "change_port",
            Test::OtherIp => "other_ip",
            Test::OtherIpAndPort => "other_ip_and_port",
            Test::Hairpin => "hairpin",
        }
    }

    /// What the test does, for people.
    pub const fn describe(self) -> &'static str {
        match self {
            Test::Binding => "test I: Binding to the server",
            Test::ChangeIpAndPort => "filtering II: answer from the other IP and port",
            Test::ChangePort => "filtering III: answer from the other port",
            Test::OtherIp => "mapping II: Binding to the other IP",
            Test::OtherIpAndPort => "mapping III: Binding to the other IP and port",
            Test::Hairpin => "hairpinning: request to our own mapped address",
        }
    }
}

/// How one test ended.
#[allow(clippy::large_enum_variant)] // one per test, never on a hot path
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered.
    Answer {
        /// From where.
        from: SocketAddr,
        /// What.
        response: BindingResponse,
        /// Round-trip time from the latest transmission.
        rtt: Duration,
        /// Requests sent.
        transmissions: u32,
    },
    /// The hairpinned request arrived on socket 0.
    HairpinReceived {
        /// Its source as socket 0 saw it.
        from: SocketAddr,
        /// Time from the latest transmission.
        rtt: Duration,
        /// Requests sent.
        transmissions: u32,
    },
    /// Nothing, after every retransmission.
    NoAnswer {
        /// Requests sent.
        transmissions: u32,
    },
}

/// One test as it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRecord {
    /// Which.
    pub test: Test,
    /// The socket it was sent from.
    pub socket: usize,
    /// Where it was sent.
    pub to: SocketAddr,
    /// Where a valid answer must come from (for the CHANGE-REQUEST tests).
    pub expect_from: Option<SocketAddr>,
    /// How it ended.
    pub outcome: Outcome,
}

impl TestRecord {
    fn response(&self) -> Option<&BindingResponse> {
        match &self.outcome {
            Outcome::Answer { response, .. } => Some(response),
            _ => None,
        }
    }

    fn mapped(&self) -> Option<SocketAddr> {
        self.response().filter(|r| r.error.is_none()).and_then(BindingResponse::reflexive)
    }

    fn no_answer(&self) -> bool {
        matches!(self.outcome, Outcome::NoAnswer { .. })
    }
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatReport {
    /// The server asked.
    pub server: SocketAddr,
    /// Socket 0's address.
    pub local: SocketAddr,
    /// The mapped (server-reflexive) address from test I.
    pub mapped: Option<SocketAddr>,
    /// The server's OTHER-ADDRESS.
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN of test I.
    pub response_origin: Option<SocketAddr>,
    /// The server's SOFTWARE.
    pub software: Option<String>,
    /// Test I's round-trip time.
    pub rtt: Option<Duration>,
    /// Nothing answered test I.
    pub udp_blocked: bool,
    /// The mapped address differs from the local one; `None`: unknown.
    pub behind_nat: Option<bool>,
    /// Mapping behaviour (RFC 5780 §4.3); `None`: could not be tested.
    pub mapping: Option<Behavior>,
    /// Filtering behaviour (RFC 5780 §4.4); `None`: could not be tested.
    pub filtering: Option<Behavior>,
    /// Does the NAT hairpin? `None`: not tested (no NAT, or no mapping).
    pub hairpinning: Option<bool>,
    /// MAPPED-ADDRESS and XOR-MAPPED-ADDRESS differ: a generic ALG rewrote
    /// the plain one (RFC 5780 §3.6).
    pub alg: bool,
    /// The classic RFC 3489 name; `None`: the flowchart could not finish.
    pub classic: Option<ClassicNat>,
    /// Every test as it ran.
    pub tests: Vec<TestRecord>,
    /// Why something is unknown, and anything odd seen on the way.
    pub notes: Vec<String>,
}

struct Active {
    test: Test,
    socket: usize,
    to: SocketAddr,
    expect_from: Option<SocketAddr>,
    request: BindingRequest,
    tx: Transaction,
}

/// The discovery state machine. Socket 0 is the one under test, socket 1
/// a second local socket used only to send the hairpinning request; both
/// must be bound to a specific local address (not a wildcard), which the
/// "not NATed" check compares against.
pub struct NatDiscovery {
    server: SocketAddr,
    local: [SocketAddr; 2],
    policy: RetransmitPolicy,
    rng: Rng,
    active: Option<Active>,
    records: Vec<TestRecord>,
    /// The earliest start of the next test (pacing).
    next_start: Instant,
    done: bool,
}

impl NatDiscovery {
    /// Discovery against `server` from sockets bound to `local`, the first
    /// request due at `now`; `seed` seeds the transaction ids.
    pub fn new(
        server: SocketAddr,
        local: [SocketAddr; 2],
        policy: RetransmitPolicy,
        now: Instant,
        seed: u64,
    ) -> NatDiscovery {
        NatDiscovery {
            server,
            local,
            policy,
            rng: Rng(seed),
            active: None,
            records: Vec::new(),
            next_start: now,
            done: false,
        }
    }

    fn record(&self, t: Test) -> Option<&TestRecord> {
        self.records.iter().find(|r| r.test == t)
    }

    /// The next test: which, from which socket, to where, expecting the
    /// answer from where, asking what.
    fn next_test(&self) -> Option<(Test, usize, SocketAddr, Option<SocketAddr>, BindingRequest)> {
        let plain = BindingRequest::default();
        let Some(t1) = self.record(Test::Binding) else {
            return Some((Test::Binding, 0, self.server, None, plain));
        };
        let mapped = t1.mapped()?;
        let natted = mapped != self.local[0];
        let other = t1.response().and_then(|r| r.other_address);
        if let Some(other) = other {
            let change = |change_ip, change_port| BindingRequest {
                change: Some(ChangeRequest { change_ip, change_port }),
                ..plain
            };
            match self.record(Test::ChangeIpAndPort) {
                None => return Some((Test::ChangeIpAndPort, 0, self.server, Some(other), change(true, true))),
                Some(r) if r.no_answer() && self.record(Test::ChangePort).is_none() => {
                    let from = SocketAddr::new(self.server.ip(), other.port());
                    return Some((Test::ChangePort, 0, self.server, Some(from), change(false, true)));
                }
                _ => {}
            }
            if natted {
                match self.record(Test::OtherIp) {
                    None => {
                        let to = SocketAddr::new(other.ip(), self.server.port());
                        return Some((Test::OtherIp, 0, to, None, plain));
                    }
                    Some(r)
                        if r.mapped().is_some_and(|m| m != mapped) && self.record(Test::OtherIpAndPort).is_none() =>
                    {
                        return Some((Test::OtherIpAndPort, 0, other, None, plain));
                    }
                    _ => {}
                }
            }
        }
        if natted && self.record(Test::Hairpin).is_none() {
            return Some((Test::Hairpin, 1, mapped, None, plain));
        }
        None
    }

    /// Records the active test's outcome. Pacing still counts from its
    /// start (`next_start` was set then); one that timed out started long
    /// ago, so the next begins at once.
    fn finish_active(&mut self, outcome: Outcome) {
        if let Some(a) = self.active.take() {
            self.records.push(TestRecord {
                test: a.test,
                socket: a.socket,
                to: a.to,
                expect_from: a.expect_from,
                outcome,
            });
        }
    }

    /// The tests run so far.
    pub fn records(&self) -> &[TestRecord] {
        &self.records
    }

    /// The verdict from the tests run so far (complete once
    /// [`Probe::is_done`]).
    pub fn report(&self) -> NatReport {
        let t1 = self.record(Test::Binding);
        let r1 = t1.and_then(TestRecord::response);
        let mapped = t1.and_then(TestRecord::mapped);
        let mut notes = Vec::new();
        let udp_blocked = t1.is_some_and(TestRecord::no_answer);
        if let Some(e) = r1.and_then(|r| r.error.as_ref()) {
            notes.push(format!("the server answered test I with error {e}"));
        }
        let behind_nat = mapped.map(|m| m != self.local[0]);
        let other = r1.and_then(|r| r.other_address);
        if r1.is_some() && other.is_none() {
            notes.push("the server sent no OTHER-ADDRESS: it does not support RFC 5780 behaviour discovery".into());
        }
        if let (Some(o), Some(Outcome::Answer { from, .. })) =
            (r1.and_then(|r| r.response_origin), t1.map(|t| &t.outcome))
            && o != *from
        {
            notes.push(format!(
                "RESPONSE-ORIGIN {o} differs from the answer's source {from}: a NAT on the server's side"
            ));
        }

        // Filtering: did a valid answer from the changed address arrive?
        let answered = |t: Test, notes: &mut Vec<String>| -> Option<bool> {
            let r = self.record(t)?;
            match &r.outcome {
                Outcome::NoAnswer { .. } => Some(false),
                Outcome::Answer { response, .. } if response.error.is_some() => {
                    let e = response.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                    notes.push(format!("{}: the server refused CHANGE-REQUEST with {e}", t.describe()));
                    None
                }
                Outcome::Answer { from, .. } if Some(*from) != r.expect_from => {
                    let want = r.expect_from.map_or_else(String::new, |a| a.to_string());
                    notes.push(format!(
                        "{}: answered from {from}, not {want}: CHANGE-REQUEST not honoured",
                        t.describe()
                    ));
                    None
                }
                _ => Some(true),
            }
        };
        let test2 = answered(Test::ChangeIpAndPort, &mut notes);
        let test3 = answered(Test::ChangePort, &mut notes);
        let filtering = match (test2, test3) {
            (Some(true), _) => Some(Behavior::EndpointIndependent),
            (Some(false), Some(true)) => Some(Behavior::AddressDependent),
            (Some(false), Some(false)) => Some(Behavior::AddressAndPortDependent),
            _ => None,
        };

        let m2 = self.record(Test::OtherIp);
        let m3 = self.record(Test::OtherIpAndPort);
        let mapping = match behind_nat {
            Some(false) => Some(Behavior::EndpointIndependent),
            Some(true) => match (m2.and_then(TestRecord::mapped), m3.and_then(TestRecord::mapped)) {
                (Some(m2), _) if Some(m2) == mapped => Some(Behavior::EndpointIndependent),
                (Some(m2), Some(m3)) if m3 == m2 => Some(Behavior::AddressDependent),
                (Some(_), Some(_)) => Some(Behavior::AddressAndPortDependent),
                (m2v, _) => {
                    if other.is_some() {
                        let which = if m2v.is_none() { Test::OtherIp } else { Test::OtherIpAndPort };
                        notes.push(format!("{}: no usable answer, mapping unknown", which.describe()));
                    }
                    None
                }
            },
            None => None,
        };

        let hairpinning = match self.record(Test::Hairpin).map(|r| &r.outcome) {
            Some(Outcome::HairpinReceived { .. }) => Some(true),
            Some(_) => Some(false),
            None => None,
        };

        let classic = match t1 {
            Some(_) if !udp_blocked && mapped.is_none() => None,
            Some(_) => classic(&ClassicInputs {
                local: self.local[0],
                test1: mapped,
                test2,
                test1_other: m2.and_then(TestRecord::mapped),
                test3,
            }),
            None => None,
        };
        let rtt = match t1.map(|t| &t.outcome) {
            Some(Outcome::Answer { rtt, .. }) => Some(*rtt),
            _ => None,
        };
        NatReport {
            server: self.server,
            local: self.local[0],
            mapped,
            other_address: other,
            response_origin: r1.and_then(|r| r.response_origin),
            software: r1.and_then(|r| r.software.clone()),
            rtt,
            udp_blocked,
            behind_nat,
            mapping,
            filtering,
            hairpinning,
            alg: r1.is_some_and(BindingResponse::alg_detected),
            classic,
            tests: self.records.clone(),
            notes,
        }
    }
}

impl Probe for NatDiscovery {
    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        if self.done {
            return None;
        }
        if self.active.is_none() {
            if now < self.next_start {
                return None;
            }
            let Some((test, socket, to, expect_from, request)) = self.next_test() else {
                self.done = true;
                return None;
            };
            let tid = self.rng.tid();
            self.active =
                Some(Active { test, socket, to, expect_from, request, tx: Transaction::new(tid, self.policy, now) });
            self.next_start = now + PACING;
        }
        let a = self.active.as_mut()?;
        if !a.tx.poll_transmit(now) {
            return None;
        }
        let len = encode_binding_request(out, a.tx.tid(), &a.request).ok()?;
        Some(Transmit { socket: a.socket, to: a.to, len })
    }

    fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, packet: &[u8]) {
        let Some(a) = &self.active else { return };
        let tid = a.tx.tid();
        if a.test == Test::Hairpin {
            if socket == 0 && is_binding_request(packet, tid) {
                let outcome =
                    Outcome::HairpinReceived { from, rtt: a.tx.rtt(now), transmissions: a.tx.transmissions() };
                self.finish_active(outcome);
            }
            return;
        }
        let Ok(msg) = Message::parse(packet) else { return };
        if msg.transaction_id() != tid || socket != a.socket {
            return;
        }
        let Some(response) = parse_binding_response(&msg) else { return };
        let outcome = Outcome::Answer { from, response, rtt: a.tx.rtt(now), transmissions: a.tx.transmissions() };
        self.finish_active(outcome);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        match &self.active {
            Some(a) => Some(a.tx.poll_timeout()),
            None => Some(self.next_start),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(a) = &self.active
            && a.tx.is_timed_out(now)
        {
            let outcome = Outcome::NoAnswer { transmissions: a.tx.transmissions() };
            self.finish_active(outcome);
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_flowchart() {
        let local = a("10.0.0.2:5000");
        let nat = a("198.51.100.1:6000");
        let i = |test1, test2, test1_other, test3| ClassicInputs { local, test1, test2, test1_other, test3 };
        assert_eq!(classic(&i(None, None, None, None)), Some(ClassicNat::Blocked));
        assert_eq!(classic(&i(Some(local), Some(true), None, None)), Some(ClassicNat::OpenInternet));
        assert_eq!(classic(&i(Some(local), Some(false), None, None)), Some(ClassicNat::SymmetricUdpFirewall));
        assert_eq!(classic(&i(Some(nat), Some(true), None, None)), Some(ClassicNat::FullCone));
        assert_eq!(
            classic(&i(Some(nat), Some(false), Some(a("198.51.100.1:6001")), None)),
            Some(ClassicNat::Symmetric)
        );
        assert_eq!(classic(&i(Some(nat), Some(false), Some(nat), Some(true))), Some(ClassicNat::RestrictedCone));
        assert_eq!(classic(&i(Some(nat), Some(false), Some(nat), Some(false))), Some(ClassicNat::PortRestrictedCone));
        assert_eq!(classic(&i(Some(nat), None, None, None)), None);
        assert_eq!(classic(&i(Some(nat), Some(false), None, None)), None);
    }
}
