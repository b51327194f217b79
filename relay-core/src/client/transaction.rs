//! The client side of a STUN transaction over UDP: when to send, when to
//! resend, when to give up (RFC 8489 §6.2.1).
//!
//! "A client SHOULD retransmit a STUN request message starting with an
//! interval of RTO ("Retransmission TimeOut"), doubling after each
//! retransmission." Rc requests are sent in all (default 7); after the
//! last, the client waits Rm × RTO (default 16) and then declares the
//! transaction failed. With RTO = 500 ms the requests leave at 0, 500,
//! 1500, 3500, 7500, 15500 and 31500 ms and the transaction fails at
//! 39.5 s.
//!
//! Over a reliable transport (TCP, TLS) a request is sent once and the
//! transaction fails after Ti, the same 39.5 s by default (RFC 8489
//! §6.2.2): [`Transaction::reliable`].

use std::time::{Duration, Instant};

use crate::wire::TransactionId;

/// The retransmission timers (RFC 8489 §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitPolicy {
    /// The initial retransmission timeout (RFC 8489: 500 ms by default).
    pub rto: Duration,
    /// Requests sent in all, the first included (Rc, default 7).
    pub rc: u32,
    /// The wait after the last request, in multiples of RTO (Rm, default 16).
    pub rm: u32,
}

impl Default for RetransmitPolicy {
    fn default() -> Self {
        RetransmitPolicy { rto: Duration::from_millis(500), rc: 7, rm: 16 }
    }
}

impl RetransmitPolicy {
    /// The interval after transmission number `k` (0-based): RTO × 2^k,
    /// or Rm × RTO after the last one.
    fn interval_after(&self, k: u32) -> Duration {
        if k + 1 >= self.rc.max(1) {
            self.rto.saturating_mul(self.rm)
        } else {
            self.rto.saturating_mul(1u32 << k.min(20))
        }
    }

    /// When each request leaves, from the start of the transaction.
    pub fn schedule(&self) -> Vec<Duration> {
        let mut at = Duration::ZERO;
        (0..self.rc.max(1))
            .map(|k| {
                let t = at;
                at = at.saturating_add(self.interval_after(k));
                t
            })
            .collect()
    }

    /// How long a transaction that gets no answer lasts.
    pub fn timeout(&self) -> Duration {
        (0..self.rc.max(1)).fold(Duration::ZERO, |t, k| t.saturating_add(self.interval_after(k)))
    }
}

/// One outstanding request: its id and its timers. It does not hold the
/// bytes; the owner re-encodes (or keeps) the request and sends it whenever
/// [`Transaction::poll_transmit`] says so.
#[derive(Clone, Debug)]
pub struct Transaction {
    tid: TransactionId,
    policy: RetransmitPolicy,
    /// Sent once, failed after Ti (a reliable transport).
    reliable: bool,
    started: Instant,
    sent: u32,
    last_sent: Option<Instant>,
    /// The next send, or the final deadline once every request is out.
    next: Instant,
}

impl Transaction {
    /// A transaction over UDP whose first request is due at `now`.
    pub fn new(tid: TransactionId, policy: RetransmitPolicy, now: Instant) -> Transaction {
        Transaction { tid, policy, reliable: false, started: now, sent: 0, last_sent: None, next: now }
    }

    /// A transaction over a reliable transport (TCP, TLS): one request,
    /// due at `now`, and no answer within Ti = [`RetransmitPolicy::timeout`]
    /// fails it (RFC 8489 §6.2.2).
    pub fn reliable(tid: TransactionId, policy: RetransmitPolicy, now: Instant) -> Transaction {
        Transaction { reliable: true, ..Transaction::new(tid, policy, now) }
    }

    /// Requests to send in all.
    fn limit(&self) -> u32 {
        if self.reliable { 1 } else { self.policy.rc.max(1) }
    }

    /// The transaction id.
    pub fn tid(&self) -> TransactionId {
        self.tid
    }

    /// True when the request is to be (re)sent now; counts the send.
    pub fn poll_transmit(&mut self, now: Instant) -> bool {
        if self.sent >= self.limit() || now < self.next {
            return false;
        }
        self.next = now + if self.reliable { self.policy.timeout() } else { self.policy.interval_after(self.sent) };
        self.sent += 1;
        self.last_sent = Some(now);
        true
    }

    /// When to wake up next: the next send, or the final deadline.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// True once every request is out and Rm × RTO has passed since the
    /// last without an answer (reliable: Ti since the one request).
    pub fn is_timed_out(&self, now: Instant) -> bool {
        self.sent >= self.limit() && now >= self.next
    }

    /// Requests sent so far.
    pub fn transmissions(&self) -> u32 {
        self.sent
    }

    /// When the first request left.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The round-trip time of an answer received at `now`, measured from
    /// the latest transmission (an answer to an earlier copy makes this an
    /// underestimate, which is why [`Transaction::transmissions`] goes with
    /// it in reports).
    pub fn rtt(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_sent.unwrap_or(self.started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8489_schedule() {
        let p = RetransmitPolicy::default();
        let ms: Vec<u128> = p.schedule().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(p.timeout(), Duration::from_millis(39_500));
    }

    #[test]
    fn transaction_follows_the_schedule() {
        let t0 = Instant::now();
        let p = RetransmitPolicy { rto: Duration::from_millis(100), rc: 3, rm: 4 };
        let mut t = Transaction::new(TransactionId([1; 12]), p, t0);
        assert!(t.poll_transmit(t0));
        assert!(!t.poll_transmit(t0));
        assert_eq!(t.poll_timeout(), t0 + Duration::from_millis(100));
        assert!(t.poll_transmit(t0 + Duration::from_millis(100)));
        assert_eq!(t.poll_timeout(), t0 + Duration::from_millis(300));
        assert!(!t.is_timed_out(t0 + Duration::from_millis(299)));
        assert!(t.poll_transmit(t0 + Duration::from_millis(300)));
        assert_eq!(t.transmissions(), 3);
        assert_eq!(t.poll_timeout(), t0 + Duration::from_millis(700));
        assert!(!t.poll_transmit(t0 + Duration::from_millis(800)), "Rc requests at most");
        assert!(!t.is_timed_out(t0 + Duration::from_millis(699)));
        assert!(t.is_timed_out(t0 + Duration::from_millis(700)));
        assert_eq!(p.timeout(), Duration::from_millis(700));
    }

    #[test]
    fn a_reliable_transaction_sends_once_and_waits_ti() {
        let t0 = Instant::now();
        let p = RetransmitPolicy::default();
        let mut t = Transaction::reliable(TransactionId([2; 12]), p, t0);
        assert!(t.poll_transmit(t0));
        assert_eq!(t.poll_timeout(), t0 + Duration::from_millis(39_500));
        assert!(!t.poll_transmit(t0 + Duration::from_secs(20)), "nothing is retransmitted");
        assert!(!t.is_timed_out(t0 + Duration::from_millis(39_499)));
        assert!(t.is_timed_out(t0 + Duration::from_millis(39_500)));
        assert_eq!(t.transmissions(), 1);
    }
}
