//! The event loop every shard runs, written once: the backend
//! ([`crate::uring`] or [`crate::portable`]) is the part that differs.
//!
//! One turn: stop if the shard is finished (a stop, or a drain that is
//! done), sleep in the backend until something is ready or the server's
//! next timer is due, let the backend handle its sockets (receive, hand to
//! the server, send what [`crate::egress`] says), then the shard's own
//! business — control messages from other threads, the stream
//! connections, the server's timers, once-a-turn housekeeping, and the
//! server's events (per-socket settings).

use std::io;
use std::time::{Duration, Instant};

use crate::shard::{BackendKind, ShardState};

/// What a backend found ready besides its own sockets, for the loop to
/// handle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    /// The shard's wake-up eventfd: control messages wait.
    pub control: bool,
    /// The stream (TCP/TLS) epoll: listeners or connections are ready.
    pub streams: bool,
}

/// How a shard waits, receives and sends: what a backend provides to
/// [`run`].
pub trait Driver {
    /// Which backend this is (reported in stats).
    const KIND: BackendKind;

    /// Sleeps until a socket, the wake-up eventfd or the stream epoll is
    /// ready, or `timeout` has passed.
    fn wait(&mut self, st: &mut ShardState, timeout: Duration) -> io::Result<()>;

    /// Handles what [`Driver::wait`] found: receives datagrams, hands them
    /// to the server ([`ShardState::on_datagram`]) and sends the
    /// transmits, reaps finished sends; reports the eventfd and the stream
    /// epoll instead of handling them.
    fn dispatch(&mut self, st: &mut ShardState, now: Instant) -> Ready;

    /// The shard is about to exit: lets queued sends (the last responses)
    /// leave.
    fn finish(&mut self, _st: &mut ShardState) {}
}

/// Runs a shard on `driver` until it is stopped or has drained.
pub fn run<D: Driver>(st: &mut ShardState, driver: &mut D) -> io::Result<()> {
    loop {
        let now = Instant::now();
        if st.finished(now) {
            driver.finish(st);
            st.close_streams(now);
            return Ok(());
        }
        driver.wait(st, st.sleep_for(now))?;
        let now = Instant::now();
        let ready = driver.dispatch(st, now);
        if ready.streams {
            st.process_streams(now);
        }
        if st.server.next_timeout().is_some_and(|t| t <= now) {
            st.server.handle_timeout(now);
        }
        st.housekeeping(now);
        st.apply_events();
        // Control last: a stats report sees this turn's events applied
        // (a fast path entry installed by a ChannelBind just answered).
        if ready.control {
            st.wake.drain();
            st.handle_control(D::KIND);
        }
    }
}
