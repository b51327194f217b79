//! RFC 5780 over real loopback sockets on both backends: the relay listens
//! on 127.0.0.1 and 127.0.0.2, ports P and P+1, and a CHANGE-REQUEST's
//! answer must leave from the socket Table 1 names (checked by the source
//! address the client sees), a RESPONSE-PORT answer must reach the other
//! client socket. Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay_core::server::auth::Credentials;
use relay_core::server::{Rfc5780, Server, ServerParts};
use relay_core::wire::attr::ChangeRequest;
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use relay_io::{Backend, IoConfig, Relay, RelayPorts};
use test_kit::{Listeners, loopback_config, start_or_skip};

/// A port P with P and P+1 free on both loopback addresses (bounded tries).
fn port_pair() -> u16 {
    for _ in 0..50 {
        let p = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p == u16::MAX {
            continue;
        }
        let free = ["127.0.0.1", "127.0.0.2"]
            .iter()
            .all(|ip| UdpSocket::bind((*ip, p)).is_ok() && UdpSocket::bind((*ip, p + 1)).is_ok());
        if free {
            return p;
        }
    }
    panic!("no free port pair on loopback");
}

fn start(backend: Backend, pair: Rfc5780) -> Option<Relay> {
    let config = IoConfig {
        udp_listen: pair.listen_addresses().to_vec(),
        ..loopback_config(backend, 2, Listeners::Udp, RelayPorts::Ephemeral(2))
    };
    let make = |_k: usize| {
        let parts = ServerParts::new(Credentials::new("rfc5780.test"));
        let mut s = Server::new(parts, Instant::now(), 1_800_000_000, 11);
        s.set_rfc5780(pair.primary, pair.other).unwrap();
        s
    };
    start_or_skip(&config, make)
}

fn binding(tid: u8, attrs: &[Attribute<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let ty = MessageType::new(Class::Request, Method::BINDING);
    let mut b = MessageBuilder::new(&mut buf, ty, TransactionId([tid; 12])).unwrap();
    for a in attrs {
        b.add(a).unwrap();
    }
    b.add_fingerprint().unwrap();
    let n = b.finish();
    buf.truncate(n);
    buf
}

/// Sends `req` to `to` until an answer with its id arrives on `on`
/// (bounded: 10 tries of 200 ms).
fn ask(sock: &UdpSocket, on: &UdpSocket, to: SocketAddr, req: &[u8]) -> (SocketAddr, Vec<u8>) {
    on.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let tid = Message::parse(req).unwrap().transaction_id();
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        sock.send_to(req, to).unwrap();
        while let Ok((n, from)) = test_kit::recv_from(on, &mut buf) {
            if Message::parse(&buf[..n]).is_ok_and(|m| m.transaction_id() == tid) {
                return (from, buf[..n].to_vec());
            }
        }
    }
    panic!("no answer from {to}");
}

fn attr(bytes: &[u8], ty: AttributeType) -> Option<SocketAddr> {
    let m = Message::parse(bytes).unwrap();
    let tid = m.transaction_id();
    match m.get(ty)?.decode(&tid).ok()? {
        Attribute::ResponseOrigin(a) | Attribute::OtherAddress(a) | Attribute::XorMappedAddress(a) => Some(a),
        _ => None,
    }
}

#[test]
fn change_request_answers_leave_from_the_right_socket() {
    for backend in [Backend::IoUring, Backend::Portable] {
        let p = port_pair();
        let a = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
        let pair = Rfc5780::new(a("127.0.0.1", p), a("127.0.0.2", p + 1)).unwrap();
        let Some(relay) = start(backend, pair) else { continue };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = client.local_addr().unwrap();
        let cases = [
            (false, false, a("127.0.0.1", p)),
            (true, false, a("127.0.0.2", p)),
            (false, true, a("127.0.0.1", p + 1)),
            (true, true, a("127.0.0.2", p + 1)),
        ];
        for (i, (change_ip, change_port, source)) in cases.into_iter().enumerate() {
            let req = binding(i as u8 + 1, &[Attribute::ChangeRequest(ChangeRequest { change_ip, change_port })]);
            let (from, resp) = ask(&client, &client, pair.primary, &req);
            assert_eq!(from, source, "{backend:?}: change ip={change_ip} port={change_port}");
            assert_eq!(attr(&resp, AttributeType::RESPONSE_ORIGIN), Some(source));
            assert_eq!(attr(&resp, AttributeType::OTHER_ADDRESS), Some(pair.other));
            assert_eq!(attr(&resp, AttributeType::XOR_MAPPED_ADDRESS), Some(me));
        }
        // A request to the alternate address names the primary as OTHER-ADDRESS.
        let (from, resp) = ask(&client, &client, pair.other, &binding(9, &[]));
        assert_eq!(from, pair.other);
        assert_eq!(attr(&resp, AttributeType::OTHER_ADDRESS), Some(pair.primary));
        // RESPONSE-PORT: the answer goes to the other socket.
        let port = other.local_addr().unwrap().port();
        let (from, resp) = ask(&client, &other, pair.primary, &binding(10, &[Attribute::ResponsePort(port)]));
        assert_eq!(from, pair.primary);
        assert_eq!(attr(&resp, AttributeType::XOR_MAPPED_ADDRESS), Some(me));
        relay.stop().unwrap();
    }
}
