/* SPDX-License-Identifier: MIT */
/*
 * The ABI between retinad's BPF programs and user space: every map key, map value and
 * constant both sides read. Mirrored once, field by field, in retinad/kernel/abi.py; a
 * kernel test compares the ctypes layout with bcc's view of these structs.
 *
 * Only fixed-width types, explicit padding, no kernel types: this header is included by
 * the BPF C (compiled by bcc) and read by nothing else.
 */
#ifndef RETINAD_H
#define RETINAD_H

/* Direction from the endpoint's point of view (retinad.model.Direction). */
#define RETINAD_DIR_UNKNOWN 0
#define RETINAD_DIR_INGRESS 1 /* towards the container / host */
#define RETINAD_DIR_EGRESS 2  /* away from it */

/* Address family of an endpoint key; OVERFLOW marks the key that takes counts once a map
 * is full (user space inserts it before attaching, so it always exists). */
#define RETINAD_FAMILY_NONE 0
#define RETINAD_FAMILY_IPV4 4
#define RETINAD_FAMILY_IPV6 6
#define RETINAD_FAMILY_OVERFLOW 255

/* TCP flag indexes into traffic_value.tcp_flags (bit order of the TCP header byte 13). */
#define RETINAD_TCP_FIN 0
#define RETINAD_TCP_SYN 1
#define RETINAD_TCP_RST 2
#define RETINAD_TCP_PSH 3
#define RETINAD_TCP_ACK 4
#define RETINAD_TCP_URG 5
#define RETINAD_TCP_ECE 6
#define RETINAD_TCP_CWR 7
#define RETINAD_TCP_NFLAGS 8

/* packetparser: why a frame was not counted (retinad_packets_unparsed_total{reason}).
 * The pp_unparsed per-CPU array is indexed by RETINAD_UNPARSED_SLOT(reason, host, dir). */
#define RETINAD_UNPARSED_NOT_IP 0      /* ethertype neither IPv4 nor IPv6 (ARP, LLDP, ...) */
#define RETINAD_UNPARSED_TRUNCATED 1   /* shorter than a header it claims */
#define RETINAD_UNPARSED_BAD_HEADER 2  /* IP version/IHL or TCP data offset impossible */
#define RETINAD_UNPARSED_NOT_TCP_UDP 3 /* IP carrying ICMP, SCTP, ... */
#define RETINAD_UNPARSED_EXT_CHAIN 4   /* IPv6 extension headers beyond RETINAD_IPV6_EXT_MAX */
#define RETINAD_UNPARSED_NREASONS 5
#define RETINAD_UNPARSED_SLOT(reason, host, dir) \
    (((reason) * 2 + ((host) ? 1 : 0)) * 2 + ((dir) == RETINAD_DIR_EGRESS ? 1 : 0))
#define RETINAD_UNPARSED_SLOTS (RETINAD_UNPARSED_NREASONS * 4)

/* packetparser, basic mode: per (host interface, direction). */
struct iface_key {
    __u32 ifindex;
    __u8 direction;
    __u8 pad[3];
};

/* packetparser: counts for one key, per CPU. */
struct traffic_value {
    __u64 packets;
    __u64 bytes;
    __u64 tcp_flags[RETINAD_TCP_NFLAGS];
};

/* packetparser, advanced mode: per (endpoint address, interface, direction).
 * IPv4 addresses are stored as IPv4-mapped IPv6 (::ffff:a.b.c.d). */
struct endpoint_key {
    __u8 addr[16];
    __u32 ifindex;
    __u8 direction;
    __u8 family;
    __u8 pad[2];
};

/* packetparser, remote context: per (local endpoint, remote address, interface, direction). */
struct remote_key {
    __u8 local[16];
    __u8 remote[16];
    __u32 ifindex;
    __u8 direction;
    __u8 family;
    __u8 pad[2];
};

/* dropreason: per (raw kernel drop reason, direction, L4 protocol, endpoint address).
 * addr is all zero in basic mode; reason is the raw enum skb_drop_reason value, named in
 * user space from the running kernel's BTF. */
struct drop_key {
    __u32 reason;
    __u8 direction;
    __u8 proto;
    __u8 family;
    __u8 pad;
    __u8 addr[16];
};

/* drop_key.reason of bpf/dropreason_hooks.c (the fallback source): Microsoft Retina's own
 * category numbers (its drop_reason.h), named by retinad.kernel.abi.HOOK_REASON_NAMES. */
#define RETINAD_HOOK_IPTABLE_RULE_DROP 0
#define RETINAD_HOOK_IPTABLE_NAT_DROP 1
#define RETINAD_HOOK_TCP_CONNECT_BASIC 2
#define RETINAD_HOOK_TCP_ACCEPT_BASIC 3
#define RETINAD_HOOK_CONNTRACK_ADD_DROP 5

struct drop_value {
    __u64 packets;
    __u64 bytes;
};

/* ---- latency ---- */

/* latency (bpf/latency.h): handshake and request latency to configured targets.
 * Histogram bucket upper bounds: 1-2-3-5 per decade from 100 us to 10 s (each bound at
 * most twice the one before: log2 or finer), listed in lat_bucket() (latency.h) and
 * LAT_EDGES_NS (abi.py); slot RETINAD_LAT_NEDGES is +Inf. */
#define RETINAD_LAT_NEDGES 21
#define RETINAD_LAT_NBUCKETS (RETINAD_LAT_NEDGES + 1)
#define RETINAD_LAT_MAX_TARGETS 256   /* distinct target names */
#define RETINAD_LAT_MAX_PREFIXES 1024 /* address/port entries of the target trie */
#define RETINAD_LAT_STAGE_HANDSHAKE 0 /* SYN -> SYN-ACK */
#define RETINAD_LAT_STAGE_REQUEST 1   /* first payload out -> first payload back */
#define RETINAD_LAT_STAGE_CONN 2      /* key of an established connection's orientation */
#define RETINAD_LAT_NSTAGES 2         /* stages with a histogram */
#define RETINAD_LAT_SLOT(target, stage, dir) \
    (((target) * RETINAD_LAT_NSTAGES + (stage)) * 2 + ((dir) == RETINAD_DIR_EGRESS ? 1 : 0))
#define RETINAD_LAT_SLOTS (RETINAD_LAT_MAX_TARGETS * RETINAD_LAT_NSTAGES * 2)

/* latency: one entry of the target LPM trie. The matched data is port then address
 * (IPv4 as IPv4-mapped IPv6), so prefixlen = 16 + address prefix bits (+ 96 for IPv4);
 * port 0 stands for any port and is looked up second. */
struct latency_target_key {
    __u32 prefixlen;
    __u8 port[2]; /* server port, network byte order; 0 = any */
    __u8 addr[16];
    __u8 pad[2];
};

/* latency: one connection in one stage, oriented client -> server. */
struct latency_conn_key {
    __u8 client[16];
    __u8 server[16];
    __u16 client_port; /* host byte order */
    __u16 server_port;
    __u8 stage; /* RETINAD_LAT_STAGE_* */
    __u8 pad[3];
};

/* latency: a SYN or request waiting for its answer (or, stage CONN, an established
 * connection to a target). */
struct latency_pending {
    __u64 start_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u32 seq;      /* TCP sequence number of the SYN / request: a retransmission repeats it */
    __u16 target;   /* target id: index of its histogram slots */
    __u8 direction; /* direction of the SYN from the endpoint: EGRESS = it connected out */
    __u8 pad;
};

/* latency: histogram of one (target, stage, direction), per CPU. */
struct latency_hist {
    __u64 buckets[RETINAD_LAT_NBUCKETS]; /* not cumulative */
    __u64 sum_ns;
    __u64 no_response; /* answered only after the timeout */
};

/* ---- flow events ---- */
/* Transports (RETINAD_FE_TRANSPORT) and the per-CPU fe_stats slots. */
#define RETINAD_FE_RINGBUF 1
#define RETINAD_FE_PERF 2
#define RETINAD_FE_STAT_SUBMITTED 0 /* events written to the ring / perf buffer */
#define RETINAD_FE_STAT_LOST 1      /* reserve / perf output failed: the buffer was full */
#define RETINAD_FE_STAT_SAMPLED 2   /* not reported: data_sampling_rate said no */
#define RETINAD_FE_STAT_UNTRACKED 3 /* high: connection table full, reported per packet */
#define RETINAD_FE_NSTATS 4

/* Why an event was reported (flow_event.reason). */
#define RETINAD_FE_REASON_PACKET 0   /* low aggregation: this packet */
#define RETINAD_FE_REASON_NEW 1      /* high: the first packet of a flow */
#define RETINAD_FE_REASON_FLAGS 2    /* high: SYN, FIN or RST, or a flag not seen before */
#define RETINAD_FE_REASON_INTERVAL 3 /* high: report_interval passed since the last report */
#define RETINAD_FE_REASON_UNTRACKED 4 /* high: table full, this packet alone */
#define RETINAD_FE_REASON_IDLE 5     /* user space: idle flow taken out of the table */
#define RETINAD_FE_REASON_FLUSH 6    /* user space: flushed on stop or reload */

/* One event: a packet (low) or what a flow did since its last report (high). */
struct flow_event {
    __u64 ts_ns;    /* bpf_ktime_get_ns() at the report (CLOCK_MONOTONIC) */
    __u64 first_ns; /* the flow's first packet (high); ts_ns in low */
    __u64 packets;  /* since the last report */
    __u64 bytes;
    __u8 src[16];   /* IPv4 as IPv4-mapped IPv6 */
    __u8 dst[16];
    __u32 ifindex;  /* the observation point */
    __be16 sport;   /* network order */
    __be16 dport;
    __u8 family;
    __u8 l4proto;
    __u8 direction; /* RETINAD_DIR_*, from the endpoint's point of view */
    __u8 tcp_flags; /* every flag seen since the last report */
    __u8 reason;    /* RETINAD_FE_REASON_* */
    __u8 host;      /* 1: a host interface, 0: a container veth */
    __u8 pad[2];
};

/* High aggregation: one connection-table key per flow direction and observation point. */
struct flow_key {
    __u8 src[16];
    __u8 dst[16];
    __u32 ifindex;
    __be16 sport;
    __be16 dport;
    __u8 family;
    __u8 l4proto;
    __u8 direction;
    __u8 host;
};

struct flow_state {
    __u64 packets; /* since the flow entered the table */
    __u64 bytes;
    __u64 reported_packets; /* part of packets already in an event */
    __u64 reported_bytes;
    __u64 first_ns;
    __u64 last_ns;
    __u64 last_report_ns;
    __u8 flags_seen;    /* every TCP flag of the flow so far */
    __u8 flags_pending; /* TCP flags since the last report */
    __u8 sampled_out;   /* data_sampling_rate said no to this flow: never reported */
    __u8 pad[5];
};

#endif /* RETINAD_H */
