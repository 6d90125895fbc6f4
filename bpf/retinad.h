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

#endif /* RETINAD_H */
