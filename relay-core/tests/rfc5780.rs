//! The server's side of RFC 5780 NAT behaviour discovery, request by
//! request: OTHER-ADDRESS and RESPONSE-ORIGIN, CHANGE-REQUEST answered from
//! the socket Table 1 names, RESPONSE-PORT, PADDING, and the 420 a server
//! without an alternate address (or a TCP client) gets.

use std::net::SocketAddr;
use std::time::Instant;

use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::stats::{MethodLabel, Outcome};
use relay_core::server::{Client, ClientAction, Rfc5780Error, Server, ServerConfig, ServerParts, Transport};
use relay_core::wire::attr::ChangeRequest;
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};

const A1P1: &str = "203.0.113.1:3478";
const A1P2: &str = "203.0.113.1:3479";
const A2P1: &str = "203.0.113.2:3478";
const A2P2: &str = "203.0.113.2:3479";
const CLIENT: &str = "198.51.100.20:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server(rfc5780: bool) -> Server {
    let parts = ServerParts::new(Credentials::new("example.org"))
        .with_config(ServerConfig { software: Some("rfc5780 test".into()), ..ServerConfig::default() })
        .with_nonces(NonceIssuer::new([1; 32], 600));
    let mut s = Server::new(parts, Instant::now(), 1_800_000_000, 5);
    if rfc5780 {
        s.set_rfc5780(addr(A1P1), addr(A2P2)).unwrap();
    }
    s
}

fn binding(attrs: &[Attribute<'_>], fingerprint: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let tid = TransactionId([3; 12]);
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::BINDING), tid).unwrap();
    for a in attrs {
        b.add(a).unwrap();
    }
    if fingerprint {
        b.add_fingerprint().unwrap();
    }
    let n = b.finish();
    buf.truncate(n);
    buf
}

fn change(change_ip: bool, change_port: bool) -> Attribute<'static> {
    Attribute::ChangeRequest(ChangeRequest { change_ip, change_port })
}

/// What came back: where from, where to, the attributes.
#[derive(Debug)]
struct Answer {
    from: SocketAddr,
    to: SocketAddr,
    class: Class,
    bytes: Vec<u8>,
}

impl Answer {
    fn attrs(&self) -> Vec<Attribute<'_>> {
        let m = Message::parse(&self.bytes).unwrap();
        let tid = m.transaction_id();
        m.attributes().map(|a| a.decode(&tid).unwrap()).collect()
    }

    fn get(&self, ty: AttributeType) -> Option<Attribute<'_>> {
        self.attrs().into_iter().find(|a| a.attribute_type() == ty)
    }

    fn error(&self) -> Option<u16> {
        match self.get(AttributeType::ERROR_CODE) {
            Some(Attribute::ErrorCode(e)) => Some(e.code),
            _ => None,
        }
    }
}

fn ask(s: &mut Server, client: &Client, req: &[u8]) -> Answer {
    let mut out = vec![0u8; 1500];
    let (from, to, len) = match s.handle_client(Instant::now(), client, req, &mut out) {
        ClientAction::Reply { len } => (client.local, client.remote, len),
        ClientAction::ReplyFrom { local, to, len } => (local, to, len),
        other => panic!("no answer: {other:?}"),
    };
    out.truncate(len);
    let class = Message::parse(&out).unwrap().class();
    Answer { from, to, class, bytes: out }
}

#[test]
fn without_an_alternate_address_change_request_is_420() {
    let mut s = server(false);
    let c = Client::udp(addr(CLIENT), addr(A1P1));
    let a = ask(&mut s, &c, &binding(&[], true));
    assert_eq!(a.class, Class::Success);
    assert_eq!(a.get(AttributeType::XOR_MAPPED_ADDRESS), Some(Attribute::XorMappedAddress(addr(CLIENT))));
    assert_eq!(a.get(AttributeType::MAPPED_ADDRESS), Some(Attribute::MappedAddress(addr(CLIENT))));
    assert_eq!(a.get(AttributeType::OTHER_ADDRESS), None);
    assert_eq!(a.get(AttributeType::RESPONSE_ORIGIN), None);
    assert!(a.get(AttributeType::FINGERPRINT).is_some());

    // RFC 5780 §6.1: CHANGE-REQUEST without an alternate address → 420,
    // naming the attribute in UNKNOWN-ATTRIBUTES (RFC 8489 §14.9) —
    // whatever its flags.
    for (ip, port) in [(true, true), (false, true), (true, false), (false, false)] {
        let a = ask(&mut s, &c, &binding(&[change(ip, port)], false));
        assert_eq!((a.class, a.error()), (Class::Error, Some(420)));
        let Some(Attribute::UnknownAttributes(list)) = a.get(AttributeType::UNKNOWN_ATTRIBUTES) else { panic!() };
        assert_eq!(list.iter().collect::<Vec<_>>(), [0x0003]);
        assert_eq!((a.from, a.to), (addr(A1P1), addr(CLIENT)));
    }
    assert_eq!(s.stats().requests_of(MethodLabel::Binding, Outcome::Success), 1);
}

#[test]
fn table_1_source_addresses_and_other_address() {
    let mut s = server(true);
    // For a request to Da:Dp: (flags) → source, and OTHER-ADDRESS is Ca:Cp.
    let cases = [
        (A1P1, A2P2, [(false, false, A1P1), (true, false, A2P1), (false, true, A1P2), (true, true, A2P2)]),
        (A1P2, A2P1, [(false, false, A1P2), (true, false, A2P2), (false, true, A1P1), (true, true, A2P1)]),
        (A2P1, A1P2, [(false, false, A2P1), (true, false, A1P1), (false, true, A2P2), (true, true, A1P2)]),
        (A2P2, A1P1, [(false, false, A2P2), (true, false, A1P2), (false, true, A2P1), (true, true, A1P1)]),
    ];
    for (local, other, flags) in cases {
        let c = Client::udp(addr(CLIENT), addr(local));
        // No CHANGE-REQUEST at all: OTHER-ADDRESS and RESPONSE-ORIGIN still.
        let a = ask(&mut s, &c, &binding(&[], false));
        assert_eq!((a.from, a.to), (addr(local), addr(CLIENT)));
        assert_eq!(a.get(AttributeType::OTHER_ADDRESS), Some(Attribute::OtherAddress(addr(other))), "{local}");
        assert_eq!(a.get(AttributeType::RESPONSE_ORIGIN), Some(Attribute::ResponseOrigin(addr(local))));
        for (ip, port, source) in flags {
            let a = ask(&mut s, &c, &binding(&[change(ip, port)], true));
            assert_eq!(a.class, Class::Success);
            assert_eq!((a.from, a.to), (addr(source), addr(CLIENT)), "{local} change ip={ip} port={port}");
            assert_eq!(a.get(AttributeType::RESPONSE_ORIGIN), Some(Attribute::ResponseOrigin(addr(source))));
            assert_eq!(a.get(AttributeType::OTHER_ADDRESS), Some(Attribute::OtherAddress(addr(other))));
            assert_eq!(a.get(AttributeType::XOR_MAPPED_ADDRESS), Some(Attribute::XorMappedAddress(addr(CLIENT))));
            assert_eq!(a.get(AttributeType::MAPPED_ADDRESS), Some(Attribute::MappedAddress(addr(CLIENT))));
            Message::parse(&a.bytes).unwrap().verify_fingerprint().unwrap();
        }
    }
    // A plain answer from where the request arrived is a Reply, not a
    // ReplyFrom (the I/O layer's usual path).
    let c = Client::udp(addr(CLIENT), addr(A1P1));
    let mut out = vec![0u8; 1500];
    let action = s.handle_client(Instant::now(), &c, &binding(&[change(false, false)], false), &mut out);
    assert!(matches!(action, ClientAction::Reply { .. }), "{action:?}");
}

#[test]
fn response_port_and_padding() {
    for rfc5780 in [false, true] {
        let mut s = server(rfc5780);
        let c = Client::udp(addr(CLIENT), addr(A1P1));
        // RESPONSE-PORT: to the client's IP at that port, from where it arrived.
        let a = ask(&mut s, &c, &binding(&[Attribute::ResponsePort(41000)], false));
        assert_eq!(a.class, Class::Success);
        assert_eq!((a.from, a.to), (addr(A1P1), addr("198.51.100.20:41000")));
        assert_eq!(a.get(AttributeType::XOR_MAPPED_ADDRESS), Some(Attribute::XorMappedAddress(addr(CLIENT))));

        // PADDING: echoed in the response (its length rounded up to 4).
        let pad = [0x55u8; 501];
        let a = ask(&mut s, &c, &binding(&[Attribute::Padding(&pad)], true));
        assert_eq!(a.class, Class::Success);
        let Some(Attribute::Padding(p)) = a.get(AttributeType::PADDING) else { panic!("no PADDING") };
        assert_eq!(p.len(), 504);
        Message::parse(&a.bytes).unwrap().verify_fingerprint().unwrap();

        // More than the response buffer holds: capped, still answered.
        let big = vec![0u8; 1400];
        let a = ask(&mut s, &c, &binding(&[Attribute::Padding(&big)], false));
        let Some(Attribute::Padding(p)) = a.get(AttributeType::PADDING) else { panic!("no PADDING") };
        assert!(p.len() < 1400 && p.len() >= 1200, "{}", p.len());
        assert!(a.bytes.len() <= 1500);

        // RFC 5780 §6.1: PADDING with RESPONSE-PORT → 400; port 0 → 400.
        let a = ask(&mut s, &c, &binding(&[Attribute::ResponsePort(41000), Attribute::Padding(&pad)], false));
        assert_eq!(a.error(), Some(400));
        let a = ask(&mut s, &c, &binding(&[Attribute::ResponsePort(0)], false));
        assert_eq!(a.error(), Some(400));
    }
    // With CHANGE-REQUEST and RESPONSE-PORT together: both apply.
    let mut s = server(true);
    let c = Client::udp(addr(CLIENT), addr(A1P1));
    let a = ask(&mut s, &c, &binding(&[change(true, true), Attribute::ResponsePort(41000)], false));
    assert_eq!((a.from, a.to), (addr(A2P2), addr("198.51.100.20:41000")));
}

#[test]
fn tcp_clients_and_other_listeners_get_no_address_change() {
    let mut s = server(true);
    let tcp = Client { transport: Transport::Tcp, remote: addr(CLIENT), local: addr(A1P1), conn: 7 };
    let a = ask(&mut s, &tcp, &binding(&[], false));
    assert_eq!(a.class, Class::Success);
    assert_eq!(a.get(AttributeType::OTHER_ADDRESS), None, "the alternates are UDP only");
    assert_eq!(a.get(AttributeType::RESPONSE_ORIGIN), Some(Attribute::ResponseOrigin(addr(A1P1))));
    let a = ask(&mut s, &tcp, &binding(&[change(true, false)], false));
    assert_eq!(a.error(), Some(420));
    let a = ask(&mut s, &tcp, &binding(&[change(false, false)], false));
    assert_eq!(a.class, Class::Success, "no flag set: nothing to change");
    let a = ask(&mut s, &tcp, &binding(&[Attribute::ResponsePort(41000)], false));
    assert_eq!(a.error(), Some(420));

    // A UDP listener outside the four addresses: plain STUN there.
    let c = Client::udp(addr(CLIENT), addr("203.0.113.9:3478"));
    let a = ask(&mut s, &c, &binding(&[], false));
    assert_eq!(a.get(AttributeType::OTHER_ADDRESS), None);
    let a = ask(&mut s, &c, &binding(&[change(true, true)], false));
    assert_eq!(a.error(), Some(420));
}

#[test]
fn malformed_rfc5780_attributes_are_400_and_pairs_are_checked() {
    let mut s = server(true);
    let c = Client::udp(addr(CLIENT), addr(A1P1));
    // A 2-byte CHANGE-REQUEST (the raw form lets the test write one).
    let req = binding(&[Attribute::Other(AttributeType::CHANGE_REQUEST, &[0, 0])], false);
    let a = ask(&mut s, &c, &req);
    assert_eq!(a.error(), Some(400));

    let mut s = server(false);
    assert_eq!(s.set_rfc5780(addr(A1P1), addr("[2001:db8::1]:3479")), Err(Rfc5780Error::FamilyMismatch));
    assert_eq!(s.set_rfc5780(addr(A1P1), addr(A1P2)), Err(Rfc5780Error::NotDistinct));
    assert_eq!(s.set_rfc5780(addr(A1P1), addr(A2P1)), Err(Rfc5780Error::NotDistinct));
    assert!(s.rfc5780().is_none());
    s.set_rfc5780(addr(A1P1), addr(A2P2)).unwrap();
    assert_eq!(s.rfc5780().unwrap().listen_addresses().map(|a| a.to_string()), [A1P1, A1P2, A2P1, A2P2]);
}
