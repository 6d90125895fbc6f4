/* SPDX-License-Identifier: MIT */
/*
 * latency: handshake and request latency to configured targets, measured in the tc
 * programs of packetparser.c, which calls lat_observe() once per parsed TCP segment.
 *
 * No per-packet event leaves the kernel. A SYN to (or from) a target starts a pending
 * entry in the bounded LRU map lat_pending, keyed by the connection oriented client ->
 * server and the stage; the SYN-ACK ends it and adds the elapsed bpf_ktime_get_ns()
 * (CLOCK_MONOTONIC nanoseconds) to a bucket of the per-CPU histogram lat_hist, read by
 * user space at scrape time. The handshake leaves a CONN entry (the connection's
 * orientation); then the client's first payload segment while no request is outstanding
 * starts a REQUEST entry, and the server's first payload segment back ends it. So on a
 * keep-alive connection each exchange is measured; on a pipelined one only the first
 * request of each burst is (what follows it is answered while the entry is already gone).
 *
 * Exactly once: whoever deletes a pending entry (bpf_map_delete_elem returns 0) counts
 * it: the answer here, or user space sweeping entries older than the timeout
 * (retinad/plugins/latency.py), which then records the SYN/request sequence number in
 * lat_expired so a retransmission of an attempt already counted is not a new attempt. An
 * answer arriving after the timeout counts as no-response too.
 *
 * One connection is seen by several programs (a container's veth, then the host's
 * interface): entries are inserted only if absent, so the first hook starts the clock and
 * the first hook that sees the answer stops it. A packet leaving a host interface that
 * entered through another (forwarded, skb->ingress_ifindex != 0) was already seen where it
 * entered; it never starts an entry and only ends one silently (the NATed copy of a
 * connection the container's veth measures).
 */
#ifndef RETINAD_LATENCY_H
#define RETINAD_LATENCY_H

#ifndef RETINAD_LAT_TIMEOUT_NS
#define RETINAD_LAT_TIMEOUT_NS 5000000000ULL
#endif

#define LAT_TCP_FIN 0x01
#define LAT_TCP_SYN 0x02
#define LAT_TCP_RST 0x04
#define LAT_TCP_ACK 0x10

/* Map accessors, defined in packetparser.c with the maps (bcc rewrites map calls in the
 * main source file only). */
static __always_inline __u32 *lat_targets_lookup(struct latency_target_key *k);
static __always_inline struct latency_pending *lat_pending_lookup(struct latency_conn_key *k);
static __always_inline int lat_pending_insert(struct latency_conn_key *k, struct latency_pending *v);
static __always_inline int lat_pending_update(struct latency_conn_key *k, struct latency_pending *v);
static __always_inline int lat_pending_delete(struct latency_conn_key *k);
static __always_inline __u32 *lat_expired_lookup(struct latency_conn_key *k);
static __always_inline struct latency_hist *lat_hist_lookup(int slot);
static __always_inline __u32 lat_ntargets(void);

/* The target id of addr with this server port: an entry for the port first, then one for
 * any port (port 0). */
static __always_inline int lat_target(const __u8 *addr, __u16 port, __u32 *id)
{
    struct latency_target_key k = {};
    k.prefixlen = 16 + 128;
    k.port[0] = port >> 8;
    k.port[1] = port & 0xff;
    __builtin_memcpy(k.addr, addr, 16);
    __u32 *v = lat_targets_lookup(&k);
    if (!v) {
        k.port[0] = k.port[1] = 0;
        v = lat_targets_lookup(&k);
    }
    if (!v)
        return 0;
    *id = *v;
    return 1;
}

/* Index of the first bucket whose upper bound (RETINAD_LAT_EDGES_NS) is >= ns. The edges
 * are compared one by one: a constant array would live in .rodata, which bcc does not
 * load. */
static __always_inline __u32 lat_bucket(__u64 ns)
{
    __u32 b = 0;
#define LAT_STEP(edge) b += ns > (edge) ? 1 : 0;
    LAT_STEP(100000ULL) LAT_STEP(200000ULL) LAT_STEP(300000ULL) LAT_STEP(500000ULL)
    LAT_STEP(1000000ULL) LAT_STEP(2000000ULL) LAT_STEP(3000000ULL) LAT_STEP(5000000ULL)
    LAT_STEP(10000000ULL) LAT_STEP(20000000ULL) LAT_STEP(30000000ULL) LAT_STEP(50000000ULL)
    LAT_STEP(100000000ULL) LAT_STEP(200000000ULL) LAT_STEP(300000000ULL)
    LAT_STEP(500000000ULL) LAT_STEP(1000000000ULL) LAT_STEP(2000000000ULL)
    LAT_STEP(3000000000ULL) LAT_STEP(5000000000ULL) LAT_STEP(10000000000ULL)
#undef LAT_STEP
    return b;
}

static __always_inline void lat_record(__u32 target, __u32 stage, __u8 dir, __u64 ns)
{
    if (target >= RETINAD_LAT_MAX_TARGETS)
        return;
    int slot = RETINAD_LAT_SLOT(target, stage, dir);
    struct latency_hist *h = lat_hist_lookup(slot);
    if (!h)
        return;
    if (ns > RETINAD_LAT_TIMEOUT_NS) {
        h->no_response += 1;
        return;
    }
    __u32 b = lat_bucket(ns);
    if (b < RETINAD_LAT_NBUCKETS)
        h->buckets[b] += 1;
    h->sum_ns += ns;
}

/* End the pending entry under key; 1 with its content in *seen if this call removed it. */
static __always_inline int lat_take(struct latency_conn_key *key, struct latency_pending *seen)
{
    struct latency_pending *p = lat_pending_lookup(key);
    if (!p)
        return 0;
    *seen = *p;
    int gone = lat_pending_delete(key);
    return gone == 0;
}

/* A retransmission of an attempt user space already counted as unanswered? */
static __always_inline int lat_expired_seq(struct latency_conn_key *key, __u32 seq)
{
    __u32 *old = lat_expired_lookup(key);
    return old && *old == seq;
}

static __always_inline void lat_forget(struct latency_conn_key *fwd, struct latency_conn_key *rev)
{
#pragma unroll
    for (int s = RETINAD_LAT_STAGE_HANDSHAKE; s <= RETINAD_LAT_STAGE_CONN; s++) {
        fwd->stage = s;
        rev->stage = s;
        lat_pending_delete(fwd);
        lat_pending_delete(rev);
    }
}

static __always_inline void lat_observe(struct __sk_buff *skb, const struct pp_packet *pkt,
                                        __u8 direction, int host)
{
    if (!lat_ntargets())
        return;
    __u8 th[14]; /* ports, seq, ack, data offset, flags */
    if (bpf_skb_load_bytes(skb, pkt->l4_off, th, sizeof(th)) < 0)
        return;
    __u16 sport = (__u16)th[0] << 8 | th[1];
    __u16 dport = (__u16)th[2] << 8 | th[3];
    __u32 seq = (__u32)th[4] << 24 | (__u32)th[5] << 16 | (__u32)th[6] << 8 | th[7];
    __u8 flags = th[13];
    __u32 payload = pkt->l3_end > pkt->hdr_len ? pkt->l3_end - pkt->hdr_len : 0;
    int forwarded = host && direction == RETINAD_DIR_EGRESS && skb->ingress_ifindex != 0;
    __u64 now = bpf_ktime_get_ns();

    struct latency_conn_key fwd = {}; /* this packet's sender as the client */
    struct latency_conn_key rev = {}; /* its receiver as the client */
    __builtin_memcpy(fwd.client, pkt->src, 16);
    __builtin_memcpy(fwd.server, pkt->dst, 16);
    __builtin_memcpy(rev.client, pkt->dst, 16);
    __builtin_memcpy(rev.server, pkt->src, 16);
    fwd.client_port = rev.server_port = sport;
    fwd.server_port = rev.client_port = dport;
    struct latency_pending seen = {};

    if (flags & LAT_TCP_RST) { /* refused or aborted: an answer, nothing to measure */
        lat_forget(&fwd, &rev);
        return;
    }
    if ((flags & LAT_TCP_SYN) && !(flags & LAT_TCP_ACK)) {
        /* The remote end is the target: the server when the endpoint connects out, the
         * client when a target connects to it. The port is the server's either way. */
        const __u8 *remote = direction == RETINAD_DIR_EGRESS ? pkt->dst : pkt->src;
        __u32 id;
        if (forwarded || !lat_target(remote, dport, &id))
            return;
        fwd.stage = RETINAD_LAT_STAGE_HANDSHAKE;
        if (lat_pending_lookup(&fwd) || lat_expired_seq(&fwd, seq))
            return; /* a retransmission, or seen by an earlier hook */
        struct latency_pending p = {};
        p.start_ns = now;
        p.seq = seq;
        p.target = id;
        p.direction = direction;
        lat_pending_insert(&fwd, &p);
        return;
    }
    if (flags & LAT_TCP_SYN) { /* SYN-ACK: the server answers the client */
        rev.stage = RETINAD_LAT_STAGE_HANDSHAKE;
        if (!lat_take(&rev, &seen) || forwarded)
            return;
        lat_record(seen.target, RETINAD_LAT_STAGE_HANDSHAKE, seen.direction, now - seen.start_ns);
        rev.stage = RETINAD_LAT_STAGE_CONN;
        seen.start_ns = now;
        lat_pending_update(&rev, &seen);
        return;
    }
    if (payload) {
        rev.stage = RETINAD_LAT_STAGE_REQUEST;
        if (lat_take(&rev, &seen)) { /* the server's first payload after a request */
            if (!forwarded)
                lat_record(seen.target, RETINAD_LAT_STAGE_REQUEST, seen.direction,
                           now - seen.start_ns);
        } else if (!forwarded) {
            fwd.stage = RETINAD_LAT_STAGE_CONN;
            struct latency_pending *conn = lat_pending_lookup(&fwd);
            if (conn) { /* the client of a measured connection sends a request */
                struct latency_pending req = *conn;
                req.start_ns = now;
                req.seq = seq;
                fwd.stage = RETINAD_LAT_STAGE_REQUEST;
                if (!lat_expired_seq(&fwd, seq))
                    lat_pending_insert(&fwd, &req); /* no-op while one is outstanding */
            }
        }
    }
    if (flags & LAT_TCP_FIN) { /* no new request; a pending one may still be answered */
        fwd.stage = rev.stage = RETINAD_LAT_STAGE_CONN;
        lat_pending_delete(&fwd);
        lat_pending_delete(&rev);
    }
}

#endif /* RETINAD_LATENCY_H */
