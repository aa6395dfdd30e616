/*
 * Making the child and the parent's half of the handshake.
 *
 * Two ways to make the child, chosen by Python (sandbox/launcher.py says why):
 *   JAIL_HOW_CLONE  a raw clone(2) with the plan's namespace flags (and CLONE_PARENT
 *                   for a fork server): the child runs only async-signal-safe code,
 *                   so any caller may use it for exec, and a single-threaded one for
 *                   anything;
 *   JAIL_HOW_FORK   glibc's fork() after unshare(CLONE_NEWPID): its at-fork handlers
 *                   make malloc usable in the child, so a multithreaded caller can
 *                   re-enter Python (or a native entry that allocates).
 * All signals are blocked across the clone, so no parent handler runs in the
 * child before the plan resets the handlers.
 */
#define _GNU_SOURCE
#include "jail.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/time.h>
#include <poll.h>
#include <linux/sched.h> /* struct clone_args, CLONE_CLEAR_SIGHAND */
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SECCOMP_IOCTL_NOTIF_ID_VALID
#define SECCOMP_IOCTL_NOTIF_ID_VALID _IOW('!', 2, uint64_t)
#endif

/* Our own PID namespace, to return to after unshare(CLONE_NEWPID) + fork(); reopened
 * in a forked copy of this process, which may live in another namespace. */
static int own_pidns = -1;
static pid_t own_pidns_owner;

static int pidns_fd(void)
{
    pid_t me = getpid();
    if (own_pidns < 0 || own_pidns_owner != me) {
        if (own_pidns >= 0)
            close(own_pidns);
        own_pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
        own_pidns_owner = me;
    }
    return own_pidns;
}

/* Signals with a handler here: the child sets them back to SIG_DFL. */
static uint64_t handled_signals(void)
{
    uint64_t mask = 0;
    for (int sig = 1; sig <= 64; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) != 0)
            continue; /* glibc's own, or none */
        if ((sa.sa_flags & SA_SIGINFO) || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN))
            mask |= (uint64_t)1 << (sig - 1);
    }
    return mask;
}

/* 0 once clone3 has failed in a way that may mean it is not there: ENOSYS (before 5.3;
 * a container runtime's seccomp profile), EINVAL (5.3 and 5.4: no CLONE_CLEAR_SIGHAND),
 * E2BIG, EPERM (an older runtime's profile).  Then every clone is a clone, which fails
 * the same way if the failure was the clone's own, and asks for the handlers. */
static int clone3_usable = 1;

/* clone3 with CLONE_CLEAR_SIGHAND (Linux 5.5): the kernel sets every handler back to
 * SIG_DFL as it copies them (ignored signals stay ignored), so the parent need not ask
 * for all 64 first, a system call each.  Stack NULL: the child goes on with a copy of
 * our stack, as after fork(). */
static pid_t clone_clearing_handlers(unsigned long flags)
{
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = (flags & ~(unsigned long)CSIGNAL) | CLONE_CLEAR_SIGHAND;
    /* With CLONE_PARENT the child's exit signal is ours to our parent; clone3 wants 0
     * (clone ignored what it was given). */
    args.exit_signal = flags & CLONE_PARENT ? 0 : flags & CSIGNAL;
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0 && (errno == ENOSYS || errno == EINVAL || errno == E2BIG || errno == EPERM))
        clone3_usable = 0;
    return pid;
}

static int has_op(const struct jail_plan *plan, int op)
{
    for (uint32_t i = 0; i < plan->nsteps; i++)
        if (plan->steps[i].op == op)
            return 1;
    return 0;
}

static pid_t fork_into_pidns(uint64_t flags)
{
    if (flags & ~(uint64_t)CLONE_NEWPID) {
        errno = EINVAL; /* other namespaces would be the caller's too */
        return -1;
    }
    int back = -1;
    if (flags & CLONE_NEWPID) {
        back = pidns_fd();
        if (back < 0 || unshare(CLONE_NEWPID) != 0)
            return -1;
    }
    pid_t pid = fork();
    if (pid != 0 && back >= 0 && setns(back, CLONE_NEWPID) != 0) {
        int err = errno; /* our next children would be born in the jail's namespace */
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        errno = err;
        return -1;
    }
    return pid;
}

pid_t jail_clone(struct jail_spawn *s)
{
    const struct jail_plan *plan = s->run.plan;
    sigset_t all, old;
    int signals = has_op(plan, OP_SIGNALS);
    /* The kernel can reset the handlers itself, unless the child returns to Python,
     * whose signal module must be told which ones were reset. */
    int cleared = signals && s->how == JAIL_HOW_CLONE && s->run.mode != JAIL_CALL &&
                  clone3_usable;
    s->run.handled = signals && !cleared ? handled_signals() : 0;
    sigfillset(&all);
    if (s->before_fork)
        s->before_fork();
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid;
    if (s->how == JAIL_HOW_CLONE) {
        unsigned long flags = (unsigned long)plan->clone_flags | SIGCHLD;
        if (s->clone_parent)
            flags |= CLONE_PARENT;
        pid = cleared ? clone_clearing_handlers(flags) : -1;
        if (!cleared || (pid < 0 && !clone3_usable)) {
            if (cleared)
                s->run.handled = handled_signals();
            /* Stack and tid pointers NULL: the child goes on with a copy of our stack,
             * as after fork(). */
            pid = (pid_t)syscall(SYS_clone, flags, NULL, NULL, NULL, NULL);
        }
    } else {
        pid = fork_into_pidns(plan->clone_flags);
    }
    if (pid == 0) {
        s->run.parent_end = s->parent_end;
        jail_child(&s->run); /* returns only for JAIL_CALL */
        if (!has_op(plan, OP_SIGNALS))
            pthread_sigmask(SIG_SETMASK, &old, NULL);
        return 0;
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (s->after_fork_parent)
        s->after_fork_parent();
    /* Only a failure's errno matters.  Not rewritten after a clone that worked: errno
     * lives on a page the clone just shared with the child, and the first write to it
     * costs a fork server a copy-on-write fault per jail. */
    if (pid < 0)
        errno = err;
    return pid;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void set_failure(struct jail_result *res, uint16_t layer, uint16_t sub, int err)
{
    res->failed = 1;
    res->error.layer = layer;
    res->error.step = 0;
    res->error.sub = sub;
    res->error.err = err ? err : EIO;
}

/* setgroups "deny" first: then gid_map may be written, and the jail can never drop
 * a supplementary group to get past a negative group permission. */
static int write_maps(struct jail_spawn *s, pid_t pid, struct jail_result *res)
{
    const char *names[3] = {"setgroups", "gid_map", "uid_map"};
    const char *texts[3] = {"deny", s->gid_map, s->uid_map};
    for (uint16_t i = 0; i < 3; i++) {
        char digits[16], path[64];
        const char *d = pid > 0 ? jail_decimal((uint32_t)pid, digits, sizeof digits) : NULL;
        size_t dn = d == NULL ? 0 : strlen(d), nn = strlen(names[i]);
        if (d == NULL || 6 + dn + 1 + nn + 1 > sizeof path) {
            set_failure(res, JAIL_LAYER_IDMAP, i, EINVAL);
            return -1;
        }
        memcpy(path, "/proc/", 6);
        memcpy(path + 6, d, dn);
        path[6 + dn] = '/';
        memcpy(path + 7 + dn, names[i], nn + 1);
        if (texts[i] == NULL) {
            set_failure(res, JAIL_LAYER_IDMAP, i, EINVAL);
            return -1;
        }
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        size_t n = strlen(texts[i]);
        if (fd < 0 || write(fd, texts[i], n) != (ssize_t)n) {
            set_failure(res, JAIL_LAYER_IDMAP, i, errno);
            if (fd >= 0)
                close(fd);
            return -1;
        }
        close(fd);
    }
    return 0;
}

/* Put the child in its cgroups while it waits for its id maps: everything it will
 * ever run, and every process it forks, is counted there from its first step on. */
static int attach_cgroups(struct jail_spawn *s, pid_t pid, struct jail_result *res)
{
    char digits[16];
    const char *text = pid > 0 ? jail_decimal((uint32_t)pid, digits, sizeof digits) : NULL;
    if (text == NULL) {
        set_failure(res, JAIL_LAYER_CGROUP, 0, EINVAL);
        return -1;
    }
    int n = (int)strlen(text);
    for (int i = 0; i < s->ncgroups; i++) {
        int fd = openat(s->cgroups[i], "cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, text, (size_t)n) != n) {
            set_failure(res, JAIL_LAYER_CGROUP, (uint16_t)i, errno);
            if (fd >= 0)
                close(fd);
            return -1;
        }
        close(fd);
    }
    return 0;
}

/* Copy the child's seccomp listener (fd `theirs` in the child) into this process. */
static int take_listener(pid_t pid, int theirs, struct jail_result *res)
{
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int fd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, theirs, 0);
    int err = errno;
    if (pidfd >= 0)
        close(pidfd);
    if (fd < 0) {
        set_failure(res, JAIL_LAYER_SPAWN, 1, err);
        return -1;
    }
    if (res->listener >= 0)
        close(res->listener);
    res->listener = fd;
    return 0;
}

/* A listener the child left at fd `at` (JAIL_SECCOMP_LEAVE), copied now that it is
 * ready; it must be a seccomp listener (only one answers ID_VALID with ENOENT).  A
 * jail whose entry returned at once may be gone already (its fds are closed before
 * its exit shows on the pidfd): then it has no listener, and nothing to watch. */
static int take_left_listener(struct jail_spawn *s, pid_t pid, int at, struct jail_result *res)
{
    uint64_t none = 0;
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        if (errno == ESRCH)
            return 0; /* exited and reaped (by our caller: CLONE_PARENT) */
        set_failure(res, JAIL_LAYER_SPAWN, 1, errno);
        return -1;
    }
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, at, 0);
    if (fd < 0) {
        int err = errno;
        struct pollfd exited = {pidfd, POLLIN, 0};
        int gone = poll(&exited, 1, 100) == 1;
        close(pidfd);
        if (gone)
            return 0;
        set_failure(res, JAIL_LAYER_SPAWN, 1, err);
        return -1;
    }
    close(pidfd);
    if (res->listener >= 0)
        close(res->listener);
    res->listener = fd;
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &none) == 0 || errno != ENOENT) {
        set_failure(res, JAIL_LAYER_SPAWN, 1, EBADF);
        return -1;
    }
    if (s->on_listener != NULL && s->on_listener(s->listener_ctx, pid, fd) != 0) {
        set_failure(res, JAIL_LAYER_SPAWN, 2, ECANCELED);
        return -1;
    }
    return 0;
}

void jail_handshake(struct jail_spawn *s, pid_t pid, struct jail_result *res)
{
    int fd = s->parent_end, left_at = -1;
    uint64_t deadline = now_ms() + (uint64_t)(s->timeout_ms > 0 ? s->timeout_ms : 0);
    res->pid = pid;
    res->failed = 0;
    res->listener = -1;
    res->ntimes = 0;
    /* Each wait is bounded by the socket's receive timeout (one syscall per message,
     * no poll); the deadline ends the whole handshake. */
    int ms = s->timeout_ms > 0 ? s->timeout_ms : 1;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
        set_failure(res, JAIL_LAYER_SPAWN, 0, errno);
        return;
    }
    for (;;) {
        if (now_ms() >= deadline) {
            set_failure(res, JAIL_LAYER_SPAWN, 0, ETIMEDOUT);
            return;
        }
        union {
            char kind;
            struct jail_record rec;
        } buf;
        /* The child's timings (bench/jail_spawn.py) go straight to the caller's buffer:
         * no 4 kB of them on this stack (see jail_run.times).  The peek is made only when
         * timings were asked for. */
        void *into = &buf;
        size_t cap = sizeof buf;
        char next;
        if (res->times != NULL && recv(fd, &next, 1, MSG_PEEK) == 1 && next == JAIL_REC_TIMES) {
            into = res->times;
            cap = sizeof *res->times;
        }
        ssize_t got = recv(fd, into, cap, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_failure(res, JAIL_LAYER_SPAWN, 0, ETIMEDOUT);
            return;
        }
        if (got < 0 && errno == ECONNRESET)
            got = 0;
        if (got < 0) {
            set_failure(res, JAIL_LAYER_SPAWN, 0, errno);
            return;
        }
        if (got == 0) { /* ready: the child closed its end (or exec'd, or died) */
            if (left_at >= 0)
                (void)take_left_listener(s, pid, left_at, res);
            return;
        }
        switch (into == &buf ? buf.kind : JAIL_REC_TIMES) {
        case JAIL_REC_IDMAP: {
            char mapped = JAIL_REC_MAPPED;
            if (write_maps(s, pid, res) != 0 || attach_cgroups(s, pid, res) != 0)
                return;
            if (send(fd, &mapped, 1, MSG_NOSIGNAL) != 1 && errno != EPIPE) {
                set_failure(res, JAIL_LAYER_SPAWN, 0, errno);
                return;
            }
            break;
        }
        case JAIL_REC_READY:
            if (got != 1 || !s->run.keep_sync) {
                set_failure(res, JAIL_LAYER_SPAWN, 0, EPROTO);
                return;
            }
            if (left_at >= 0)
                (void)take_left_listener(s, pid, left_at, res);
            return; /* ready, the socket kept open for what the child sends next */
        case JAIL_REC_ERROR:
            if (got != (ssize_t)sizeof buf.rec) {
                set_failure(res, JAIL_LAYER_SPAWN, 0, EPROTO);
                return;
            }
            res->failed = 1;
            res->error.layer = buf.rec.layer;
            res->error.step = buf.rec.step;
            res->error.sub = buf.rec.sub;
            res->error.err = buf.rec.err;
            return;
        case JAIL_REC_TIMES: {
            size_t head = offsetof(struct jail_times, ns);
            if (into == &buf || (size_t)got < head ||
                res->times->head.count > JAIL_MAX_STEPS + 1 ||
                (size_t)got != head + 8u * res->times->head.count) {
                set_failure(res, JAIL_LAYER_SPAWN, 0, EPROTO);
                return;
            }
            res->ntimes = res->times->head.count;
            break;
        }
        case JAIL_REC_LISTENER: {
            char taken = JAIL_REC_TAKEN;
            if (got != (ssize_t)sizeof buf.rec) {
                set_failure(res, JAIL_LAYER_SPAWN, 0, EPROTO);
                return;
            }
            if (take_listener(pid, buf.rec.err, res) != 0)
                return;
            if (s->on_listener != NULL &&
                s->on_listener(s->listener_ctx, pid, res->listener) != 0) {
                set_failure(res, JAIL_LAYER_SPAWN, 2, ECANCELED);
                return;
            }
            if (send(fd, &taken, 1, MSG_NOSIGNAL) != 1 && errno != EPIPE) {
                set_failure(res, JAIL_LAYER_SPAWN, 0, errno);
                return;
            }
            break;
        }
        case JAIL_REC_LISTENER_AT:
            if (got != (ssize_t)sizeof buf.rec || buf.rec.err < 0 || left_at >= 0) {
                set_failure(res, JAIL_LAYER_SPAWN, 0, EPROTO);
                return;
            }
            left_at = buf.rec.err;
            break;
        default:
            set_failure(res, JAIL_LAYER_SPAWN, 0, EPROTO);
            return;
        }
    }
}
