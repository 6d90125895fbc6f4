/* SPDX-License-Identifier: MIT */
/*
 * dropreason_hooks: Microsoft Retina's drop categories from its own hook points, for
 * kernels whose skb:kfree_skb has no `reason` field (before 5.17: Debian 11, Ubuntu 20.04,
 * RHEL 8) or when the operator asks for it ([dropreason] source = "hooks").
 *
 *   reason (retinad.h)           hook                         counted when
 *   HOOK_IPTABLE_RULE_DROP       kprobe+kretprobe nf_hook_slow   it returns < 0 (NF_DROP)
 *   HOOK_IPTABLE_NAT_DROP        kprobe+kretprobe nf_nat_inet_fn its verdict drops (nf_verdict_drops)
 *   HOOK_TCP_CONNECT_BASIC       kretprobe tcp_v4_connect        it returns != 0
 *   HOOK_TCP_ACCEPT_BASIC        kprobe+kretprobe inet_csk_accept it returns NULL with an
 *                                error other than -EAGAIN (an empty non-blocking accept
 *                                queue is no drop: Retina PR #2473)
 *   HOOK_CONNTRACK_ADD_DROP      kprobe+kretprobe __nf_conntrack_confirm its verdict drops
 *
 * The entry probe reads the packet (key and length, as bpf/drop_common.h does for the
 * tracepoint) while the skb is still alive and parks it per task (per CPU in softirq
 * context, where the interrupted task may be the idle task of every CPU); the return probe
 * counts it if the function dropped it. A NAT or conntrack drop is also an NF_DROP of the
 * enclosing nf_hook_slow, so it counts once in its own category and once as
 * IPTABLE_RULE_DROP, as in Retina. connect/accept free no packet: they count one "packet"
 * of 0 bytes, TCP, no address (endpoint unknown).
 *
 * Defines (besides drop_common.h's): RETINAD_SKB_OFF_PROTOCOL; RETINAD_ACCEPT_ARG_ERR_OFF
 * (offset of err in struct proto_accept_arg, 6.10+, where inet_csk_accept(sk, arg)) or -1
 * (before: inet_csk_accept(sk, flags, int *err, kern)).
 */
#include <uapi/linux/ptrace.h>
#include "retinad.h"
#include "drop_common.h"

BPF_PERCPU_HASH(drop_counts, struct drop_key, struct drop_value, RETINAD_MAX_ENTRIES);

/* bpf/dropreason.c's count(), word for word (bcc rewrites map calls only in this file). */
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

#define NF_DROP_VERDICT 0
#define NF_STOLEN_VERDICT 2
#define NF_VERDICT_MASK 0xff
#define NF_VERDICT_QBITS 16

/* Whether a netfilter verdict drops the packet. NF_DROP, with or without an errno in the
 * high bits (NF_DROP_ERR); and NF_STOLEN with an errno, which is NF_DROP_REASON(): the hook
 * freed the skb itself with a drop reason (seen on Debian's 6.1.0-57: a drop in an nft
 * nat chain returns 0x10002 from nf_nat_inet_fn, and nf_hook_slow turns it into -EPERM).
 * A plain NF_STOLEN (no errno) is a hook keeping the packet, not a drop. */
static __always_inline int nf_verdict_drops(__u32 v)
{
    __u32 code = v & NF_VERDICT_MASK;
    return code == NF_DROP_VERDICT || (code == NF_STOLEN_VERDICT && (v >> NF_VERDICT_QBITS) != 0);
}
#define ERR_EAGAIN 11

struct parked {
    struct drop_key key;
    __u32 len;
    __u32 pad;
    __u64 err_ptr; /* inet_csk_accept only */
};

/* One map for every hook: a call is (task or CPU, hook); nested hooks (nf_nat_inet_fn and
 * __nf_conntrack_confirm run inside nf_hook_slow) have their own slots. */
struct call_key {
    __u64 id;
    __u32 hook;
    __u32 pad;
};
BPF_HASH(parked, struct call_key, struct parked, 16384);

#define HOOK_NF 1
#define HOOK_NAT 2
#define HOOK_CONFIRM 3
#define HOOK_ACCEPT 4

/* The key an entry probe and its return probe share: the task, or the CPU when the task is
 * an idle task (tid 0 exists once per CPU). */
static __always_inline struct call_key call_key(__u32 hook)
{
    struct call_key k = {.id = bpf_get_current_pid_tgid(), .hook = hook};
    if ((__u32)k.id == 0)
        k.id = (1ULL << 63) | bpf_get_smp_processor_id();
    return k;
}

/* Entry: the key and length of the packet, read while the skb is alive. */
static __always_inline void park(__u32 hook, void *skb, __u32 reason)
{
    struct parked p = {};
    __be16 proto_be = 0;
    bpf_probe_read_kernel(&proto_be, sizeof(proto_be), skb + RETINAD_SKB_OFF_PROTOCOL);
    p.key.reason = reason;
    p.key.direction = drop_direction(skb, 0);
    p.len = read_ip(&p.key, skb, __builtin_bswap16(proto_be),
                    p.key.direction == RETINAD_DIR_EGRESS);
    struct call_key k = call_key(hook);
    parked.update(&k, &p);
}

/* Return: count the parked packet if the function dropped it; always unpark. */
static __always_inline void unpark(__u32 hook, int dropped)
{
    struct call_key k = call_key(hook);
    struct parked *p = parked.lookup(&k);
    if (!p)
        return;
    if (dropped) {
        struct drop_key key = p->key;
        count(&key, p->len);
    }
    parked.delete(&k);
}

int on_nf_hook_slow(struct pt_regs *ctx)
{
    park(HOOK_NF, (void *)PT_REGS_PARM1(ctx), RETINAD_HOOK_IPTABLE_RULE_DROP);
    return 0;
}

int on_nf_hook_slow_ret(struct pt_regs *ctx)
{
    unpark(HOOK_NF, (int)PT_REGS_RC(ctx) < 0);
    return 0;
}

int on_nf_nat_inet_fn(struct pt_regs *ctx)
{
    park(HOOK_NAT, (void *)PT_REGS_PARM2(ctx), RETINAD_HOOK_IPTABLE_NAT_DROP);
    return 0;
}

int on_nf_nat_inet_fn_ret(struct pt_regs *ctx)
{
    unpark(HOOK_NAT, nf_verdict_drops((__u32)PT_REGS_RC(ctx)));
    return 0;
}

int on_nf_conntrack_confirm(struct pt_regs *ctx)
{
    park(HOOK_CONFIRM, (void *)PT_REGS_PARM1(ctx), RETINAD_HOOK_CONNTRACK_ADD_DROP);
    return 0;
}

int on_nf_conntrack_confirm_ret(struct pt_regs *ctx)
{
    unpark(HOOK_CONFIRM, nf_verdict_drops((__u32)PT_REGS_RC(ctx)));
    return 0;
}

static __always_inline void count_socket_call(__u32 reason, __u8 direction)
{
    struct drop_key key = {.reason = reason, .direction = direction, .proto = 6};
    count(&key, 0);
}

int on_tcp_v4_connect_ret(struct pt_regs *ctx)
{
    if ((int)PT_REGS_RC(ctx) != 0)
        count_socket_call(RETINAD_HOOK_TCP_CONNECT_BASIC, RETINAD_DIR_EGRESS);
    return 0;
}

int on_inet_csk_accept(struct pt_regs *ctx)
{
    struct parked p = {};
#if RETINAD_ACCEPT_ARG_ERR_OFF >= 0
    p.err_ptr = (__u64)PT_REGS_PARM2(ctx) + RETINAD_ACCEPT_ARG_ERR_OFF;
#else
    p.err_ptr = (__u64)PT_REGS_PARM3(ctx);
#endif
    struct call_key k = call_key(HOOK_ACCEPT);
    parked.update(&k, &p);
    return 0;
}

int on_inet_csk_accept_ret(struct pt_regs *ctx)
{
    struct call_key k = call_key(HOOK_ACCEPT);
    struct parked *p = parked.lookup(&k);
    if (!p)
        return 0;
    if (PT_REGS_RC(ctx) == 0) {
        int err = 0;
        bpf_probe_read_kernel(&err, sizeof(err), (void *)p->err_ptr);
        if (err != -ERR_EAGAIN)
            count_socket_call(RETINAD_HOOK_TCP_ACCEPT_BASIC, RETINAD_DIR_INGRESS);
    }
    parked.delete(&k);
    return 0;
}
