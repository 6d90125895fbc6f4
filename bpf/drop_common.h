/* SPDX-License-Identifier: MIT */
/*
 * What both dropreason sources share: how one dropped packet becomes a drop_key
 * (direction, protocol, family, endpoint address) and a length. (The map and count() stay
 * in each program's own file: bcc rewrites map calls only in the file it compiles.) Included by
 * bpf/dropreason.c (tracepoint skb:kfree_skb) and bpf/dropreason_hooks.c (Retina's hook
 * points, for kernels without the tracepoint's reason field), so both count the same way;
 * bpf/dropreason.c documents the direction and byte rules. Needs the RETINAD_SKB_OFF_*,
 * RETINAD_ADVANCED and RETINAD_MAX_ENTRIES defines.
 */
#ifndef RETINAD_DROP_COMMON_H
#define RETINAD_DROP_COMMON_H
#include "retinad.h"

#define ETH_P_IP_HOST 0x0800   /* the tracepoint's protocol field is in host order */
#define ETH_P_IPV6_HOST 0x86DD
#define NETWORK_HEADER_UNSET 0xFFFF

/* Fill proto, family (and the address in advanced mode) from the IP header; return the
 * length from the IP header on, or skb->len when there is none. */
static __always_inline __u32 read_ip(struct drop_key *key, void *skb, __u16 protocol,
                                     int want_src)
{
    unsigned char *head = 0, *data = 0;
    __u16 nh = NETWORK_HEADER_UNSET;
    __u32 len = 0;
    bpf_probe_read_kernel(&len, sizeof(len), skb + RETINAD_SKB_OFF_LEN);
    bpf_probe_read_kernel(&head, sizeof(head), skb + RETINAD_SKB_OFF_HEAD);
    bpf_probe_read_kernel(&data, sizeof(data), skb + RETINAD_SKB_OFF_DATA);
    bpf_probe_read_kernel(&nh, sizeof(nh), skb + RETINAD_SKB_OFF_NETWORK_HEADER);
    if (!head || nh == NETWORK_HEADER_UNSET)
        return len;
    unsigned char *ip = head + nh;
    __u8 first = 0;
    if (bpf_probe_read_kernel(&first, 1, ip))
        return len;
    if (protocol == ETH_P_IP_HOST && (first >> 4) == 4) {
        __u8 proto = 0;
        bpf_probe_read_kernel(&proto, 1, ip + 9);
        key->proto = proto;
        key->family = RETINAD_FAMILY_IPV4;
#if RETINAD_ADVANCED
        key->addr[10] = 0xff;
        key->addr[11] = 0xff;
        bpf_probe_read_kernel(&key->addr[12], 4, ip + (want_src ? 12 : 16));
#endif
    } else if (protocol == ETH_P_IPV6_HOST && (first >> 4) == 6) {
        __u8 nexthdr = 0;
        bpf_probe_read_kernel(&nexthdr, 1, ip + 6);
        key->proto = nexthdr;
        key->family = RETINAD_FAMILY_IPV6;
#if RETINAD_ADVANCED
        bpf_probe_read_kernel(&key->addr[0], 16, ip + (want_src ? 8 : 24));
#endif
    } else {
        return len;
    }
    /* data may be before the IP header (L2 still on) or after it (already pulled). */
    long shift = (long)(data - ip);
    if (shift < -(long)len || shift > 0xFFFF)
        return len;
    return len + (__u32)shift;
}

static __always_inline __u8 drop_direction(void *skb, void *rx_sk)
{
    int iif = 0;
    void *sk = 0;
    bpf_probe_read_kernel(&iif, sizeof(iif), skb + RETINAD_SKB_OFF_SKB_IIF);
    if (iif != 0 || rx_sk)
        return RETINAD_DIR_INGRESS;
    bpf_probe_read_kernel(&sk, sizeof(sk), skb + RETINAD_SKB_OFF_SK);
    return sk ? RETINAD_DIR_EGRESS : RETINAD_DIR_UNKNOWN;
}

#endif /* RETINAD_DROP_COMMON_H */
