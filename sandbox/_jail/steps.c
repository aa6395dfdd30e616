/*
 * Applying a jail plan, one step at a time: the code a fresh child runs between
 * the clone and its entry point.
 *
 * Async-signal-safe throughout: the child may be a raw clone of a multithreaded
 * process (whose other threads may have held malloc's or stdio's locks), so it
 * only makes system calls on data the parent prepared.  No malloc, no stdio, no
 * Python.  Credentials change through raw syscalls: glibc's setresuid() would try
 * to signal threads that exist only in the parent.
 */
#define _GNU_SOURCE
#include "jail.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define LAYER_FAILED 125 /* exit status of a child whose jail could not be built */
#define EXEC_FAILED 127

/* A failed system call: remember which one (sub) and errno. */
int jail_failed(struct jail_run *r, uint16_t sub)
{
    r->error.sub = sub;
    r->error.err = errno ? errno : EIO;
    return -1;
}

int jail_errno(int err)
{
    errno = err;
    return -1;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* "/proc/self/fd/N" (jail_decimal: no snprintf in the child). */
static void fd_path(char out[32], int fd)
{
    static const char prefix[] = "/proc/self/fd/";
    char digits[12];
    const char *d = jail_decimal((uint32_t)fd, digits, sizeof digits);
    size_t n = strlen(d);
    memcpy(out, prefix, sizeof prefix - 1);
    memcpy(out + sizeof prefix - 1, d, n + 1);
}

/* mkdir that accepts an existing directory (EEXIST, or EROFS inside a read-only bind). */
static int mkdir_ok(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0)
        return 0;
    int err = errno;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    return jail_errno(err);
}

static int do_signals(struct jail_run *r, const struct jail_step *st)
{
    uint64_t reset = r->handled | (uint64_t)st->a[0];
    r->reset = reset;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig <= 64; sig++) {
        if (!(reset >> (sig - 1) & 1) || sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sig >= 32 && sig < SIGRTMIN)
            continue; /* glibc's own (thread cancellation, setxid) */
        if (sigaction(sig, &dfl, NULL) != 0)
            return jail_failed(r, (uint16_t)sig);
    }
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0)
        return jail_failed(r, 0);
    return 0;
}

static int do_loopback(struct jail_run *r)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return jail_failed(r, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
        if (rc != 0)
            jail_failed(r, 2);
    } else {
        jail_failed(r, 1);
    }
    int saved = errno;
    close(s);
    errno = saved;
    return rc == 0 ? 0 : -1;
}

static int do_bind(struct jail_run *r, const struct jail_step *st)
{
    int fd = r->binds[st->a[0]];
    struct stat src, dst;
    if (fd < 0)
        return jail_errno(EBADF), jail_failed(r, 0);
    if (fstat(fd, &src) != 0)
        return jail_failed(r, 0);
    const char *target = st->s[0];
    if (S_ISDIR(src.st_mode)) {
        if (mkdir_ok(target, 0755) != 0)
            return jail_failed(r, 1);
    } else if (stat(target, &dst) != 0) {
        int made = open(target, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0444);
        if (made < 0)
            return jail_failed(r, 1);
        close(made);
    }
    char source[32];
    fd_path(source, fd);
    if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) != 0)
        return jail_failed(r, 2);
    if (mount(NULL, target, NULL, (unsigned long)st->a[1], NULL) != 0)
        return jail_failed(r, 3);
    close(fd);
    r->binds[st->a[0]] = -1;
    return 0;
}

static int do_idmap_sync(struct jail_run *r)
{
    char c = JAIL_REC_IDMAP;
    if (r->mode == JAIL_HERE || r->sync < 0)
        return jail_errno(EINVAL), jail_failed(r, 0);
    if (write(r->sync, &c, 1) != 1)
        return jail_failed(r, 0);
    ssize_t n = read(r->sync, &c, 1);
    if (n != 1 || c != JAIL_REC_MAPPED)
        return jail_errno(n < 0 ? errno : EPIPE), jail_failed(r, 1);
    return 0;
}

static int step(struct jail_run *r, const struct jail_step *st)
{
    const char *const *s = st->s;
    switch (st->op) {
    case OP_SIGNALS:
        return do_signals(r, st);
    case OP_UNSHARE:
        return unshare((int)st->a[0]) == 0 ? 0 : jail_failed(r, 0);
    case OP_SETNS_SLOT:
        if (st->a[0] >= r->nslots)
            return jail_errno(EBADF), jail_failed(r, 0);
        return setns(r->slots[st->a[0]], (int)st->a[1]) == 0 ? 0 : jail_failed(r, 0);
    case OP_SETNS_PATH: {
        int fd = open(s[0], O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return jail_failed(r, 0);
        int rc = setns(fd, (int)st->a[1]) == 0 ? 0 : jail_failed(r, 1);
        close(fd);
        return rc;
    }
    case OP_LOOPBACK_UP:
        return do_loopback(r);
    case OP_MOUNT:
        return mount(st->a[1] & 1 ? s[1] : NULL, s[0], st->a[1] & 2 ? s[2] : NULL,
                     (unsigned long)st->a[0], st->a[1] & 4 ? s[3] : NULL) == 0
                   ? 0 : jail_failed(r, 0);
    case OP_MKDIR:
        return mkdir_ok(s[0], (mode_t)st->a[0]) == 0 ? 0 : jail_failed(r, 0);
    case OP_OPEN_BIND:
        r->binds[st->a[0]] = open(s[0], O_PATH | O_CLOEXEC);
        return r->binds[st->a[0]] >= 0 ? 0 : jail_failed(r, 0);
    case OP_BIND:
        return do_bind(r, st);
    case OP_CHDIR:
        return chdir(s[0]) == 0 ? 0 : jail_failed(r, 0);
    case OP_PIVOT_ROOT:
        return syscall(SYS_pivot_root, s[0], s[1]) == 0 ? 0 : jail_failed(r, 0);
    case OP_UMOUNT:
        return umount2(s[0], (int)st->a[0]) == 0 ? 0 : jail_failed(r, 0);
    case OP_SETHOSTNAME:
        return sethostname(s[0], strlen(s[0])) == 0 ? 0 : jail_failed(r, 0);
    case OP_IDMAP_SYNC:
        return do_idmap_sync(r);
    case OP_SETRESGID:
        return syscall(SYS_setresgid, (gid_t)st->a[0], (gid_t)st->a[0], (gid_t)st->a[0]) == 0
                   ? 0 : jail_failed(r, 0);
    case OP_SETRESUID:
        return syscall(SYS_setresuid, (uid_t)st->a[0], (uid_t)st->a[0], (uid_t)st->a[0]) == 0
                   ? 0 : jail_failed(r, 0);
    case OP_FDS:
        return jail_fds(r);
    case OP_CAPS:
        return jail_caps(r, st);
    case OP_PRCTL:
        return prctl((int)st->a[0], (unsigned long)st->a[1], 0, 0, 0) == 0 ? 0 : jail_failed(r, 0);
    case OP_LANDLOCK:
        return jail_landlock(r, st);
    case OP_RLIMIT:
        return jail_rlimit(r, st);
    case OP_PARENT_CHECK: {
        struct pollfd p = {r->sync, POLLIN, 0};
        if (r->sync < 0)
            return 0;
        int n = poll(&p, 1, 0);
        if (n < 0)
            return jail_failed(r, 0);
        return n == 0 ? 0 : (jail_errno(EPIPE), jail_failed(r, 0));
    }
    case OP_SECCOMP:
        return jail_seccomp(r, st);
    case OP_SYMLINK:
        return symlink(s[0], s[1]) == 0 ? 0 : jail_failed(r, 0);
    case OP_FORK_DUTIES:
        if (r->mode == JAIL_CALL && r->fork_duties != NULL)
            r->fork_duties(r->reset);
        return 0;
    default:
        return jail_errno(EINVAL), jail_failed(r, 0);
    }
}

int jail_apply(struct jail_run *r)
{
    const struct jail_plan *plan = r->plan;
    for (int i = 0; i < JAIL_MAX_BINDS; i++)
        r->binds[i] = -1;
    for (uint32_t i = 0; i < plan->nsteps; i++) {
        const struct jail_step *st = &plan->steps[i];
        errno = 0;
        if (step(r, st) != 0) {
            r->error.layer = st->layer;
            r->error.step = (uint16_t)i;
            return -1;
        }
        if (r->timings)
            r->times->ns[i + 1] = thread_cpu_ns();
    }
    return 0;
}

static void report(struct jail_run *r)
{
    struct jail_record rec = {JAIL_REC_ERROR, 0, r->error.layer, r->error.step, r->error.sub,
                              r->error.err};
    if (r->sync >= 0)
        (void)!write(r->sync, &rec, sizeof rec);
}

/* Like execvpe over the candidates the parent built from PATH: go on past a
 * missing file or directory; report the first other error, else the last. */
static void exec_candidates(struct jail_run *r)
{
    int saved = 0, last = ENOENT;
    for (int i = 0; i < r->npaths; i++) {
        execve(r->paths[i], r->argv, r->envp);
        last = errno;
        if (last != ENOENT && last != ENOTDIR && saved == 0)
            saved = last;
    }
    r->error.layer = JAIL_LAYER_EXEC;
    r->error.step = 0;
    r->error.sub = 0;
    r->error.err = saved ? saved : last;
}

int jail_child(struct jail_run *r)
{
    if (r->parent_end >= 0)
        close(r->parent_end);
    if (r->timings)
        r->times->ns[0] = thread_cpu_ns();
    if (jail_apply(r) != 0) {
        report(r);
        _exit(LAYER_FAILED);
    }
    if (r->timings && r->sync >= 0) { /* write: what every profile allows the jail */
        struct jail_times *times = r->times;
        memset(&times->head, 0, sizeof times->head);
        times->head.kind = JAIL_REC_TIMES;
        times->head.count = r->plan->nsteps + 1;
        (void)!write(r->sync, times, offsetof(struct jail_times, ns) + 8 * times->head.count);
    }
    switch (r->mode) {
    case JAIL_EXEC:
        exec_candidates(r); /* the sync fd is close-on-exec: EOF says the exec worked */
        report(r);
        _exit(EXEC_FAILED);
    case JAIL_ENTRY:
        if (r->sync >= 0)
            close(r->sync);
        _exit(r->entry_main(r->entry_arg) & 0xff);
    default:
        if (r->keep_sync && r->sync >= 0) {
            /* Ready, and the socket stays open: the result goes back on it. */
            char ready = JAIL_REC_READY;
            (void)!write(r->sync, &ready, 1);
        } else if (r->sync >= 0) {
            close(r->sync);
        }
        return 0;
    }
}
