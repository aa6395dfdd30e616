/*
 * Decoding a jail plan: every field is checked here, once, in the parent, so the
 * child applies only values that passed.  No Python: a fuzz harness links this
 * file alone.
 */
#define _GNU_SOURCE
#include "jail.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

#define NS_FLAGS (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | \
                  CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME)
#define SECCOMP_FLAGS_KNOWN ((1u << 1) | (1u << 2) | (1u << 3)) /* LOG, SPEC_ALLOW, NEW_LISTENER */
#define LANDLOCK_RULE_HEAD 24 /* u64 access_dir, u64 access_file, u32 pathlen, u32 pad */

static int fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t get_u(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    memcpy(&v, p, n); /* native byte order, little-endian hosts: low bytes first */
    return v;
}

static int is_one_ns(int64_t v)
{
    return v > 0 && (v & NS_FLAGS) == v && (v & (v - 1)) == 0;
}

/* Split a payload into exactly `n` NUL-terminated strings that fill it. */
static int strings(struct jail_step *st, const unsigned char *p, uint32_t len, int n)
{
    uint32_t off = 0;
    for (int i = 0; i < n; i++) {
        const unsigned char *end = memchr(p + off, 0, len - off);
        if (off >= len || end == NULL)
            return -1;
        st->s[i] = (const char *)p + off;
        off = (uint32_t)(end - p) + 1;
    }
    return off == len ? 0 : -1;
}

static int landlock_rules(struct jail_plan *plan, struct jail_step *st, const unsigned char *p,
                          uint32_t *used, char *why, size_t whylen)
{
    uint32_t off = 0;
    st->rules = plan->rules + *used;
    while (off < st->len) {
        if (st->len - off < LANDLOCK_RULE_HEAD)
            return fail(why, whylen, "truncated landlock rule");
        if (*used >= JAIL_MAX_RULES)
            return fail(why, whylen, "more than %d landlock rules", JAIL_MAX_RULES);
        uint32_t plen = (uint32_t)get_u(p + off + 16, 4);
        if (plen < 2 || plen > st->len - off - LANDLOCK_RULE_HEAD)
            return fail(why, whylen, "bad landlock path length %u", plen);
        const char *path = (const char *)p + off + LANDLOCK_RULE_HEAD;
        if (memchr(path, 0, plen) != path + plen - 1)
            return fail(why, whylen, "landlock path is not one string");
        struct jail_rule *rule = &plan->rules[(*used)++];
        rule->access_dir = get_u(p + off, 8);
        rule->access_file = get_u(p + off + 8, 8);
        rule->path = path;
        st->nrules++;
        off += LANDLOCK_RULE_HEAD + ((plen + 7u) & ~7u);
        if (off > st->len)
            return fail(why, whylen, "landlock rule overruns its step");
    }
    return 0;
}

/* Per-op checks of the arguments and the payload. */
static int check_step(struct jail_plan *plan, struct jail_step *st, const unsigned char *p,
                      uint32_t *rules_used, unsigned char *opened, char *why, size_t whylen)
{
    static const int nstrings[OP_MAX] = {
        [OP_SETNS_PATH] = 1, [OP_MOUNT] = 4, [OP_MKDIR] = 1, [OP_OPEN_BIND] = 1,
        [OP_BIND] = 1, [OP_CHDIR] = 1, [OP_PIVOT_ROOT] = 2, [OP_UMOUNT] = 1,
        [OP_SETHOSTNAME] = 1, [OP_SYMLINK] = 2,
    };
    int n = nstrings[st->op];
    if (n) {
        if (strings(st, p, st->len, n) != 0)
            return fail(why, whylen, "op %u needs %d strings", st->op, n);
        if (st->op != OP_MOUNT && st->s[0][0] == 0)
            return fail(why, whylen, "op %u: empty path", st->op);
        if (st->op == OP_MOUNT && st->s[0][0] == 0)
            return fail(why, whylen, "mount without a target");
        if (st->op == OP_SYMLINK && st->s[1][0] == 0)
            return fail(why, whylen, "symlink without a path");
    } else if (st->op != OP_SECCOMP && st->op != OP_LANDLOCK && st->len != 0) {
        return fail(why, whylen, "op %u takes no payload", st->op);
    }
    int64_t a0 = st->a[0], a1 = st->a[1];
    switch (st->op) {
    case OP_UNSHARE:
        if (a0 <= 0 || (a0 & NS_FLAGS) != a0)
            return fail(why, whylen, "unshare flags %#llx", (unsigned long long)a0);
        break;
    case OP_SETNS_SLOT:
        if (a0 < 0 || a0 >= JAIL_MAX_SLOTS)
            return fail(why, whylen, "slot %lld", (long long)a0);
        if (!is_one_ns(a1))
            return fail(why, whylen, "setns type %#llx", (unsigned long long)a1);
        if (a0 > plan->max_slot)
            plan->max_slot = (int)a0;
        break;
    case OP_SETNS_PATH:
        if (!is_one_ns(a1))
            return fail(why, whylen, "setns type %#llx", (unsigned long long)a1);
        break;
    case OP_MOUNT:
        if (a1 < 0 || a1 > 7 || a0 < 0 || a0 > (int64_t)UINT32_MAX)
            return fail(why, whylen, "mount flags");
        break;
    case OP_MKDIR:
        if (a0 < 0 || a0 > 07777)
            return fail(why, whylen, "mode %llo", (unsigned long long)a0);
        break;
    case OP_OPEN_BIND:
    case OP_BIND:
        if (a0 < 0 || a0 >= JAIL_MAX_BINDS)
            return fail(why, whylen, "bind index %lld", (long long)a0);
        if (st->op == OP_OPEN_BIND) {
            opened[a0] = 1;
            if (a0 > plan->max_bind)
                plan->max_bind = (int)a0;
        } else if (!opened[a0]) {
            return fail(why, whylen, "bind %lld was not opened", (long long)a0);
        } else if (a1 < 0 || a1 > (int64_t)UINT32_MAX) {
            return fail(why, whylen, "remount flags");
        }
        break;
    case OP_SETHOSTNAME:
        if (strlen(st->s[0]) > 64)
            return fail(why, whylen, "hostname longer than 64 bytes");
        break;
    case OP_SETRESGID:
    case OP_SETRESUID:
        if (a0 < 0 || a0 >= (int64_t)UINT32_MAX)
            return fail(why, whylen, "id %lld", (long long)a0);
        break;
    case OP_CAPS:
        if (a0 < 0 || a0 > (int64_t)UINT32_MAX || a1 < 0 || a1 > 63)
            return fail(why, whylen, "capability arguments");
        break;
    case OP_PRCTL:
        if (a0 != PR_SET_PDEATHSIG && a0 != PR_SET_DUMPABLE && a0 != PR_SET_NO_NEW_PRIVS)
            return fail(why, whylen, "prctl option %lld", (long long)a0);
        if (a1 < 0 || a1 > 64)
            return fail(why, whylen, "prctl value %lld", (long long)a1);
        break;
    case OP_RLIMIT:
        if (a0 < 0 || a0 >= RLIM_NLIMITS)
            return fail(why, whylen, "rlimit %lld", (long long)a0);
        if (st->flags != 0 && st->flags != JAIL_RLIMIT_KEPT && st->flags != JAIL_RLIMIT_HARD)
            return fail(why, whylen, "rlimit flags %#x", st->flags);
        break;
    case OP_SECCOMP:
        if (st->len == 0 || st->len % 8 != 0 || st->len / 8 > JAIL_MAX_BPF)
            return fail(why, whylen, "not a BPF program: %u bytes", st->len);
        if (a0 < 0 || (a0 & SECCOMP_FLAGS_KNOWN) != a0)
            return fail(why, whylen, "seccomp flags %#llx", (unsigned long long)a0);
        if (st->flags != 0 && (st->flags != JAIL_SECCOMP_LEAVE || !(a0 & (1 << 3))))
            return fail(why, whylen, "seccomp step flags %#x", st->flags);
        st->data = p;
        break;
    case OP_LANDLOCK:
        if (st->flags != 8 && st->flags != 16 && st->flags != 24)
            return fail(why, whylen, "landlock attribute size %u", st->flags);
        return landlock_rules(plan, st, p, rules_used, why, whylen);
    default:
        break;
    }
    return 0;
}

int jail_plan_decode(const void *wire, size_t len, struct jail_plan **out, char *why,
                     size_t whylen)
{
    const unsigned char *w = wire;
    *out = NULL;
    if (len < JAIL_HEADER_SIZE)
        return fail(why, whylen, "plan shorter than its header");
    if (len > (size_t)JAIL_MAX_STEPS * (JAIL_STEP_SIZE + JAIL_MAX_PAYLOAD))
        return fail(why, whylen, "plan too large");
    if (get_u(w, 4) != JAIL_PLAN_MAGIC || get_u(w + 4, 2) != JAIL_PLAN_VERSION)
        return fail(why, whylen, "not a version %d jail plan", JAIL_PLAN_VERSION);
    uint32_t nsteps = (uint32_t)get_u(w + 6, 2);
    uint64_t clone_flags = get_u(w + 8, 8);
    if (nsteps > JAIL_MAX_STEPS)
        return fail(why, whylen, "more than %d steps", JAIL_MAX_STEPS);
    if ((clone_flags & NS_FLAGS) != clone_flags)
        return fail(why, whylen, "clone flags %#llx", (unsigned long long)clone_flags);

    struct jail_plan *plan = calloc(1, sizeof *plan);
    if (plan == NULL)
        return fail(why, whylen, "out of memory");
    plan->steps = calloc(nsteps ? nsteps : 1, sizeof *plan->steps);
    plan->rules = calloc(JAIL_MAX_RULES, sizeof *plan->rules);
    plan->buf = malloc(len);
    if (plan->steps == NULL || plan->rules == NULL || plan->buf == NULL) {
        jail_plan_free(plan);
        return fail(why, whylen, "out of memory");
    }
    memcpy(plan->buf, wire, len);
    plan->buflen = len;
    plan->clone_flags = clone_flags;
    plan->nsteps = nsteps;
    plan->max_slot = plan->max_bind = -1;

    unsigned char opened[JAIL_MAX_BINDS] = {0};
    uint32_t rules_used = 0;
    size_t off = JAIL_HEADER_SIZE;
    for (uint32_t i = 0; i < nsteps; i++) {
        const unsigned char *p = plan->buf + off;
        if (len - off < JAIL_STEP_SIZE) {
            fail(why, whylen, "step %u truncated", i);
            goto bad;
        }
        struct jail_step *st = &plan->steps[i];
        st->op = (uint16_t)get_u(p, 2);
        st->layer = (uint16_t)get_u(p + 2, 2);
        st->flags = (uint32_t)get_u(p + 4, 4);
        for (int k = 0; k < 3; k++)
            st->a[k] = (int64_t)get_u(p + 8 + 8 * k, 8);
        st->len = (uint32_t)get_u(p + 32, 4);
        off += JAIL_STEP_SIZE;
        size_t padded = ((size_t)st->len + 7u) & ~(size_t)7u;
        if (st->op == 0 || st->op >= OP_MAX) {
            fail(why, whylen, "step %u: unknown op %u", i, st->op);
            goto bad;
        }
        if (st->layer >= JAIL_LAYER_RESERVED) {
            fail(why, whylen, "step %u: layer id %u is reserved", i, st->layer);
            goto bad;
        }
        if (st->len > JAIL_MAX_PAYLOAD || padded > len - off) {
            fail(why, whylen, "step %u: payload of %u bytes overruns the plan", i, st->len);
            goto bad;
        }
        if (check_step(plan, st, plan->buf + off, &rules_used, opened, why, whylen) != 0) {
            size_t used = strlen(why);
            snprintf(why + used, whylen - used, " (step %u)", i);
            goto bad;
        }
        off += padded;
    }
    if (off != len) {
        fail(why, whylen, "%zu bytes after the last step", len - off);
        goto bad;
    }
    *out = plan;
    return 0;
bad:
    jail_plan_free(plan);
    return -1;
}

void jail_plan_free(struct jail_plan *plan)
{
    if (plan == NULL)
        return;
    free(plan->steps);
    free(plan->rules);
    free(plan->buf);
    free(plan);
}
