//! Keeps a flow's allocation, permission and channel alive during a long
//! measuring run.
//!
//! Without it a run longer than the server's permission lifetime (RFC 8656:
//! 300 s) or the allocation's lifetime silently turns into 100 % loss. Each
//! flow's `Refresher` owns the flow's [`TurnSession`] for the run: the
//! measuring worker calls `Refresher::poll` when its deadline comes (a
//! Refresh before the allocation's lifetime is half over, the ChannelBind or
//! CreatePermission again every refresh interval) and hands it the STUN
//! messages that arrive on the flow's socket (`Refresher::handle`), so the
//! requests are retransmitted per RFC 8489 and stale nonces answered, and
//! none of it is counted as data. Requests are sent on the flow's own
//! socket (the same 5-tuple): one send per refresh, nothing per packet.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Handled, Poll, Request, TurnSession};

/// Shortest period between refreshes of one kind for one flow.
const MIN_PERIOD: Duration = Duration::from_millis(200);
/// Longest wait before retrying a failed refresh.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A deadline far enough not to matter (an hour).
const FAR: Duration = Duration::from_secs(3600);

/// Where a refresher's requests go: the flow's own socket or stream (the
/// same 5-tuple as its data).
pub(crate) trait Transmit {
    /// Sends (or queues) one STUN message; failures show up as timeouts.
    fn transmit(&mut self, msg: &[u8]);
}

impl Transmit for &UdpSocket {
    fn transmit(&mut self, msg: &[u8]) {
        let _ = self.send(msg);
    }
}

impl Transmit for crate::stream::StreamConn {
    fn transmit(&mut self, msg: &[u8]) {
        // Control messages are never shed; the flush comes with the data.
        self.queue(msg);
    }
}

/// Refresh counters of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefreshStats {
    /// Refresh transactions started (Refresh, ChannelBind, CreatePermission).
    pub started: u64,
    /// Those that succeeded.
    pub ok: u64,
    /// Those that failed (error response or no response).
    pub failed: u64,
    /// Requests retransmitted.
    pub retransmitted: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl RefreshStats {
    /// Adds `o` to these counters.
    pub fn add(&mut self, o: &RefreshStats) {
        self.started += o.started;
        self.ok += o.ok;
        self.failed += o.failed;
        self.retransmitted += o.retransmitted;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }

    fn fail(&mut self, e: &crate::client::ClientError) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allocation,
    Binding,
}

/// One flow's refresh state. See the module documentation.
#[derive(Debug)]
pub(crate) struct Refresher {
    core: TurnSession,
    /// The ChannelBind or CreatePermission that set the flow up.
    binding: Request,
    lifetime: u32,
    alloc_period: Duration,
    bind_period: Duration,
    next_alloc: Instant,
    next_bind: Instant,
    in_flight: Option<Kind>,
}

fn alloc_period(lifetime: u32, interval: Duration) -> Duration {
    (Duration::from_secs(u64::from(lifetime)) / 2).min(interval).max(MIN_PERIOD)
}

impl Refresher {
    /// A refresher for a flow whose allocation was granted `lifetime`
    /// seconds and whose `binding` was installed at `bound_at`; bindings are
    /// re-sent every `interval`, the allocation refreshed every `interval`
    /// or half its lifetime, whichever is shorter.
    pub fn new(core: TurnSession, binding: Request, lifetime: u32, interval: Duration, bound_at: Instant) -> Self {
        let alloc_period = alloc_period(lifetime, interval);
        let bind_period = interval.max(MIN_PERIOD);
        Refresher {
            core,
            binding,
            lifetime,
            alloc_period,
            bind_period,
            next_alloc: bound_at + alloc_period,
            next_bind: bound_at + bind_period,
            in_flight: None,
        }
    }

    /// Gives the client state back (for the release at the end).
    pub fn into_core(self) -> TurnSession {
        self.core
    }

    fn finish(&mut self, ok: bool, now: Instant) {
        let Some(kind) = self.in_flight.take() else { return };
        let period = match kind {
            Kind::Allocation => self.alloc_period,
            Kind::Binding => self.bind_period,
        };
        let next = if ok { now + period } else { now + (period / 4).clamp(MIN_PERIOD, MAX_RETRY) };
        match kind {
            Kind::Allocation => self.next_alloc = next,
            Kind::Binding => self.next_bind = next,
        }
    }

    /// Runs the timers: retransmits, gives up, starts the refreshes that
    /// are due (only when `start_new`). Returns when to be called next.
    pub fn poll(&mut self, out: &mut impl Transmit, now: Instant, start_new: bool, st: &mut RefreshStats) -> Instant {
        // Bounded: at most one retransmission, then a wait or an end.
        for _ in 0..4 {
            match self.core.poll(now) {
                Poll::Idle => {
                    self.in_flight = None;
                    break;
                }
                Poll::Wait(t) => return t,
                Poll::Transmit(bytes) => {
                    st.retransmitted += 1;
                    out.transmit(bytes);
                }
                Poll::Failed(e) => {
                    st.fail(&e);
                    self.finish(false, now);
                    break;
                }
            }
        }
        if !start_new {
            return now + FAR;
        }
        let (kind, request) = if now >= self.next_alloc {
            (Kind::Allocation, Request::Refresh { lifetime: self.lifetime })
        } else if now >= self.next_bind {
            (Kind::Binding, self.binding.clone())
        } else {
            return self.next_alloc.min(self.next_bind);
        };
        match self.core.start(request, now) {
            Ok(bytes) => {
                st.started += 1;
                out.transmit(bytes);
                self.in_flight = Some(kind);
                match self.core.poll(now) {
                    Poll::Wait(t) => t,
                    _ => now,
                }
            }
            Err(e) => {
                st.started += 1;
                st.fail(&e);
                self.in_flight = Some(kind);
                self.finish(false, now);
                self.next_alloc.min(self.next_bind)
            }
        }
    }

    /// Feeds a STUN message that arrived on the flow's socket. Returns
    /// whether it was the answer to this flow's refresh; `wake` is set when
    /// the refresher wants `Refresher::poll` called now (a transaction
    /// ended, and another may be due).
    pub fn handle(
        &mut self,
        out: &mut impl Transmit,
        msg: &[u8],
        now: Instant,
        st: &mut RefreshStats,
        wake: &mut bool,
    ) -> bool {
        match self.core.handle(msg, now) {
            // Only an Allocate is redirected, and a refresher sends none.
            Handled::Ignored | Handled::Discarded(_) | Handled::Redirect { .. } => false,
            Handled::Transmit(bytes) => {
                // A 438 (stale nonce) answered with the new nonce.
                out.transmit(bytes);
                true
            }
            Handled::Done(r) => {
                match r {
                    Ok(s) => {
                        st.ok += 1;
                        if self.in_flight == Some(Kind::Allocation)
                            && let Some(l) = s.lifetime.filter(|&l| l > 0)
                        {
                            self.lifetime = l;
                            self.alloc_period = alloc_period(l, self.bind_period);
                        }
                        self.finish(true, now);
                    }
                    Err(e) => {
                        st.fail(&e);
                        self.finish(false, now);
                    }
                }
                *wake = true;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_period_is_half_the_lifetime_at_most() {
        assert_eq!(alloc_period(600, Duration::from_secs(120)), Duration::from_secs(120));
        assert_eq!(alloc_period(60, Duration::from_secs(120)), Duration::from_secs(30));
        assert_eq!(alloc_period(0, Duration::from_secs(120)), MIN_PERIOD);
    }
}
