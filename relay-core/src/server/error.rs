//! [`StunError`]: every error the server answers with, in one list — its
//! code, its reason phrase (RFC 8489 §14.8, RFC 8656 §19) and its metric
//! label — so that no code is written as a bare number and no list of
//! codes exists twice.

macro_rules! stun_errors {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $reason:literal;)*) => {
        /// An error response the server sends.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum StunError {
            $($(#[$doc])* $name,)*
        }

        impl StunError {
            /// Every error, in order.
            pub const ALL: &'static [StunError] = &[$(StunError::$name,)*];
            /// How many there are.
            pub const COUNT: usize = StunError::ALL.len();

            /// The error code.
            pub const fn code(self) -> u16 {
                match self { $(StunError::$name => $code,)* }
            }

            /// The reason phrase sent with it.
            pub const fn reason(self) -> &'static str {
                match self { $(StunError::$name => $reason,)* }
            }

            /// The label used in metrics (the code, as text).
            pub const fn label(self) -> &'static str {
                match self { $(StunError::$name => stringify!($code),)* }
            }

            /// The error of a code, if the server uses it.
            pub const fn from_code(code: u16) -> Option<StunError> {
                match code { $($code => Some(StunError::$name),)* _ => None }
            }
        }
    };
}

stun_errors! {
    /// 300: the client should use another server.
    TryAlternate = 300, "Try Alternate";
    /// 400: malformed, or a forbidden attribute combination.
    BadRequest = 400, "Bad Request";
    /// 401: credentials missing or wrong (a challenge).
    Unauthenticated = 401, "Unauthenticated";
    /// 403: the peer address is refused by policy.
    Forbidden = 403, "Forbidden";
    /// 420: a comprehension-required attribute the server does not know.
    UnknownAttribute = 420, "Unknown Attribute";
    /// 437: no allocation for this 5-tuple, or one already there.
    AllocationMismatch = 437, "Allocation Mismatch";
    /// 438: the nonce expired or is not ours.
    StaleNonce = 438, "Stale Nonce";
    /// 440: no relay address of the family asked for.
    AddressFamilyNotSupported = 440, "Address Family not Supported";
    /// 441: another username than the allocation's.
    WrongCredentials = 441, "Wrong Credentials";
    /// 442: a transport other than UDP was requested.
    UnsupportedTransport = 442, "Unsupported Transport Protocol";
    /// 443: the peer's family has no relay address in the allocation.
    PeerAddressFamilyMismatch = 443, "Peer Address Family Mismatch";
    /// 486: the user's allocation quota is reached.
    AllocationQuotaReached = 486, "Allocation Quota Reached";
    /// 500: an internal failure.
    ServerError = 500, "Server Error";
    /// 508: no relay address, permission or channel slot left, or draining.
    InsufficientCapacity = 508, "Insufficient Capacity";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_labels_and_lookups_agree() {
        for &e in StunError::ALL {
            assert_eq!(StunError::from_code(e.code()), Some(e));
            assert_eq!(e.label(), e.code().to_string());
            assert!(!e.reason().is_empty());
        }
        assert_eq!(StunError::from_code(599), None);
        assert_eq!(StunError::Forbidden.reason(), "Forbidden");
        assert_eq!(StunError::COUNT, 14);
    }
}
