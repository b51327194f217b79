// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * The kernel fast path: UDP ChannelData relayed at XDP.
 *
 * client -> listener, ChannelData with a known (client, listener, channel):
 *     the 4-byte header is stripped and the datagram leaves from the
 *     allocation's relay address to the peer.
 * peer -> relay address, with a channel bound for that peer:
 *     a ChannelData header is put in front and the datagram leaves from the
 *     listener to the client.
 *
 * The shards install an entry only for a channel whose permission is live
 * and whose peer passed the relay's policy, and remove it when any of them
 * ends; everything else (STUN, Send and Data indications, unknown channels,
 * fragments, options, zero checksums, packets that would exceed the MTU)
 * is passed to the stack untouched and handled by the shards as before.
 *
 * The UDP checksum is updated incrementally (RFC 1624): the payload moves
 * by 4 bytes, an even offset, so its one's-complement sum is unchanged and
 * only the pseudo-header, the UDP header and the ChannelData header words
 * change. The next hop and the egress device come from bpf_fib_lookup.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastpath.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Set by the loader for user-space tests of the rewriting
 * (BPF_PROG_TEST_RUN has no neighbours): skip bpf_fib_lookup, swap the
 * MAC addresses and bounce the packet (XDP_TX). */
const volatile __u32 fp_no_fib = 0;

/* relay.max_datagram: larger datagrams go to the stack, where the shard
 * drops them (as it drops them from its sockets). */
const volatile __u32 fp_max_datagram = 65535;

/* The devices the program is attached to (ifindex -> 1): the only ones a
 * rewritten frame may be redirected to (a device without an XDP program
 * of its own may be unable to send XDP frames, and would drop it). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} fp_devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_chan_key);
	__type(value, struct fp_chan_val);
	__uint(max_entries, 1 << 20);
} fp_channels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_peer_key);
	__type(value, struct fp_peer_val);
	__uint(max_entries, 1 << 20);
} fp_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fp_slot_stats);
	__uint(max_entries, 1 << 16);
} fp_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, FP_COUNTERS);
} fp_counters SEC(".maps");

#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define UDP_LEN 8
#define CD_LEN 4
#define IP_DF 0x4000
#define IP_MF_OFFSET 0x3fff
#define LOOPBACK_IFINDEX 1

static __always_inline void count(__u32 what)
{
	__u64 *c = bpf_map_lookup_elem(&fp_counters, &what);
	if (c)
		*c += 1;
}

/* The program runs at XDP (tc = 0) or at TC ingress (tc = 1): every
 * function below is inlined with `tc` a constant, so each program keeps
 * only its own helpers and context fields. */

/* Leave the packet to the stack (already counted). */
static __always_inline int to_stack(const int tc)
{
	/* TC: TC_ACT_UNSPEC lets the next program of the chain (TCX) decide. */
	return tc ? TC_ACT_UNSPEC : XDP_PASS;
}

/* Leave the packet to the stack, counting why. */
static __always_inline int pass(const int tc, __u32 why)
{
	count(why);
	return to_stack(tc);
}

static __always_inline void *pkt_data(void *ctx, const int tc)
{
	return tc ? (void *)(long)((struct __sk_buff *)ctx)->data : (void *)(long)((struct xdp_md *)ctx)->data;
}

static __always_inline void *pkt_end(void *ctx, const int tc)
{
	return tc ? (void *)(long)((struct __sk_buff *)ctx)->data_end : (void *)(long)((struct xdp_md *)ctx)->data_end;
}

static __always_inline __u32 ingress_of(void *ctx, const int tc)
{
	return tc ? ((struct __sk_buff *)ctx)->ingress_ifindex : ((struct xdp_md *)ctx)->ingress_ifindex;
}

static __always_inline int is_v4(const struct fp_addr *a)
{
	const __u32 *w = (const __u32 *)a->ip;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* One's-complement sum of an address as the pseudo-header has it. */
static __always_inline __u64 addr_sum(const struct fp_addr *a, int v4)
{
	const __u16 *w = (const __u16 *)a->ip;
	__u64 s = (__u64)w[6] + w[7];
	if (!v4)
		s += (__u64)w[0] + w[1] + w[2] + w[3] + w[4] + w[5];
	return s;
}

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* The sum of the words that change: pseudo-header and UDP header (minus
 * the checksum field). udp_len is in network order. */
static __always_inline __u64 header_sum(const struct fp_addr *src, const struct fp_addr *dst, __be16 udp_len)
{
	int v4 = is_v4(src);
	return addr_sum(src, v4) + addr_sum(dst, v4) + bpf_htons(IPPROTO_UDP) + 2 * (__u64)udp_len + src->port +
	       dst->port;
}

/* RFC 1624: HC' = ~(~HC + ~m + m'). `removed` and `added` are sums of
 * 16-bit words; the removed sum is folded and complemented once. */
static __always_inline __u16 csum_update(__u16 old, __u64 removed, __u64 added)
{
	__u64 s = (__u16)~old;
	s += (__u16)~fold(removed);
	s += added;
	__u16 c = ~fold(s);
	return c ? c : 0xffff;
}

/* The folded sum of an IPv4 header: 0xffff when its checksum is right. */
static __always_inline __u16 ip4_sum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < IP4_LEN / 2; i++)
		s += w[i];
	return fold(s);
}

static __always_inline void ip4_csum(struct iphdr *ip)
{
	ip->check = 0;
	ip->check = ~ip4_sum(ip);
}

struct parsed {
	struct fp_addr src;
	struct fp_addr dst;
	__u32 l4;       /* offset of the UDP header */
	__u32 payload;  /* UDP payload length */
	__u16 csum;     /* UDP checksum as received */
	__u8 v4;
	__u8 tos;
	__u8 partial;   /* the field holds only the pseudo-header sum (lo) */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

static __always_inline void set_v4(struct fp_addr *a, __be32 ip, __be16 port)
{
	__u32 *w = (__u32 *)a->ip;
	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = ip;
	a->port = port;
	a->pad = 0;
}

static __always_inline void set_v6(struct fp_addr *a, const struct in6_addr *ip, __be16 port)
{
	__builtin_memcpy(a->ip, ip, 16);
	a->port = port;
	a->pad = 0;
}

/* Parses Ethernet, IPv4/IPv6 and UDP; returns -1 when done (counted). */
/* `wire_len`: the whole packet's length (at TC the payload may lie in
 * fragments beyond `end`: only the headers must be linear). */
static __always_inline int parse(void *data, void *end, __u32 wire_len, struct parsed *p, int allow_partial)
{
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u32 avail;

	if ((void *)(eth + 1) > end)
		return count(FP_PASS_NOT_UDP), -1;
	__builtin_memcpy(p->smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(p->dmac, eth->h_dest, ETH_ALEN);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_LEN;
		if ((void *)(ip + 1) > end)
			return count(FP_PASS_MALFORMED), -1;
		if (ip->protocol != IPPROTO_UDP)
			return count(FP_PASS_NOT_UDP), -1;
		if (ip->ihl != 5 || ip->version != 4)
			return count(FP_PASS_IP_OPTIONS), -1;
		if (ip->frag_off & bpf_htons(IP_MF_OFFSET))
			return count(FP_PASS_FRAGMENT), -1;
		if (ip4_sum(ip) != 0xffff)
			return count(FP_PASS_MALFORMED), -1;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return count(FP_PASS_MALFORMED), -1;
		avail = wire_len - ((void *)udp - data);
		if (bpf_ntohs(ip->tot_len) != IP4_LEN + bpf_ntohs(udp->len))
			return count(FP_PASS_MALFORMED), -1;
		set_v4(&p->src, ip->saddr, udp->source);
		set_v4(&p->dst, ip->daddr, udp->dest);
		p->v4 = 1;
		p->tos = ip->tos;
		p->l4 = ETH_LEN + IP4_LEN;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_LEN;
		if ((void *)(ip6 + 1) > end)
			return count(FP_PASS_MALFORMED), -1;
		if (ip6->nexthdr != IPPROTO_UDP) {
			/* UDP behind extension headers, a fragment, or not UDP. */
			if (ip6->nexthdr == IPPROTO_FRAGMENT)
				return count(FP_PASS_FRAGMENT), -1;
			if (ip6->nexthdr == IPPROTO_HOPOPTS || ip6->nexthdr == IPPROTO_ROUTING ||
			    ip6->nexthdr == IPPROTO_DSTOPTS)
				return count(FP_PASS_IP_OPTIONS), -1;
			return count(FP_PASS_NOT_UDP), -1;
		}
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > end)
			return count(FP_PASS_MALFORMED), -1;
		avail = wire_len - ((void *)udp - data);
		if (ip6->payload_len != udp->len)
			return count(FP_PASS_MALFORMED), -1;
		set_v6(&p->src, &ip6->saddr, udp->source);
		set_v6(&p->dst, &ip6->daddr, udp->dest);
		p->v4 = 0;
		p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		p->l4 = ETH_LEN + IP6_LEN;
	} else {
		return count(FP_PASS_NOT_UDP), -1;
	}
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen < UDP_LEN || ulen > avail)
		return count(FP_PASS_MALFORMED), -1;
	p->payload = ulen - UDP_LEN;
	p->csum = udp->check;
	if (p->csum == 0 && !p->v4)
		return count(FP_PASS_ZERO_CSUM), -1;
	/* A datagram from a sender on this host (a veth peer, a container)
	 * may carry only the pseudo-header sum, for checksum offload to
	 * complete (CHECKSUM_PARTIAL): its full checksum cannot be derived
	 * from it, and only the local stack trusts it. Such a field equals
	 * the folded pseudo-header sum; a real checksum does so once in
	 * 65,536 datagrams, which then merely take the stack. */
	__u64 pseudo = addr_sum(&p->src, p->v4) + addr_sum(&p->dst, p->v4) + bpf_htons(IPPROTO_UDP) + udp->len;
	p->partial = p->csum == fold(pseudo);
	if (p->partial && !allow_partial)
		return count(FP_PASS_PARTIAL_CSUM), -1;
	return 0;
}

/* The folded pseudo-header sum: what a partial checksum field holds. */
static __always_inline __u16 pseudo_fold(const struct fp_addr *src, const struct fp_addr *dst, __be16 udp_len)
{
	int v4 = is_v4(src);
	return fold(addr_sum(src, v4) + addr_sum(dst, v4) + bpf_htons(IPPROTO_UDP) + udp_len);
}

/* The new UDP checksum field: a partial one stays partial (for the new
 * pseudo-header: on lo, where only the local stack receives it), a full
 * one is updated (RFC 1624), none stays none. */
static __always_inline __u16 new_csum(const struct parsed *p, __u64 removed, __u64 added, const struct fp_addr *src,
				      const struct fp_addr *dst, __be16 udp_len)
{
	if (p->partial)
		return pseudo_fold(src, dst, udp_len);
	if (p->csum)
		return csum_update(p->csum, removed, added);
	return 0;
}

/* Where the rewritten datagram goes. */
struct route {
	__u32 ifindex;
	__u32 local; /* TC on lo: a local destination */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

/* bpf_fib_lookup for a datagram of `ip_len` bytes from src to dst; -1 when
 * it must go to the stack (counted). */
static __always_inline int lookup_route(void *ctx, const int tc, const struct parsed *p, const struct fp_addr *src,
					const struct fp_addr *dst, __u32 ip_len, struct route *r)
{
	__u32 ingress = ingress_of(ctx, tc);
	if (fp_no_fib) {
		r->local = 0;
		r->ifindex = ingress;
		__builtin_memcpy(r->smac, p->dmac, ETH_ALEN);
		__builtin_memcpy(r->dmac, p->smac, ETH_ALEN);
		return 0;
	}
	r->local = 0;
	struct bpf_fib_lookup fib = {};
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = src->port;
	fib.dport = dst->port;
	fib.tot_len = ip_len;
	fib.ifindex = ingress;
	if (is_v4(dst)) {
		fib.family = 2; /* AF_INET */
		fib.tos = p->tos;
		fib.ipv4_src = ((const __u32 *)src->ip)[3];
		fib.ipv4_dst = ((const __u32 *)dst->ip)[3];
	} else {
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_src, src->ip, 16);
		__builtin_memcpy(fib.ipv6_dst, dst->ip, 16);
	}
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return count(FP_PASS_MTU), -1;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return count(FP_PASS_NO_NEIGH), -1;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return count(FP_PASS_FWD_DISABLED), -1;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		/* A local destination: at TC on lo, out of lo, whence it comes
		 * back in for the local stack (on the route of the address it
		 * was sent to: the relay's own, local like every destination of
		 * lo's); elsewhere the stack's. */
		if (tc && ingress == LOOPBACK_IFINDEX) {
			r->ifindex = ingress;
			r->local = 1;
			__builtin_memcpy(r->smac, p->smac, ETH_ALEN);
			__builtin_memcpy(r->dmac, p->dmac, ETH_ALEN);
			return 0;
		}
		return count(FP_PASS_LOCAL), -1;
	default:
		return count(FP_PASS_NO_ROUTE), -1;
	}
	/* A partial checksum is completed by whoever transmits it, at the
	 * offset it was made for: only the local stack may have it. */
	if (p->partial)
		return count(FP_PASS_PARTIAL_CSUM), -1;
	/* XDP can send only by a device with a program (TC by any). */
	if (!tc && fib.ifindex != ingress && !bpf_map_lookup_elem(&fp_devices, &fib.ifindex))
		return count(FP_PASS_EGRESS), -1;
	r->ifindex = fib.ifindex;
	__builtin_memcpy(r->smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(r->dmac, fib.dmac, ETH_ALEN);
	return 0;
}

/* Writes Ethernet, IP and UDP headers for `payload` bytes of UDP payload at
 * the (already moved) start of the packet; -1 if the packet is too short
 * (cannot happen after a successful adjust; the verifier wants the check). */
static __always_inline int write_headers(void *ctx, const int tc, const struct route *r, const struct parsed *p,
					 const struct fp_addr *src, const struct fp_addr *dst, __u32 payload,
					 __u16 csum)
{
	void *data = pkt_data(ctx, tc);
	void *end = pkt_end(ctx, tc);
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u16 ulen = UDP_LEN + payload;

	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, r->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, r->smac, ETH_ALEN);
	if (is_v4(dst)) {
		struct iphdr *ip = data + ETH_LEN;
		if ((void *)(ip + 1) > end)
			return -1;
		eth->h_proto = bpf_htons(ETH_P_IP);
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = p->tos;
		ip->tot_len = bpf_htons(IP4_LEN + ulen);
		ip->id = 0;
		ip->frag_off = bpf_htons(IP_DF);
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->saddr = ((const __u32 *)src->ip)[3];
		ip->daddr = ((const __u32 *)dst->ip)[3];
		ip4_csum(ip);
		udp = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = data + ETH_LEN;
		if ((void *)(ip6 + 1) > end)
			return -1;
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		ip6->version = 6;
		ip6->priority = p->tos >> 4;
		ip6->flow_lbl[0] = (p->tos & 0xf) << 4;
		ip6->flow_lbl[1] = 0;
		ip6->flow_lbl[2] = 0;
		ip6->payload_len = bpf_htons(ulen);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, src->ip, 16);
		__builtin_memcpy(&ip6->daddr, dst->ip, 16);
		udp = (void *)(ip6 + 1);
	}
	if ((void *)(udp + 1) > end)
		return -1;
	udp->source = src->port;
	udp->dest = dst->port;
	udp->len = bpf_htons(ulen);
	udp->check = csum;
	return 0;
}

static __always_inline int send(void *ctx, const int tc, const struct route *r)
{
	if (!tc && r->ifindex == ingress_of(ctx, tc))
		return XDP_TX;
	return bpf_redirect(r->ifindex, 0);
}

/* Moves the packet's start so that `old_hdr` bytes of headers become
 * `new_hdr` (what follows stays in place); the IP family goes from
 * `old_v4` to `new_v4`. XDP moves the start of the frame; TC changes the
 * protocol (which makes room for the other IP header) and adds or removes
 * the rest after the Ethernet header. Non-zero when there is no room. */
static __always_inline int resize(void *ctx, const int tc, int old_hdr, int new_hdr, int old_v4, int new_v4)
{
	if (!tc)
		return bpf_xdp_adjust_head(ctx, old_hdr - new_hdr);
	int diff = new_hdr - old_hdr;
	int changed = 0;
	if (old_v4 != new_v4) {
		if (bpf_skb_change_proto(ctx, new_v4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6), 0))
			return -1;
		changed = 1;
		diff -= new_v4 ? IP4_LEN - IP6_LEN : IP6_LEN - IP4_LEN;
	}
	if (diff && bpf_skb_adjust_room(ctx, diff, BPF_ADJ_ROOM_MAC, 0))
		return changed ? -2 : -1;
	return 0;
}

static __always_inline int aborted(const int tc)
{
	return tc ? TC_ACT_SHOT : XDP_ABORTED;
}

/* After a failed resize: untouched goes to the stack, half-done is dropped. */
static __always_inline int resize_failed(const int tc, int rc)
{
	if (rc == -2)
		return aborted(tc);
	return pass(tc, FP_PASS_ADJUST);
}


static __always_inline __u32 ip_len(const struct fp_addr *a)
{
	return is_v4(a) ? IP4_LEN : IP6_LEN;
}

static __always_inline void credit(__u32 slot, int to_peer, __u32 bytes)
{
	struct fp_slot_stats *s = bpf_map_lookup_elem(&fp_slots, &slot);
	if (!s)
		return;
	if (to_peer) {
		s->to_peer_packets += 1;
		s->to_peer_bytes += bytes;
	} else {
		s->to_client_packets += 1;
		s->to_client_bytes += bytes;
	}
}

/* Relay to relay: the peer is another allocation's relay address, with a
 * channel bound back to the sender's relay address: the datagram goes
 * straight to that allocation's client, as ChannelData on its channel
 * (same length: only the addresses and the channel number change). */
static __always_inline int relay_to_relay(void *ctx, const int tc, struct parsed *p, const struct fp_chan_val *v,
					  const struct fp_peer_val *b, __be16 chan, __u16 len)
{
	__u32 cd_len = CD_LEN + (__u32)len;
	if (!p->csum && !is_v4(&b->client))
		return pass(tc, FP_PASS_ZERO_CSUM);
	__be16 ulen = bpf_htons(UDP_LEN + cd_len);
	__u64 removed = header_sum(&p->src, &p->dst, ulen) + chan;
	__u64 added = header_sum(&b->listener, &b->client, ulen) + b->channel;
	__u16 csum = new_csum(p, removed, added, &b->listener, &b->client, ulen);
	__u32 new_ip = ip_len(&b->client);
	struct route r;
	if (lookup_route(ctx, tc, p, &b->listener, &b->client, new_ip + UDP_LEN + cd_len, &r))
		return to_stack(tc);
	/* The ChannelData header stays where it is; the headers before it change. */
	int rc = resize(ctx, tc, p->l4 + UDP_LEN, ETH_LEN + new_ip + UDP_LEN, p->v4, is_v4(&b->client));
	if (rc)
		return resize_failed(tc, rc);
	if (write_headers(ctx, tc, &r, p, &b->listener, &b->client, cd_len, csum))
		return aborted(tc);
	void *data = pkt_data(ctx, tc);
	void *end = pkt_end(ctx, tc);
	__be16 *cd = data + ETH_LEN + new_ip + UDP_LEN;
	if ((void *)(cd + 2) > end)
		return aborted(tc);
	cd[0] = b->channel;
	credit(v->slot, 1, len);
	credit(b->slot, 0, len);
	count(FP_RELAY_TO_RELAY);
	return send(ctx, tc, &r);
}

/* True when a channel's peer is another allocation's relay address with
 * a channel bound back (relay to relay: same length, no shrink). */
static __always_inline int relay_target(const struct fp_chan_val *v)
{
	if (!(v->flags & FP_PEER_IS_RELAY))
		return 0;
	struct fp_peer_key back = {};
	back.peer = v->relay;
	back.relay = v->peer;
	return bpf_map_lookup_elem(&fp_peers, &back) != 0;
}

/* client -> peer: strip the ChannelData header. */
static __always_inline int to_peer(void *ctx, const int tc, struct parsed *p, const struct fp_chan_val *v,
				   __be16 chan, __u16 len, struct fp_peer_key *back)
{
	__u32 data_len = len;
	if (!p->csum && !is_v4(&v->peer))
		return pass(tc, FP_PASS_ZERO_CSUM);
	/* Shrinking moves the UDP header past the partial checksum's start
	 * (csum_start, which no helper moves): the receiver would check it. */
	if (p->partial && !relay_target(v))
		return pass(tc, FP_PASS_PARTIAL_CSUM);
	__be16 ulen = bpf_htons(UDP_LEN + data_len);
	__u64 removed = header_sum(&p->src, &p->dst, bpf_htons(UDP_LEN + p->payload)) + chan + bpf_htons(len);
	__u64 added = header_sum(&v->relay, &v->peer, ulen);
	__u16 csum = new_csum(p, removed, added, &v->relay, &v->peer, ulen);
	__u32 new_ip = ip_len(&v->peer);
	struct route r;
	/* Only a peer that is a relay address of the server can have a
	 * channel bound back (the common case looks nothing up). */
	if (v->flags & FP_PEER_IS_RELAY) {
		back->peer = v->relay;
		back->relay = v->peer;
		struct fp_peer_val *b = bpf_map_lookup_elem(&fp_peers, back);
		if (b)
			return relay_to_relay(ctx, tc, p, v, b, chan, len);
	}
	if (lookup_route(ctx, tc, p, &v->relay, &v->peer, new_ip + UDP_LEN + data_len, &r))
		return to_stack(tc);
	/* Old headers end at l4 + 8 + 4; new ones at 14 + new_ip + 8. */
	int rc = resize(ctx, tc, p->l4 + UDP_LEN + CD_LEN, ETH_LEN + new_ip + UDP_LEN, p->v4, is_v4(&v->peer));
	if (rc)
		return resize_failed(tc, rc);
	if (write_headers(ctx, tc, &r, p, &v->relay, &v->peer, data_len, csum))
		return aborted(tc);
	credit(v->slot, 1, data_len);
	count(FP_TO_PEER);
	return send(ctx, tc, &r);
}

/* peer -> client: put a ChannelData header in front. */
static __always_inline int to_client(void *ctx, const int tc, struct parsed *p, const struct fp_peer_val *v)
{
	__u32 data_len = p->payload;
	__u32 cd_len = CD_LEN + data_len;
	__be16 len = bpf_htons(data_len);
	if (!p->csum && !is_v4(&v->client))
		return pass(tc, FP_PASS_ZERO_CSUM);
	__be16 ulen = bpf_htons(UDP_LEN + cd_len);
	__u64 removed = header_sum(&p->src, &p->dst, bpf_htons(UDP_LEN + data_len));
	__u64 added = header_sum(&v->listener, &v->client, ulen) + v->channel + len;
	__u16 csum = new_csum(p, removed, added, &v->listener, &v->client, ulen);
	__u32 new_ip = ip_len(&v->client);
	struct route r;
	if (lookup_route(ctx, tc, p, &v->listener, &v->client, new_ip + UDP_LEN + cd_len, &r))
		return to_stack(tc);
	int rc = resize(ctx, tc, p->l4 + UDP_LEN, ETH_LEN + new_ip + UDP_LEN + CD_LEN, p->v4, is_v4(&v->client));
	if (rc)
		return resize_failed(tc, rc);
	if (write_headers(ctx, tc, &r, p, &v->listener, &v->client, cd_len, csum))
		return aborted(tc);
	void *data = pkt_data(ctx, tc);
	void *end = pkt_end(ctx, tc);
	__be16 *cd = data + ETH_LEN + new_ip + UDP_LEN;
	if ((void *)(cd + 2) > end)
		return aborted(tc);
	cd[0] = v->channel;
	cd[1] = len;
	credit(v->slot, 0, data_len);
	count(FP_TO_CLIENT);
	return send(ctx, tc, &r);
}

static __always_inline int relay(void *ctx, const int tc)
{
	struct parsed p;
	/* One stack area for the lookup keys (the stack is 512 bytes). */
	union {
		struct fp_chan_key chan;
		struct fp_peer_key peer;
	} keys;
	if (tc) {
		/* TC runs after GRO, and a local sender's GSO super-packet may
		 * reach it whole (veth, lo): not one datagram. */
		if (((struct __sk_buff *)ctx)->gso_size)
			return pass(tc, FP_PASS_COALESCED);
		/* A VLAN tag would survive the redirect: the stack's business. */
		if (((struct __sk_buff *)ctx)->vlan_present)
			return pass(tc, FP_PASS_NOT_UDP);
		/* The headers (all that is read or rewritten) in the linear part. */
		__u32 need = ETH_LEN + IP6_LEN + UDP_LEN + CD_LEN;
		__u32 len = ((struct __sk_buff *)ctx)->len;
		if (pkt_end(ctx, tc) - pkt_data(ctx, tc) < need)
			bpf_skb_pull_data(ctx, len < need ? len : need);
	}
	/* On lo every datagram has a partial checksum, and only the local
	 * stack receives what leaves it: relayed there with the partial
	 * checksum of its new pseudo-header. */
	int on_lo = tc && ingress_of(ctx, tc) == LOOPBACK_IFINDEX;
	void *start = pkt_data(ctx, tc);
	void *stop = pkt_end(ctx, tc);
	__u32 wire_len = tc ? ((struct __sk_buff *)ctx)->len : (__u32)(stop - start);
	if (parse(start, stop, wire_len, &p, on_lo))
		return to_stack(tc);

	/* ChannelData from a client? Channel numbers 0x4000-0x4fff (RFC 8656 §12). */
	if (p.payload >= CD_LEN) {
		void *data = pkt_data(ctx, tc);
		void *end = pkt_end(ctx, tc);
		__be16 *cd = data + p.l4 + UDP_LEN;
		if ((void *)(cd + 2) > end)
			return pass(tc, FP_PASS_MALFORMED);
		__be16 chan = cd[0];
		__u16 len = bpf_ntohs(cd[1]);
		if ((bpf_ntohs(chan) & 0xf000) == 0x4000) {
			struct fp_chan_key *k = &keys.chan;
			k->client = p.src;
			k->listener = p.dst;
			k->channel = chan;
			k->pad = 0;
			struct fp_chan_val *v = bpf_map_lookup_elem(&fp_channels, k);
			if (v) {
				if (p.payload > fp_max_datagram)
					return pass(tc, FP_PASS_TOO_LARGE);
				if (CD_LEN + (__u32)len != p.payload)
					return pass(tc, CD_LEN + (__u32)len < p.payload ? FP_PASS_PADDED : FP_PASS_MALFORMED);
				return to_peer(ctx, tc, &p, v, chan, len, &keys.peer);
			}
		}
	}

	struct fp_peer_key *pk = &keys.peer;
	pk->peer = p.src;
	pk->relay = p.dst;
	struct fp_peer_val *pv = bpf_map_lookup_elem(&fp_peers, pk);
	if (!pv)
		return pass(tc, FP_PASS_NO_ENTRY);
	if (p.payload > fp_max_datagram)
		return pass(tc, FP_PASS_TOO_LARGE);
	if (p.payload > 0xffff - CD_LEN - UDP_LEN - IP6_LEN)
		return pass(tc, FP_PASS_MTU);
	return to_client(ctx, tc, &p, pv);
}

SEC("xdp")
int turn_fastpath(struct xdp_md *ctx)
{
	return relay(ctx, 0);
}

/* TC (clsact ingress): for devices without native XDP. */
SEC("classifier")
int turn_fastpath_tc(struct __sk_buff *skb)
{
	return relay(skb, 1);
}
