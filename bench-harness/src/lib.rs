//! `turn-bench`: the load generator bundled with the relay (under
//! construction): a TURN client of its own first.

pub mod client;
pub mod net;

pub use client::{ClientConfig, ClientError, Credentials, TurnClient, TurnServer};
