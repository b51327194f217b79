//! Shard-local counters: plain integers, bumped without atomics or locks.
//! The I/O layer reads them between batches and exports them (Prometheus).

use super::error::StunError;
use crate::wire::Method;

macro_rules! labelled {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant,)* }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// How many values there are.
            pub const COUNT: usize = $name::ALL.len();

            /// The label value used in metrics.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

labelled! {
    /// Request methods, as counted.
    MethodLabel {
        /// Binding.
        Binding = "binding",
        /// Allocate.
        Allocate = "allocate",
        /// Refresh.
        Refresh = "refresh",
        /// CreatePermission.
        CreatePermission = "create_permission",
        /// ChannelBind.
        ChannelBind = "channel_bind",
        /// Any other method.
        Other = "other",
    }
}

impl MethodLabel {
    /// The label for a method.
    pub fn of(m: Method) -> MethodLabel {
        match m {
            Method::BINDING => MethodLabel::Binding,
            Method::ALLOCATE => MethodLabel::Allocate,
            Method::REFRESH => MethodLabel::Refresh,
            Method::CREATE_PERMISSION => MethodLabel::CreatePermission,
            Method::CHANNEL_BIND => MethodLabel::ChannelBind,
            _ => MethodLabel::Other,
        }
    }
}

/// A request's outcome: a success or one of the errors the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A success response.
    Success,
    /// An error response.
    Error(StunError),
}

impl Outcome {
    /// How many outcomes there are.
    pub const COUNT: usize = 1 + StunError::COUNT;
    /// Every outcome, in order (success first).
    pub const ALL: &'static [Outcome] = &{
        let mut all = [Outcome::Success; Outcome::COUNT];
        let mut i = 0;
        while i < StunError::COUNT {
            all[i + 1] = Outcome::Error(StunError::ALL[i]);
            i += 1;
        }
        all
    };

    /// The label used in metrics: `success` or the error code.
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error(e) => e.label(),
        }
    }

    /// Its index in [`Outcome::ALL`] (and in the counters).
    #[inline]
    pub const fn index(self) -> usize {
        match self {
            Outcome::Success => 0,
            Outcome::Error(e) => 1 + e as usize,
        }
    }
}

labelled! {
    /// Why authentication did not pass.
    AuthFailure {
        /// No MESSAGE-INTEGRITY: the normal first leg, answered with a challenge.
        Challenge = "challenge",
        /// USERNAME, REALM or NONCE missing next to MESSAGE-INTEGRITY.
        MissingAttribute = "missing_attribute",
        /// The realm is not ours.
        WrongRealm = "wrong_realm",
        /// No key for this username (unknown user, expired REST credential).
        UnknownUser = "unknown_user",
        /// MESSAGE-INTEGRITY did not verify.
        BadIntegrity = "bad_integrity",
        /// The nonce expired or was not issued to this client.
        StaleNonce = "stale_nonce",
        /// A different username than the allocation's.
        WrongUsername = "wrong_username",
        /// PASSWORD-ALGORITHM(S) inconsistent with what was offered.
        BadAlgorithm = "bad_algorithm",
    }
}

labelled! {
    /// Why a packet was dropped without an answer.
    Drop {
        /// Not STUN, not ChannelData, or a malformed message.
        Malformed = "malformed",
        /// A FINGERPRINT that does not verify.
        BadFingerprint = "bad_fingerprint",
        /// Data for a 5-tuple without an allocation.
        NoAllocation = "no_allocation",
        /// ChannelData on an unbound (or expired) channel.
        NoChannel = "no_channel",
        /// Data to or from a peer without a permission.
        NoPermission = "no_permission",
        /// A peer the policy denies.
        DeniedPeer = "denied_peer",
        /// Over the allocation's bandwidth cap.
        Bandwidth = "bandwidth",
        /// A response or indication the server has no use for.
        Unexpected = "unexpected",
        /// The payload does not fit the outgoing framing.
        TooLarge = "too_large",
        /// An answer to an unauthenticated request over the source's budget
        /// (reflection/amplification defence).
        RateLimited = "rate_limited",
    }
}

labelled! {
    /// Why an Allocate was answered 300 (Try Alternate).
    RedirectReason {
        /// The node is draining.
        Draining = "draining",
        /// The node is above its configured load, or its relay ports are
        /// used up.
        Load = "load",
        /// The node holds `limits.max_allocations` (its allocation quota
        /// is reached).
        Quota = "quota",
    }
}

labelled! {
    /// Direction of relayed traffic.
    Direction {
        /// Client to peer.
        ToPeer = "to_peer",
        /// Peer to client.
        ToClient = "to_client",
    }
}

labelled! {
    /// The client's transport, as counted.
    TransportLabel {
        /// UDP.
        Udp = "udp",
        /// TCP.
        Tcp = "tcp",
        /// TLS.
        Tls = "tls",
    }
}

impl TransportLabel {
    /// The label of a transport.
    pub const fn of(t: super::Transport) -> TransportLabel {
        match t {
            super::Transport::Udp => TransportLabel::Udp,
            super::Transport::Tcp => TransportLabel::Tcp,
            super::Transport::Tls => TransportLabel::Tls,
        }
    }
}

/// The counters of one shard.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that timed out.
    pub allocations_expired: u64,
    /// Allocations deleted by Refresh with LIFETIME 0 or a closed connection.
    pub allocations_deleted: u64,
    /// Allocations alive now.
    pub allocations_active: u64,
    /// Permissions alive now (lazily updated on expiry).
    pub permissions_active: u64,
    /// Channels bound now (lazily updated on expiry).
    pub channels_active: u64,
    /// Requests by method and outcome.
    pub requests: [[u64; Outcome::COUNT]; MethodLabel::COUNT],
    /// Authentication failures by reason.
    pub auth_failures: [u64; AuthFailure::COUNT],
    /// Dropped packets by reason.
    pub drops: [u64; Drop::COUNT],
    /// Relayed packets by direction and client transport.
    pub relayed_packets: [[u64; TransportLabel::COUNT]; Direction::COUNT],
    /// Relayed payload bytes by direction and client transport.
    pub relayed_bytes: [[u64; TransportLabel::COUNT]; Direction::COUNT],
    /// Indications received (Send) from clients.
    pub send_indications: u64,
    /// Data indications sent to clients.
    pub data_indications: u64,
    /// Datagrams between two allocations of this shard handed over
    /// in-process (relay to relay, no kernel round trip); counted in
    /// `relayed_packets` too, in both directions.
    pub relayed_in_shard: u64,
    /// Datagrams to another shard's relay address, sent to its bound
    /// address (relay to relay through the kernel).
    pub relayed_to_own: u64,
    /// Allocates redirected to an alternate server, by reason.
    pub redirects: [u64; RedirectReason::COUNT],
}

impl Stats {
    /// Counts a request outcome.
    #[inline]
    pub fn request(&mut self, m: MethodLabel, o: Outcome) {
        self.requests[m as usize][o.index()] += 1;
    }

    /// Counts an authentication failure.
    #[inline]
    pub fn auth_failure(&mut self, r: AuthFailure) {
        self.auth_failures[r as usize] += 1;
    }

    /// Counts a drop.
    #[inline]
    pub fn drop(&mut self, r: Drop) {
        self.drops[r as usize] += 1;
    }

    /// Counts a relayed packet of `bytes` payload bytes.
    #[inline]
    pub fn relayed(&mut self, d: Direction, t: super::Transport, bytes: usize) {
        self.relayed_n(d, t, 1, bytes as u64);
    }

    /// Counts `packets` relayed packets of `bytes` payload bytes in all
    /// (what another path relayed, such as the kernel fast path).
    #[inline]
    pub fn relayed_n(&mut self, d: Direction, t: super::Transport, packets: u64, bytes: u64) {
        let t = TransportLabel::of(t) as usize;
        self.relayed_packets[d as usize][t] += packets;
        self.relayed_bytes[d as usize][t] += bytes;
    }

    /// Relayed packets in a direction, all transports.
    pub fn relayed_packets_of(&self, d: Direction) -> u64 {
        self.relayed_packets[d as usize].iter().sum()
    }

    /// Relayed payload bytes in a direction, all transports.
    pub fn relayed_bytes_of(&self, d: Direction) -> u64 {
        self.relayed_bytes[d as usize].iter().sum()
    }

    /// Requests counted for a method and outcome.
    pub fn requests_of(&self, m: MethodLabel, o: Outcome) -> u64 {
        self.requests[m as usize][o.index()]
    }

    /// Drops counted for a reason.
    pub fn drops_of(&self, r: Drop) -> u64 {
        self.drops[r as usize]
    }

    /// Allocates redirected for a reason.
    pub fn redirects_of(&self, r: RedirectReason) -> u64 {
        self.redirects[r as usize]
    }

    /// Auth failures counted for a reason.
    pub fn auth_failures_of(&self, r: AuthFailure) -> u64 {
        self.auth_failures[r as usize]
    }

    /// Adds another shard's counters (for a process-wide total).
    pub fn merge(&mut self, o: &Stats) {
        self.allocations_created += o.allocations_created;
        self.allocations_expired += o.allocations_expired;
        self.allocations_deleted += o.allocations_deleted;
        self.allocations_active += o.allocations_active;
        self.permissions_active += o.permissions_active;
        self.channels_active += o.channels_active;
        for (a, b) in self.requests.iter_mut().zip(&o.requests) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (x, y) in self.auth_failures.iter_mut().zip(&o.auth_failures) {
            *x += y;
        }
        for (x, y) in self.drops.iter_mut().zip(&o.drops) {
            *x += y;
        }
        for d in 0..Direction::COUNT {
            for t in 0..TransportLabel::COUNT {
                self.relayed_packets[d][t] += o.relayed_packets[d][t];
                self.relayed_bytes[d][t] += o.relayed_bytes[d][t];
            }
        }
        self.send_indications += o.send_indications;
        self.data_indications += o.data_indications;
        self.relayed_in_shard += o.relayed_in_shard;
        self.relayed_to_own += o.relayed_to_own;
        for (x, y) in self.redirects.iter_mut().zip(&o.redirects) {
            *x += y;
        }
    }
}
