/* SPDX-License-Identifier: MIT */
/*
 * packetparser: count every TCP and UDP packet on tc ingress and egress, in the kernel.
 *
 * Four sched_cls programs share one parser and differ only in the direction they count
 * (from the endpoint's point of view) and whether they feed the per-interface map:
 *
 *   program            hook                          direction  endpoint address  iface map
 *   pp_host_ingress    tc ingress, host interface    ingress    destination       yes
 *   pp_host_egress     tc egress,  host interface    egress     source            yes
 *   pp_ep_ingress      tc ingress, container veth    egress     source            no
 *   pp_ep_egress       tc egress,  container veth    ingress    destination       no
 *
 * pp_host_ingress_l3 and pp_host_egress_l3 are the host programs for links without a MAC
 * header (tun, WireGuard, ipip, gre: ARPHRD_NONE and friends, chosen by user space from the
 * link type), where the packet starts at the IP header and skb->len excludes any L2.
 *
 * (tc ingress on the host side of a container's veth sees what the container sent.)
 *
 * Every program returns TC_ACT_UNSPEC (-1; TCX_NEXT under tcx), so the next program or
 * filter on the hook still runs and no packet is ever changed or dropped here. Headers are
 * read with bpf_skb_load_bytes, which works on non-linear skbs and keeps the verifier out
 * of pointer arithmetic; a frame too short for a header it claims is not counted.
 *
 * Parsed: Ethernet, up to RETINAD_VLAN_MAX 802.1Q/802.1ad tags, IPv4 with options, IPv6
 * with up to RETINAD_IPV6_EXT_MAX extension headers (hop-by-hop, routing, fragment,
 * destination options, AH), then TCP or UDP. Non-first fragments of a TCP/UDP datagram
 * are counted (packets, bytes) without flags, since they carry no L4 header.
 *
 * Counts go to per-CPU hash maps (no atomics, no contention). A key that cannot be
 * inserted because the map is full adds to that map's overflow key (family
 * RETINAD_FAMILY_OVERFLOW, inserted by user space before any program is attached), so no
 * count vanishes. Options arrive as -D defines from retinad/plugins/packetparser.py.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "retinad.h"

#ifndef RETINAD_ADVANCED
#define RETINAD_ADVANCED 1 /* count per endpoint (advanced mode) */
#endif
#ifndef RETINAD_REMOTE_CONTEXT
#define RETINAD_REMOTE_CONTEXT 0 /* count per (endpoint, remote address) */
#endif
#ifndef RETINAD_ENDPOINT_ENTRIES
#define RETINAD_ENDPOINT_ENTRIES 16386
#endif
#ifndef RETINAD_REMOTE_ENTRIES
#define RETINAD_REMOTE_ENTRIES 65538
#endif
#ifndef RETINAD_IFACE_ENTRIES
#define RETINAD_IFACE_ENTRIES 4098
#endif

#define RETINAD_VLAN_MAX 2     /* 802.1ad outer + 802.1Q inner (QinQ) */
#define RETINAD_IPV6_EXT_MAX 6 /* extension headers walked before giving up */

#define PP_ETH_HLEN 14
#define PP_ETH_P_IP 0x0800
#define PP_ETH_P_IPV6 0x86DD
#define PP_ETH_P_8021Q 0x8100
#define PP_ETH_P_8021AD 0x88A8
#define PP_IPPROTO_HOPOPTS 0
#define PP_IPPROTO_TCP 6
#define PP_IPPROTO_UDP 17
#define PP_IPPROTO_ROUTING 43
#define PP_IPPROTO_FRAGMENT 44
#define PP_IPPROTO_AH 51
#define PP_IPPROTO_DSTOPTS 60
/* Parse results: 0 = counted, else RETINAD_UNPARSED_* + 1 (helpers return them negated). */
#define PP_NOT_IP (RETINAD_UNPARSED_NOT_IP + 1)
#define PP_TRUNC (RETINAD_UNPARSED_TRUNCATED + 1)
#define PP_BAD (RETINAD_UNPARSED_BAD_HEADER + 1)
#define PP_NOT_L4 (RETINAD_UNPARSED_NOT_TCP_UDP + 1)
#define PP_EXT (RETINAD_UNPARSED_EXT_CHAIN + 1)
#define PP_TCP_ACK_BIT (1 << RETINAD_TCP_ACK)
#define PP_TCP_ECE_BIT (1 << RETINAD_TCP_ECE)

BPF_TABLE("percpu_hash", struct iface_key, struct traffic_value, pp_iface, RETINAD_IFACE_ENTRIES);
BPF_PERCPU_ARRAY(pp_unparsed, __u64, RETINAD_UNPARSED_SLOTS);
#if RETINAD_ADVANCED
BPF_TABLE("percpu_hash", struct endpoint_key, struct traffic_value, pp_endpoint,
          RETINAD_ENDPOINT_ENTRIES);
#if RETINAD_REMOTE_CONTEXT
BPF_TABLE("percpu_hash", struct remote_key, struct traffic_value, pp_remote,
          RETINAD_REMOTE_ENTRIES);
#endif
#endif

/* What the parser found in one frame. */
struct pp_packet {
    __u8 src[16];
    __u8 dst[16];
    __u8 family;
    __u8 is_tcp;
    __u8 has_l4;    /* 0 for a non-first fragment */
    __u8 tcp_flags; /* header byte 13 */
    __u32 hdr_len;  /* L2 + L3 + L4 header bytes: replicated in each GSO segment */
    __u32 l4_off;   /* where the TCP/UDP header starts (latency) */
    __u32 l3_end;   /* where the IP packet ends, before any link padding (latency) */
    __u8 l4proto;   /* IPPROTO_* of the L4 header, 0 when not parsed (flow events) */
    __u8 pad[3];
    __be16 sport;   /* network order; 0 unless TCP/UDP with its header (flow events) */
    __be16 dport;
};

/* latency (bpf/latency.h): its maps and their accessors live here because bcc rewrites
 * map calls in the main source file only; the logic is in the header. Compiled out
 * (RETINAD_LATENCY 0: no maps, no per-packet work) when nothing can be a target: no
 * [[latency.targets]] and no resolver that knows the API servers. */
#ifndef RETINAD_LATENCY
#define RETINAD_LATENCY 1
#endif
#if RETINAD_LATENCY
#ifndef RETINAD_LAT_PENDING_ENTRIES
#define RETINAD_LAT_PENDING_ENTRIES 16384
#endif
BPF_LPM_TRIE(lat_targets, struct latency_target_key, __u32, RETINAD_LAT_MAX_PREFIXES);
BPF_TABLE("lru_hash", struct latency_conn_key, struct latency_pending, lat_pending,
          RETINAD_LAT_PENDING_ENTRIES);
BPF_TABLE("lru_hash", struct latency_conn_key, __u32, lat_expired, RETINAD_LAT_PENDING_ENTRIES);
BPF_PERCPU_ARRAY(lat_hist, struct latency_hist, RETINAD_LAT_SLOTS);
BPF_ARRAY(lat_config, __u32, 1); /* [0]: trie entries; 0 skips all latency work */
#include "latency.h"
static __always_inline __u32 *lat_targets_lookup(struct latency_target_key *k)
{
    return lat_targets.lookup(k);
}
static __always_inline struct latency_pending *lat_pending_lookup(struct latency_conn_key *k)
{
    return lat_pending.lookup(k);
}
static __always_inline int lat_pending_insert(struct latency_conn_key *k, struct latency_pending *v)
{
    return lat_pending.insert(k, v);
}
static __always_inline int lat_pending_update(struct latency_conn_key *k, struct latency_pending *v)
{
    return lat_pending.update(k, v);
}
static __always_inline int lat_pending_delete(struct latency_conn_key *k)
{
    return lat_pending.delete(k);
}
static __always_inline __u32 *lat_expired_lookup(struct latency_conn_key *k)
{
    return lat_expired.lookup(k);
}
static __always_inline struct latency_hist *lat_hist_lookup(int slot)
{
    return lat_hist.lookup(&slot);
}
static __always_inline __u32 lat_ntargets(void)
{
    int zero = 0;
    __u32 *n = lat_config.lookup(&zero);
    return n ? *n : 0;
}
#endif /* RETINAD_LATENCY */

/* flow events (bpf/flow_events.h): the event transport, the per-CPU event counters, the
 * high-aggregation connection table and their accessors (bcc rewrites map calls only in
 * this file, not in headers); the logic is in flow_events.h. Compiled out entirely unless
 * RETINAD_FLOW_EVENTS. */
#ifndef RETINAD_FLOW_EVENTS
#define RETINAD_FLOW_EVENTS 0
#endif
#if RETINAD_FLOW_EVENTS
#ifndef RETINAD_FE_TRANSPORT
#define RETINAD_FE_TRANSPORT RETINAD_FE_RINGBUF
#endif
#ifndef RETINAD_FE_RING_PAGES
#define RETINAD_FE_RING_PAGES 2048 /* 8 MiB */
#endif
#ifndef RETINAD_FE_CONN_ENTRIES
#define RETINAD_FE_CONN_ENTRIES 65536
#endif
#ifndef RETINAD_FE_HIGH
#define RETINAD_FE_HIGH 1
#endif
#ifndef RETINAD_FE_WAKEUP_EVERY
#define RETINAD_FE_WAKEUP_EVERY 4096 /* ringbuf: force a wakeup every Nth event per CPU */
#endif

BPF_PERCPU_ARRAY(fe_stats, __u64, RETINAD_FE_NSTATS);
#if RETINAD_FE_TRANSPORT == RETINAD_FE_RINGBUF
BPF_RINGBUF_OUTPUT(fe_ring, RETINAD_FE_RING_PAGES);
#else
BPF_PERF_OUTPUT(fe_perf);
#endif
#if RETINAD_FE_HIGH
BPF_TABLE("hash", struct flow_key, struct flow_state, fe_conn, RETINAD_FE_CONN_ENTRIES);
#endif

/* Add one to a per-CPU event counter; returns the new value. */
static __always_inline __u64 fe_stat(int slot)
{
    __u64 *n = fe_stats.lookup(&slot);
    if (!n)
        return 0;
    *n += 1;
    return *n;
}

/* Hand one event to user space; a full ring or perf buffer counts as lost, here. */
static __always_inline void fe_emit(struct __sk_buff *skb, const struct flow_event *ev, int *ok)
{
#if RETINAD_FE_TRANSPORT == RETINAD_FE_RINGBUF
    struct flow_event *slot = fe_ring.ringbuf_reserve(sizeof(*slot));
    if (!slot) {
        fe_stat(RETINAD_FE_STAT_LOST);
        *ok = 0;
        return;
    }
    __builtin_memcpy(slot, ev, sizeof(*slot));
    /* Batched wakeups: the reader drains on a timer; every Nth event per CPU wakes it
     * early so a burst cannot fill the ring between two drains. */
    __u64 n = fe_stat(RETINAD_FE_STAT_SUBMITTED);
    fe_ring.ringbuf_submit(slot, n % RETINAD_FE_WAKEUP_EVERY ? BPF_RB_NO_WAKEUP
                                                             : BPF_RB_FORCE_WAKEUP);
    *ok = 1;
#else
    /* perf: the wakeup threshold is the event's wakeup_events, set by the reader. */
    if (fe_perf.perf_submit(skb, (void *)ev, sizeof(*ev)) < 0) {
        fe_stat(RETINAD_FE_STAT_LOST);
        *ok = 0;
        return;
    }
    fe_stat(RETINAD_FE_STAT_SUBMITTED);
    *ok = 1;
#endif
}

#if RETINAD_FE_HIGH
static __always_inline struct flow_state *fe_conn_lookup(const struct flow_key *k)
{
    return fe_conn.lookup((struct flow_key *)k);
}

static __always_inline struct flow_state *fe_conn_add(const struct flow_key *k,
                                                     const struct flow_state *init)
{
    fe_conn.insert((struct flow_key *)k, (struct flow_state *)init); /* -EEXIST: fine */
    return fe_conn.lookup((struct flow_key *)k);
}
#endif

#include "flow_events.h"
#else
#define fe_observe(skb, pkt, direction, host, d) \
    do {                                         \
    } while (0)
#endif

/* What one frame adds to a traffic_value. */
struct pp_delta {
    __u64 packets;
    __u64 bytes;
    __u64 segs;
    __u8 tcp_flags; /* 0 unless TCP with its header */
};

static __always_inline int pp_parse_l2(struct __sk_buff *skb, __u32 *off, __u16 *proto)
{
    __be16 p;
    if (bpf_skb_load_bytes(skb, 12, &p, sizeof(p)) < 0)
        return -PP_TRUNC;
    *off = PP_ETH_HLEN;
#pragma unroll
    for (int i = 0; i < RETINAD_VLAN_MAX; i++) {
        if (p != bpf_htons(PP_ETH_P_8021Q) && p != bpf_htons(PP_ETH_P_8021AD))
            break;
        /* A tag is TPID(2, already read) TCI(2); the next type follows the TCI. */
        if (bpf_skb_load_bytes(skb, *off + 2, &p, sizeof(p)) < 0)
            return -PP_TRUNC;
        *off += 4;
    }
    *proto = bpf_ntohs(p);
    return 0;
}

static __always_inline int pp_parse_ipv4(struct __sk_buff *skb, __u32 *off, __u8 *l4proto,
                                         struct pp_packet *pkt)
{
    __u8 ip[20];
    if (bpf_skb_load_bytes(skb, *off, ip, sizeof(ip)) < 0)
        return -PP_TRUNC;
    __u32 ihl = ip[0] & 0x0f;
    if ((ip[0] >> 4) != 4 || ihl < 5)
        return -PP_BAD;
    __u32 l4off = *off + ihl * 4;
    if (skb->len < l4off) /* options claimed but not present */
        return -PP_TRUNC;
    __u16 frag = ((__u16)ip[6] << 8 | ip[7]) & 0x1fff;
    pkt->has_l4 = frag == 0;
    pkt->family = RETINAD_FAMILY_IPV4;
    pkt->src[10] = pkt->src[11] = 0xff;
    pkt->dst[10] = pkt->dst[11] = 0xff;
    __builtin_memcpy(&pkt->src[12], &ip[12], 4);
    __builtin_memcpy(&pkt->dst[12], &ip[16], 4);
    *l4proto = ip[9];
    *off = l4off;
    __u32 tot = (__u32)ip[2] << 8 | ip[3]; /* 0 for a GSO packet beyond 64 KiB */
    pkt->l3_end = tot ? l4off - ihl * 4 + tot : skb->len;
    return 0;
}

static __always_inline int pp_parse_ipv6(struct __sk_buff *skb, __u32 *off, __u8 *l4proto,
                                         struct pp_packet *pkt)
{
    __u8 ip6[40];
    if (bpf_skb_load_bytes(skb, *off, ip6, sizeof(ip6)) < 0)
        return -PP_TRUNC;
    if ((ip6[0] >> 4) != 6)
        return -PP_BAD;
    __builtin_memcpy(pkt->src, &ip6[8], 16);
    __builtin_memcpy(pkt->dst, &ip6[24], 16);
    pkt->family = RETINAD_FAMILY_IPV6;
    pkt->has_l4 = 1;
    __u8 next = ip6[6];
    __u32 o = *off + 40;
#pragma unroll
    for (int i = 0; i < RETINAD_IPV6_EXT_MAX; i++) {
        __u8 ext[4];
        if (next != PP_IPPROTO_HOPOPTS && next != PP_IPPROTO_ROUTING &&
            next != PP_IPPROTO_DSTOPTS && next != PP_IPPROTO_FRAGMENT && next != PP_IPPROTO_AH)
            break;
        if (bpf_skb_load_bytes(skb, o, ext, sizeof(ext)) < 0)
            return -PP_TRUNC;
        if (next == PP_IPPROTO_FRAGMENT) {
            /* next(1) reserved(1) offset:13|res:2|M:1 (2) id(4): fixed 8 bytes */
            if ((((__u16)ext[2] << 8 | ext[3]) & 0xfff8) != 0)
                pkt->has_l4 = 0;
            o += 8;
        } else if (next == PP_IPPROTO_AH) {
            o += ((__u32)ext[1] + 2) * 4; /* RFC 4302: length in 4-byte units minus 2 */
        } else {
            o += ((__u32)ext[1] + 1) * 8; /* RFC 8200: length in 8-byte units minus 1 */
        }
        next = ext[0];
    }
    if (skb->len < o) /* the chain claims more than the frame holds */
        return -PP_TRUNC;
    *l4proto = next;
    __u32 plen = (__u32)ip6[4] << 8 | ip6[5]; /* 0 for a jumbogram / BIG TCP */
    pkt->l3_end = plen ? *off + 40 + plen : skb->len;
    *off = o;
    return 0;
}

/* Fill pkt from the frame; 0 when it is TCP or UDP that should be counted, else the
 * PP_* reason + 1 (RETINAD_UNPARSED_*) it is not. On an L3 link
 * (tun, WireGuard, ipip: no MAC header) the packet starts at the network header and
 * skb->protocol says which. */
static __always_inline int pp_parse(struct __sk_buff *skb, struct pp_packet *pkt, int l3)
{
    __u32 off = 0;
    __u16 proto;
    __u8 l4proto = 0;
    int err;
    if (l3)
        proto = bpf_ntohs(skb->protocol);
    else if ((err = pp_parse_l2(skb, &off, &proto)) < 0)
        return -err;
    if (proto == PP_ETH_P_IP) {
        if ((err = pp_parse_ipv4(skb, &off, &l4proto, pkt)) < 0)
            return -err;
    } else if (proto == PP_ETH_P_IPV6) {
        if ((err = pp_parse_ipv6(skb, &off, &l4proto, pkt)) < 0)
            return -err;
    } else {
        return PP_NOT_IP;
    }
    if (l4proto != PP_IPPROTO_TCP && l4proto != PP_IPPROTO_UDP) {
        if (pkt->family == RETINAD_FAMILY_IPV6 &&
            (l4proto == PP_IPPROTO_HOPOPTS || l4proto == PP_IPPROTO_ROUTING ||
             l4proto == PP_IPPROTO_DSTOPTS || l4proto == PP_IPPROTO_FRAGMENT ||
             l4proto == PP_IPPROTO_AH))
            return PP_EXT; /* an IPv6 chain longer than RETINAD_IPV6_EXT_MAX */
        return PP_NOT_L4;
    }
    pkt->is_tcp = l4proto == PP_IPPROTO_TCP;
    pkt->l4_off = off;
    pkt->l4proto = l4proto;
    if (!pkt->has_l4) {
        pkt->hdr_len = off;
        return 0;
    }
    if (pkt->is_tcp) {
        __u8 th[2]; /* bytes 12-13: data offset, flags */
        if (skb->len < off + 20) /* the fixed header first, then what it claims */
            return PP_TRUNC;
        if (bpf_skb_load_bytes(skb, off + 12, th, sizeof(th)) < 0)
            return PP_TRUNC;
        __u32 doff = (th[0] >> 4) * 4;
        if (doff < 20)
            return PP_BAD;
        if (skb->len < off + doff)
            return PP_TRUNC;
        pkt->tcp_flags = th[1];
        pkt->hdr_len = off + doff;
    } else {
        if (skb->len < off + 8)
            return PP_TRUNC;
        pkt->hdr_len = off + 8;
    }
#if RETINAD_FLOW_EVENTS
    __be16 ports[2]; /* both L4 headers start with source and destination port */
    if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) == 0) {
        pkt->sport = ports[0];
        pkt->dport = ports[1];
    }
#endif
    return 0;
}

static __always_inline void pp_add(struct traffic_value *v, const struct pp_delta *d)
{
    v->packets += d->packets;
    v->bytes += d->bytes;
    if (!d->tcp_flags)
        return;
#pragma unroll
    for (int i = 0; i < RETINAD_TCP_NFLAGS; i++) {
        if (d->tcp_flags & (1 << i)) {
            /* A GSO/GRO packet stands for segs segments: every one carries ACK and ECE;
             * SYN/RST are never coalesced; FIN and PSH ride the last segment, CWR the
             * first (net/ipv4/tcp_offload.c tcp_gso_segment, tcp_gro_receive). */
            __u64 mask = PP_TCP_ACK_BIT | PP_TCP_ECE_BIT;
            v->tcp_flags[i] += ((1 << i) & mask) ? d->segs : 1;
        }
    }
}

/* Find the value for a key, inserting it; the map's overflow key when the map is full.
 * One function per map because bcc rewrites map.lookup() only outside macros. */
static __always_inline struct traffic_value *pp_iface_slot(struct iface_key *k, struct iface_key *overflow)
{
    struct traffic_value zero = {};
    struct traffic_value *v = pp_iface.lookup(k);
    if (v)
        return v;
    pp_iface.insert(k, &zero); /* -EEXIST from a racing CPU is fine */
    v = pp_iface.lookup(k);
    return v ? v : pp_iface.lookup(overflow);
}

#if RETINAD_ADVANCED
static __always_inline struct traffic_value *pp_endpoint_slot(struct endpoint_key *k, struct endpoint_key *overflow)
{
    struct traffic_value zero = {};
    struct traffic_value *v = pp_endpoint.lookup(k);
    if (v)
        return v;
    pp_endpoint.insert(k, &zero); /* -EEXIST from a racing CPU is fine */
    v = pp_endpoint.lookup(k);
    return v ? v : pp_endpoint.lookup(overflow);
}
#if RETINAD_REMOTE_CONTEXT
static __always_inline struct traffic_value *pp_remote_slot(struct remote_key *k, struct remote_key *overflow)
{
    struct traffic_value zero = {};
    struct traffic_value *v = pp_remote.lookup(k);
    if (v)
        return v;
    pp_remote.insert(k, &zero); /* -EEXIST from a racing CPU is fine */
    v = pp_remote.lookup(k);
    return v ? v : pp_remote.lookup(overflow);
}
#endif
#endif

static __always_inline void pp_count(struct __sk_buff *skb, __u8 direction, int host, int l3)
{
    struct pp_packet pkt = {};
    int why = pp_parse(skb, &pkt, l3);
    if (why) {
        int slot = RETINAD_UNPARSED_SLOT(why - 1, host, direction);
        __u64 *n = pp_unparsed.lookup(&slot);
        if (n)
            *n += 1;
        return;
    }

#if RETINAD_LATENCY
    if (pkt.is_tcp && pkt.has_l4)
        lat_observe(skb, &pkt, direction, host);
#endif

    struct pp_delta d = {};
    __u32 segs = skb->gso_segs;
    d.segs = segs > 1 ? segs : 1;
    d.packets = d.segs;
    /* skb->len includes the Ethernet header here; each extra segment repeats headers. */
    d.bytes = skb->len + (d.segs - 1) * pkt.hdr_len;
    if (pkt.is_tcp && pkt.has_l4)
        d.tcp_flags = pkt.tcp_flags;
    fe_observe(skb, &pkt, direction, host, &d);

    if (host) {
        struct iface_key ik = {};
        struct iface_key iov = {};
        ik.ifindex = skb->ifindex;
        ik.direction = direction;
        iov.direction = direction; /* ifindex 0: the overflow key */
        struct traffic_value *iv = pp_iface_slot(&ik, &iov);
        if (iv)
            pp_add(iv, &d);
    }

#if RETINAD_ADVANCED
    /* The endpoint is the receiver of what it receives, the sender of what it sends. */
    __u8 *local = direction == RETINAD_DIR_INGRESS ? pkt.dst : pkt.src;
    struct endpoint_key ek = {};
    struct endpoint_key eov = {};
    __builtin_memcpy(ek.addr, local, 16);
    ek.ifindex = skb->ifindex;
    ek.direction = direction;
    ek.family = pkt.family;
    eov.direction = direction;
    eov.family = RETINAD_FAMILY_OVERFLOW;
    struct traffic_value *ev = pp_endpoint_slot(&ek, &eov);
    if (ev)
        pp_add(ev, &d);
#if RETINAD_REMOTE_CONTEXT
    __u8 *remote = direction == RETINAD_DIR_INGRESS ? pkt.src : pkt.dst;
    struct remote_key rk = {};
    struct remote_key rov = {};
    __builtin_memcpy(rk.local, local, 16);
    __builtin_memcpy(rk.remote, remote, 16);
    rk.ifindex = skb->ifindex;
    rk.direction = direction;
    rk.family = pkt.family;
    rov.direction = direction;
    rov.family = RETINAD_FAMILY_OVERFLOW;
    struct traffic_value *rv = pp_remote_slot(&rk, &rov);
    if (rv)
        pp_add(rv, &d);
#endif
#endif
}

int pp_host_ingress(struct __sk_buff *skb)
{
    pp_count(skb, RETINAD_DIR_INGRESS, 1, 0);
    return TC_ACT_UNSPEC;
}

int pp_host_egress(struct __sk_buff *skb)
{
    pp_count(skb, RETINAD_DIR_EGRESS, 1, 0);
    return TC_ACT_UNSPEC;
}

/* The same on a host interface without MAC header (tun, WireGuard, ipip, gre). */
int pp_host_ingress_l3(struct __sk_buff *skb)
{
    pp_count(skb, RETINAD_DIR_INGRESS, 1, 1);
    return TC_ACT_UNSPEC;
}

int pp_host_egress_l3(struct __sk_buff *skb)
{
    pp_count(skb, RETINAD_DIR_EGRESS, 1, 1);
    return TC_ACT_UNSPEC;
}

/* tc ingress on a container veth's host side: what the container sends. */
int pp_ep_ingress(struct __sk_buff *skb)
{
    pp_count(skb, RETINAD_DIR_EGRESS, 0, 0);
    return TC_ACT_UNSPEC;
}

/* tc egress on a container veth's host side: what the container receives. */
int pp_ep_egress(struct __sk_buff *skb)
{
    pp_count(skb, RETINAD_DIR_INGRESS, 0, 0);
    return TC_ACT_UNSPEC;
}
