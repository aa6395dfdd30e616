/*
 * The steps that confine: fds, capabilities, Landlock, rlimits, seccomp.
 * Async-signal-safe, as everything the child runs (see steps.c).
 */
#define _GNU_SOURCE
#include "jail.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

struct ll_ruleset_attr {
    uint64_t handled_access_fs, handled_access_net, scoped;
};

struct ll_path_beneath {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

struct cap_header {
    uint32_t version;
    int pid;
};

struct cap_data {
    uint32_t effective, permitted, inheritable;
};


/* Kept fds to 0..k-1, the sync socket to k (close-on-exec), everything else closed.
 * Others are closed first: a caller at its RLIMIT_NOFILE leaves no room otherwise.
 * Then every kept fd is parked in the lowest free slots above k, so no dup2 can
 * overwrite a source that is still to be moved. */
int jail_fds(struct jail_run *r)
{
    int k = r->nkeep, sorted[JAIL_MAX_KEEP + 1], n = 0;
    for (int i = 0; i <= k; i++) {
        int fd = i < k ? r->keep[i] : r->sync;
        if (fd < 0)
            continue;
        int j = n++;
        for (; j > 0 && sorted[j - 1] > fd; j--)
            sorted[j] = sorted[j - 1];
        sorted[j] = fd;
    }
    unsigned low = 0;
    for (int i = 0; i < n; i++) {
        if (low < (unsigned)sorted[i] &&
            syscall(SYS_close_range, low, (unsigned)sorted[i] - 1, 0) != 0)
            return jail_failed(r, 0);
        low = (unsigned)sorted[i] + 1;
    }
    if (syscall(SYS_close_range, low, ~0u, 0) != 0)
        return jail_failed(r, 0);
    int parked[JAIL_MAX_KEEP], sync = -1;
    for (int i = 0; i < k; i++)
        if ((parked[i] = fcntl(r->keep[i], F_DUPFD, k + 1)) < 0)
            return jail_failed(r, 1);
    if (r->sync >= 0 && (sync = fcntl(r->sync, F_DUPFD_CLOEXEC, k + 1)) < 0)
        return jail_failed(r, 1);
    for (int i = 0; i < k; i++)
        if (dup2(parked[i], i) < 0)
            return jail_failed(r, 2);
    if (sync >= 0) {
        if (dup3(sync, k, O_CLOEXEC) < 0)
            return jail_failed(r, 2);
        r->sync = k;
    }
    if (syscall(SYS_close_range, (unsigned)k + (sync >= 0), ~0u, 0) != 0)
        return jail_failed(r, 3);
    return 0;
}


int jail_caps(struct jail_run *r, const struct jail_step *st)
{
    if (prctl(PR_SET_SECUREBITS, (unsigned long)st->a[0], 0, 0, 0) != 0)
        return jail_failed(r, 0);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        return jail_failed(r, 1);
    for (long cap = 0; cap <= st->a[1]; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            return jail_failed(r, 2);
    struct cap_header head = {0x20080522, 0}; /* _LINUX_CAPABILITY_VERSION_3 */
    struct cap_data none[2];
    memset(none, 0, sizeof none);
    if (syscall(SYS_capset, &head, none) != 0)
        return jail_failed(r, 3);
    return 0;
}


/* Each path gets its own access: a file cannot take directory rights, and that
 * must not narrow the rights of the paths after it. */
int jail_landlock(struct jail_run *r, const struct jail_step *st)
{
    struct ll_ruleset_attr attr = {(uint64_t)st->a[0], (uint64_t)st->a[1], (uint64_t)st->a[2]};
    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, (size_t)st->flags, 0u);
    if (ruleset < 0)
        return jail_failed(r, 0);
    int rc = 0;
    for (uint32_t i = 0; i < st->nrules && rc == 0; i++) {
        const struct jail_rule *rule = &st->rules[i];
        struct stat sb;
        int fd = open(rule->path, O_PATH | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &sb) != 0) {
            rc = jail_failed(r, (uint16_t)(i + 1));
        } else {
            struct ll_path_beneath pb;
            pb.allowed_access = S_ISDIR(sb.st_mode) ? rule->access_dir : rule->access_file;
            pb.parent_fd = fd;
            if (syscall(SYS_landlock_add_rule, ruleset, 1 /* PATH_BENEATH */, &pb, 0u) != 0)
                rc = jail_failed(r, (uint16_t)(i + 1));
        }
        if (fd >= 0)
            close(fd);
    }
    if (rc == 0 && syscall(SYS_landlock_restrict_self, ruleset, 0u) != 0)
        rc = jail_failed(r, 0xffff);
    close(ruleset);
    return rc;
}


/* Soft and hard alike.  JAIL_RLIMIT_HARD ("unlimited" in a profile): as high as the
 * current hard limit, since raising that needs a capability the jail does not have. */
int jail_rlimit(struct jail_run *r, const struct jail_step *st)
{
    uint64_t v = (uint64_t)st->a[1];
    if (st->flags & JAIL_RLIMIT_KEPT) {
        v = (uint64_t)r->nkeep;
    } else if (st->flags & JAIL_RLIMIT_HARD) {
        uint64_t now[2];
        if (syscall(SYS_prlimit64, 0, (int)st->a[0], NULL, now) != 0)
            return jail_failed(r, 1);
        v = now[1];
    }
    uint64_t lim[2] = {v, v};
    if (syscall(SYS_prlimit64, 0, (int)st->a[0], lim, NULL) != 0)
        return jail_failed(r, 0);
    return 0;
}


/* The notification listener goes to the parent: it copies it with pidfd_getfd
 * while we wait (a listener cannot be sent once the filter may forbid sendmsg).
 * With JAIL_SECCOMP_LEAVE we do not wait: the fd the listener will get is said
 * before the filter is loaded (the lowest free fd: seccomp() allocates so, and this
 * child has one thread), the listener stays open here, and the parent copies it
 * once we are ready (it checks the fd is a listener).  No round trip, and nothing
 * after the filter needs read or write. */
int jail_seccomp(struct jail_run *r, const struct jail_step *st)
{
    struct sock_fprog prog = {(unsigned short)(st->len / 8), (struct sock_filter *)st->data};
    int notifies = (st->a[0] & (1 << 3)) && r->mode != JAIL_HERE;
    int leave = notifies && (st->flags & JAIL_SECCOMP_LEAVE);
    if (leave) {
        int next = fcntl(r->sync, F_DUPFD_CLOEXEC, 0);
        if (next < 0)
            return jail_failed(r, 3);
        close(next);
        struct jail_record at = {JAIL_REC_LISTENER_AT, 0, st->layer, 0, 0, (int32_t)next};
        if (write(r->sync, &at, sizeof at) != (ssize_t)sizeof at)
            return jail_failed(r, 1);
    }
    long fd = syscall(SYS_seccomp, 1 /* SET_MODE_FILTER */, (unsigned)st->a[0], &prog);
    if (fd < 0)
        return jail_failed(r, 0);
    if (!notifies || leave)
        return 0;
    struct jail_record rec = {JAIL_REC_LISTENER, 0, st->layer, 0, 0, (int32_t)fd};
    char ack = 0;
    if (write(r->sync, &rec, sizeof rec) != (ssize_t)sizeof rec)
        return jail_failed(r, 1);
    if (read(r->sync, &ack, 1) != 1 || ack != JAIL_REC_TAKEN)
        return jail_errno(EPIPE), jail_failed(r, 2);
    close((int)fd);
    return 0;
}
