/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The kernel fast path's maps, shared by the eBPF program (fastpath.bpf.c)
 * and relay-io (src/fastpath/maps.rs holds the #[repr(C)] twins; a test
 * checks the sizes agree).
 *
 * Every address is 16 bytes, IPv4 as ::ffff:a.b.c.d, so that one key type
 * serves both families and mixed-family allocations.
 */
#ifndef TURN_FASTPATH_H
#define TURN_FASTPATH_H

#include <linux/types.h>

/* An IP address and port, both in network byte order. */
struct fp_addr {
	__u8 ip[16];
	__be16 port;
	__u16 pad;
};

/* fp_channels: ChannelData from a client to a listener. */
struct fp_chan_key {
	struct fp_addr client;   /* the client's address (source) */
	struct fp_addr listener; /* the listener it sent to (destination) */
	__be16 channel;          /* the channel number, network order */
	__u16 pad;
};

struct fp_chan_val {
	struct fp_addr relay; /* the allocation's relay address (new source) */
	struct fp_addr peer;  /* the peer bound to the channel (new destination) */
	__u32 slot;           /* index into fp_slots */
	__u32 flags;          /* FP_PEER_IS_RELAY */
};

/* fp_chan_val.flags: the peer is one of the server's relay addresses, so a
 * channel bound back to this relay may exist (relay to relay). */
#define FP_PEER_IS_RELAY 1

/* fp_peers: UDP from a peer to a relay address. */
struct fp_peer_key {
	struct fp_addr peer;  /* source */
	struct fp_addr relay; /* destination */
};

struct fp_peer_val {
	struct fp_addr client;   /* new destination */
	struct fp_addr listener; /* new source */
	__be16 channel;          /* network order */
	__u16 pad;
	__u32 slot;
};

/* fp_slots (per CPU): what one channel binding relayed in the kernel.
 * Bytes are application payload bytes (the ChannelData data), as the
 * shards count them. */
struct fp_slot_stats {
	__u64 to_peer_packets;
	__u64 to_peer_bytes;
	__u64 to_client_packets;
	__u64 to_client_bytes;
};

/* fp_counters (per CPU, one __u64 each): what the program did with a
 * packet. The names the metrics use are in src/fastpath/maps.rs. */
enum fp_counter {
	FP_TO_PEER = 0,     /* ChannelData relayed to a peer */
	FP_TO_CLIENT,       /* a peer datagram relayed to a client */
	FP_RELAY_TO_RELAY,  /* ChannelData from one allocation's client to another's */
	FP_PASS_NOT_UDP,    /* not IPv4/IPv6 UDP */
	FP_PASS_FRAGMENT,   /* an IP fragment */
	FP_PASS_IP_OPTIONS, /* IPv4 options or IPv6 extension headers */
	FP_PASS_MALFORMED,  /* lengths that do not add up */
	FP_PASS_NO_ENTRY,   /* no channel or peer entry (STUN, Send/Data, unknown) */
	FP_PASS_PADDED,     /* ChannelData with padding or trailing bytes */
	FP_PASS_ZERO_CSUM,  /* no UDP checksum where one is required */
	FP_PASS_PARTIAL_CSUM, /* a local sender's checksum left to offload (only the pseudo-header sum) */
	FP_PASS_MTU,        /* the frame would exceed the egress MTU */
	FP_PASS_NO_ROUTE,   /* no route to the destination */
	FP_PASS_NO_NEIGH,   /* next hop not resolved yet (the stack resolves it) */
	FP_PASS_FWD_DISABLED, /* forwarding is off on the ingress device */
	FP_PASS_LOCAL,      /* the destination is this host */
	FP_PASS_ADJUST,     /* no room to move the headers */
	FP_PASS_EGRESS,     /* the egress device does not carry the program (it could not send the frame) */
	FP_PASS_TOO_LARGE,  /* a datagram above relay.max_datagram (the shard drops it) */
	FP_PASS_COALESCED,  /* TC: a GRO or GSO burst (several datagrams in one buffer) */
	FP_COUNTERS,
};

#endif
