//! Runs a sans-IO client machine over real UDP sockets: one receiving
//! thread per socket feeds a channel, the calling thread sends what the
//! machine asks for and sleeps on the channel until the machine's next
//! deadline. Bounded by an overall time limit.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use relay_core::client::Probe;

/// How often a receiving thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

struct Datagram {
    socket: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
    at: Instant,
}

/// Drives `probe` over `sockets` (index = the machine's socket number)
/// until it is done or `limit` has passed.
pub fn drive(probe: &mut impl Probe, sockets: &[UdpSocket], limit: Duration) -> io::Result<()> {
    for s in sockets {
        s.set_read_timeout(Some(POLL))?;
    }
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Datagram>();
    std::thread::scope(|scope| {
        for (socket, s) in sockets.iter().enumerate() {
            let tx = tx.clone();
            let stop = &stop;
            scope.spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let d = Datagram { socket, from, bytes: buf[..n].to_vec(), at: Instant::now() };
                            if tx.send(d).is_err() {
                                return;
                            }
                        }
                        // Timeouts, and ICMP errors reported on the socket.
                        Err(_) => continue,
                    }
                }
            });
        }
        drop(tx);
        let result = run(probe, sockets, &rx, limit);
        stop.store(true, Ordering::Relaxed);
        result
    })
}

fn run(
    probe: &mut impl Probe,
    sockets: &[UdpSocket],
    rx: &mpsc::Receiver<Datagram>,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if probe.poll_timeout().is_some_and(|t| t <= now) {
            probe.handle_timeout(now);
        }
        while let Some(t) = probe.poll_transmit(now, &mut buf) {
            let s = sockets.get(t.socket).ok_or_else(|| io::Error::other("no such socket"))?;
            // A send that fails (no route) is a datagram lost: the
            // machine's timers decide what that means.
            let _ = s.send_to(&buf[..t.len], t.to);
        }
        if probe.is_done() {
            return Ok(());
        }
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("gave up after {limit:?}")));
        }
        let wake = probe.poll_timeout().unwrap_or(deadline).min(deadline);
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(d) => probe.handle_input(d.at, d.socket, d.from, &d.bytes),
            Err(mpsc::RecvTimeoutError::Timeout) => probe.handle_timeout(Instant::now()),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(io::Error::other("receivers ended")),
        }
    }
}
