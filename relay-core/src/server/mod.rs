//! Self-contained pieces of the TURN server's control path.
//!
//! - [`auth`]: long-term credentials (static users, coturn user files, REST
//!   API secrets) and stateless nonces;
//! - [`policy`]: which peer addresses clients may reach through the relay;
//! - [`quota`]: allocation quotas shared by all shards, and per-allocation
//!   bandwidth limits.

pub mod auth;
pub mod policy;
pub mod quota;
