//! `relay-io`: the thread-per-core data plane of the TURN relay.
//!
//! Each shard is one thread, pinned to a core, owning a
//! [`relay_core::server::Server`], its own SO_REUSEPORT listeners and a slice
//! of the relay ports, and one event loop: io_uring where the kernel allows
//! it, epoll with recvmmsg/sendmmsg batching where it does not.

pub mod shard;
pub mod socket;
pub mod sys;
