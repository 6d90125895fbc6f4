/* SPDX-License-Identifier: MIT */
/*
 * Flow events: what packetparser reports to user space, per packet or per flow, for the
 * flow log and `retinad flows`. Included by packetparser.c inside its flow-events block,
 * after the maps and their accessors (fe_stat, fe_emit, fe_conn_lookup, fe_conn_add);
 * compiled only with RETINAD_FLOW_EVENTS. Metrics never depend on this path: the counters
 * are updated before and whatever happens here.
 *
 * Low aggregation (RETINAD_FE_HIGH 0): one event per counted packet, sampled 1 in
 * RETINAD_FE_SAMPLING by bpf_get_prandom_u32(); TCP SYN, FIN and RST are always reported
 * (as in Retina).
 *
 * High aggregation (RETINAD_FE_HIGH 1), as Retina's conntrack does it: a bounded hash
 * (fe_conn) holds one entry per flow direction and observation point; an event carries
 * the packets, bytes and TCP flags since the flow's last report, and is sent for the first
 * packet, on SYN/FIN/RST or a flag the flow has not shown before, and on the first packet
 * after RETINAD_FE_REPORT_NS. A report the ring could not take leaves its counts pending
 * for the next one, so a lost event loses no count. Sampling decides once per flow, at its
 * first packet, so a reported flow's totals are whole. User space (plugins/flow_events.py)
 * takes idle entries out with lookup-and-delete and reports what they still hold; when the
 * table is full, packets of a new flow are reported one by one (REASON_UNTRACKED).
 */
#ifndef RETINAD_FLOW_EVENTS_H
#define RETINAD_FLOW_EVENTS_H

#ifndef RETINAD_FE_SAMPLING
#define RETINAD_FE_SAMPLING 1
#endif
#ifndef RETINAD_FE_REPORT_NS
#define RETINAD_FE_REPORT_NS 30000000000ULL
#endif

#define FE_CONTROL_FLAGS ((1 << RETINAD_TCP_FIN) | (1 << RETINAD_TCP_SYN) | (1 << RETINAD_TCP_RST))

/* 1 in RETINAD_FE_SAMPLING says yes. */
static __always_inline int fe_sampled_in(void)
{
    if (RETINAD_FE_SAMPLING <= 1)
        return 1;
    return bpf_get_prandom_u32() % RETINAD_FE_SAMPLING == 0;
}

static __always_inline void fe_fill(struct flow_event *ev, struct __sk_buff *skb,
                                    const struct pp_packet *pkt, __u8 direction, int host)
{
    __builtin_memcpy(ev->src, pkt->src, 16);
    __builtin_memcpy(ev->dst, pkt->dst, 16);
    ev->ifindex = skb->ifindex;
    ev->sport = pkt->sport;
    ev->dport = pkt->dport;
    ev->family = pkt->family;
    ev->l4proto = pkt->l4proto;
    ev->direction = direction;
    ev->host = host ? 1 : 0;
}

/* One packet, one event (low aggregation, or a flow the full table could not take). */
static __always_inline void fe_report_packet(struct __sk_buff *skb, const struct pp_packet *pkt,
                                             __u8 direction, int host, __u64 packets,
                                             __u64 bytes, __u8 flags, __u8 reason)
{
    if (!(flags & FE_CONTROL_FLAGS) && !fe_sampled_in()) {
        fe_stat(RETINAD_FE_STAT_SAMPLED);
        return;
    }
    struct flow_event ev = {};
    int ok;
    fe_fill(&ev, skb, pkt, direction, host);
    ev.ts_ns = bpf_ktime_get_ns();
    ev.first_ns = ev.ts_ns;
    ev.packets = packets;
    ev.bytes = bytes;
    ev.tcp_flags = flags;
    ev.reason = reason;
    fe_emit(skb, &ev, &ok);
}

#if RETINAD_FE_HIGH
static __always_inline void fe_track(struct __sk_buff *skb, const struct pp_packet *pkt,
                                     __u8 direction, int host, __u64 packets, __u64 bytes,
                                     __u8 flags)
{
    struct flow_key k = {};
    __builtin_memcpy(k.src, pkt->src, 16);
    __builtin_memcpy(k.dst, pkt->dst, 16);
    k.ifindex = skb->ifindex;
    k.sport = pkt->sport;
    k.dport = pkt->dport;
    k.family = pkt->family;
    k.l4proto = pkt->l4proto;
    k.direction = direction;
    k.host = host ? 1 : 0;

    __u64 now = bpf_ktime_get_ns();
    __u8 reason = RETINAD_FE_REASON_INTERVAL;
    struct flow_state *st = fe_conn_lookup(&k);
    if (!st) {
        struct flow_state init = {};
        init.first_ns = now;
        init.last_report_ns = now;
        init.sampled_out = !fe_sampled_in();
        st = fe_conn_add(&k, &init);
        if (!st) { /* the table is full: this packet alone, sampled like low */
            fe_stat(RETINAD_FE_STAT_UNTRACKED);
            fe_report_packet(skb, pkt, direction, host, packets, bytes, flags,
                             RETINAD_FE_REASON_UNTRACKED);
            return;
        }
        if (st->sampled_out)
            fe_stat(RETINAD_FE_STAT_SAMPLED);
        reason = RETINAD_FE_REASON_NEW;
    }
    st->last_ns = now;
    if (st->sampled_out)
        return;
    __sync_fetch_and_add(&st->packets, packets);
    __sync_fetch_and_add(&st->bytes, bytes);
    __u8 fresh = flags & ~st->flags_seen;
    st->flags_seen |= flags;
    st->flags_pending |= flags;
    if (reason != RETINAD_FE_REASON_NEW) {
        if ((flags & FE_CONTROL_FLAGS) || fresh)
            reason = RETINAD_FE_REASON_FLAGS;
        else if (now - st->last_report_ns < RETINAD_FE_REPORT_NS)
            return;
    }
    /* Report what the flow did since its last report. A report from another CPU at the
     * same instant could count a packet twice; one flow direction is processed on one
     * CPU at a time in practice (RSS/RPS steer it), which docs/FLOWS.md states. */
    __u64 p = st->packets, b = st->bytes;
    struct flow_event ev = {};
    int ok;
    fe_fill(&ev, skb, pkt, direction, host);
    ev.ts_ns = now;
    ev.first_ns = st->first_ns;
    ev.packets = p - st->reported_packets;
    ev.bytes = b - st->reported_bytes;
    ev.tcp_flags = st->flags_pending;
    ev.reason = reason;
    fe_emit(skb, &ev, &ok);
    if (!ok)
        return; /* counts stay pending for the next report */
    st->reported_packets = p;
    st->reported_bytes = b;
    st->flags_pending = 0;
    st->last_report_ns = now;
}
#endif

/* The one call from pp_count, after the metric counters' delta d is computed. A macro so
 * this header needs no struct pp_delta (defined after the flow-events block). */
#if RETINAD_FE_HIGH
#define fe_observe(skb, pkt, direction, host, d)                                              \
    fe_track((skb), (pkt), (direction), (host), (d)->packets, (d)->bytes, (d)->tcp_flags)
#else
#define fe_observe(skb, pkt, direction, host, d)                                              \
    fe_report_packet((skb), (pkt), (direction), (host), (d)->packets, (d)->bytes,            \
                     (d)->tcp_flags, RETINAD_FE_REASON_PACKET)
#endif

#endif /* RETINAD_FLOW_EVENTS_H */
