/* SPDX-License-Identifier: MIT */
/*
 * dropreason: count the packets the kernel drops, by its own drop reason.
 *
 * Hook: tracepoint skb:kfree_skb (kernel 5.17+ has the `reason` field). Each drop adds
 * one packet and skb->len bytes to a per-CPU hash keyed by struct drop_key (retinad.h).
 * The reason is stored raw: user space names it from the running kernel's BTF, because
 * the enum is renumbered between kernels and the installed headers may be another
 * kernel's.
 *
 * Everything kernel-specific comes in as -D defines computed by retinad from BTF
 * (retinad/plugins/dropreason.py); none has a default, so a missing one fails the compile:
 *   RETINAD_REASON_NOT_DROPPED_YET, RETINAD_REASON_CONSUMED  not drops: ignored (-1 if absent)
 *   RETINAD_SKB_OFF_{HEAD,DATA,NETWORK_HEADER,LEN,SKB_IIF,SK} struct sk_buff offsets
 *   RETINAD_HAS_RX_SK       1 if the tracepoint has rx_sk (6.10+), else 0
 *   RETINAD_ADVANCED        1: key by endpoint address; 0: address left zero (basic mode)
 *   RETINAD_MAX_ENTRIES     capacity of drop_counts
 *
 * Offsets instead of skb->field: bcc would compute those from the installed headers, and
 * Debian's 6.1 headers put skb->head at byte 200 where 6.18 has it at 192.
 *
 * Direction (retinad.model.Direction, from the host's point of view):
 *   ingress  skb->skb_iif != 0 (set by __netif_receive_skb_core: the packet arrived on an
 *            interface of this host, including veth and lo) or the tracepoint's rx_sk is set
 *            (the drop is charged to a receiving socket);
 *   egress   otherwise, when skb->sk is set (a local socket's packet on its way out);
 *   unknown  neither: a packet built without a socket (ARP, some ICMP) or one dropped by a
 *            driver before the receive core.
 * Bytes: the packet's length from its IP header on, whatever layer dropped it (skb->len
 * alone depends on how far the stack had pulled: a UDP drop sees no IP header, a qdisc
 * drop sees the Ethernet header too); skb->len when there is no network header.
 * Endpoint address (advanced mode): the local side, destination for ingress and unknown,
 * source for egress.
 */
/* bcc builds the tracepoint's args struct from its format file, where the field is
 * `enum skb_drop_reason reason` (5.17+). Declaring the enum with its 4-byte underlying type
 * completes that type without #include <linux/skbuff.h>, which costs ~30 s of clang per
 * compile under emulation (the kernel matrix) and >1 s natively; every struct sk_buff
 * read goes through BTF offsets anyway. Harmless where the field does not exist. */
enum skb_drop_reason : unsigned int;
#include "retinad.h"

#include "drop_common.h"

BPF_PERCPU_HASH(drop_counts, struct drop_key, struct drop_value, RETINAD_MAX_ENTRIES);

static __always_inline void count(struct drop_key *key, __u32 len)
{
    struct drop_value *v = drop_counts.lookup(key);
    if (!v) {
        struct drop_value first = {.packets = 1, .bytes = len};
        if (drop_counts.insert(key, &first) == 0)  /* BPF_NOEXIST */
            return;
        /* Another CPU inserted the same key first (EEXIST), or the map is full (E2BIG):
         * count into the existing key, else into the overflow key user space made. */
        v = drop_counts.lookup(key);
        if (!v) {
            struct drop_key overflow = {.family = RETINAD_FAMILY_OVERFLOW};
            v = drop_counts.lookup(&overflow);
            if (!v)
                return;
        }
    }
    v->packets += 1;  /* per-CPU value: no other writer */
    v->bytes += len;
}

int on_kfree_skb(struct tracepoint__skb__kfree_skb *args)
{
    __u32 reason = (__u32)args->reason;
    if ((long)reason == RETINAD_REASON_NOT_DROPPED_YET || (long)reason == RETINAD_REASON_CONSUMED)
        return 0;
    void *skb = args->skbaddr;
    void *rx_sk = 0;
#if RETINAD_HAS_RX_SK
    rx_sk = args->rx_sk;
#endif
    struct drop_key key = {};
    key.reason = reason;
    key.direction = drop_direction(skb, rx_sk);
    __u32 len = read_ip(&key, skb, args->protocol, key.direction == RETINAD_DIR_EGRESS);
    count(&key, len);
    return 0;
}
