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

#endif /* RETINAD_H */
