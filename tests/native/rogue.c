/* Rogue titus workers, for the tests: attacker code in a real worker jail.
 *
 * A real zygote (tests/native/__init__.py's setup) builds the real worker table and
 * wraps its entry point in this one, so every worker is cloned into the real jail
 * (policies/titus-worker.toml, all of it) and runs C only, as a real worker does.
 * It reads the Connection message itself, then looks at what the client sent first:
 *   "PLAN n\n"          sends the test's scripted control packets number n on fd 0,
 *                       then waits, never reporting (tests/fuzz/test_control_fuzz.py);
 *   "ATTACK name\n"     answers "ready\n", reads "go ARGS\n", runs payload `name` and
 *                       writes its result to the client as one JSON line, then reports
 *                       Finished(ok) (tests/security/test_worker_attacks.py,
 *                       tests/faults/test_titus_faults.py);
 *   anything else       (a TLS ClientHello) is served by the real worker.
 * ARGS are space-separated tokens: integers in decimal, strings in hex.  This module
 * is never part of titus: the tests build it (gcc, the project's hardened flags).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../sandbox/jail_entry.h"
#include "wk_entry.h"

#define MAX_PLAN_BYTES (1 << 20)

struct rogue {
    struct wk_entry self;           /* what _worker.run calls (a forked test child) */
    struct sandbox_jail_entry jail; /* what the executor calls in the jail */
    const struct wk_entry *honest; /* the real worker */
    int plan_wait_ms;
    int n_scripts;
    int *script_len;              /* packets per script */
    unsigned char ***packets;     /* [script][packet] */
    size_t **packet_len;
};

static int cfd = -1; /* the client, fd 3 in the jail */

/* ------------------------------------------------------------------ small helpers */

static void put(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = send(cfd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static const char *errname(int e)
{
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case EISCONN: return "EISCONN";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case EBADF: return "EBADF";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EAGAIN: return "EAGAIN";
    case ENOSYS: return "ENOSYS";
    case EMFILE: return "EMFILE";
    case ESRCH: return "ESRCH";
    default: return "E?";
    }
}

static void report_error(int e)
{
    char line[64];
    snprintf(line, sizeof line, "{\"error\": \"%s\"}\n", errname(e));
    put(line);
}

static void report_str(const char *s)
{
    char line[128];
    snprintf(line, sizeof line, "\"%s\"\n", s);
    put(line);
}

/* Read one line from the client (consuming it), at most cap-1 bytes, NUL-terminated. */
static int read_line(char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = recv(cfd, buf + n, 1, 0);
        if (r <= 0)
            return -1;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return (int)n;
}

static long tok_int(char **p)
{
    char *end;
    long v = strtol(*p, &end, 10);
    *p = end;
    return v;
}

/* A hex token into out (NUL-terminated as well); its length. */
static size_t tok_hex(char **p, unsigned char *out, size_t cap)
{
    while (**p == ' ')
        (*p)++;
    size_t n = 0;
    while (isxdigit((unsigned char)(*p)[0]) && isxdigit((unsigned char)(*p)[1]) && n + 1 < cap) {
        unsigned v;
        sscanf(*p, "%2x", &v);
        out[n++] = (unsigned char)v;
        *p += 2;
    }
    out[n] = '\0';
    return n;
}

static struct sockaddr_in inet(const char *host, long port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    return a;
}

/* ------------------------------------------------------------------ payloads */

static void read_file(char *args)
{
    unsigned char path[512];
    tok_hex(&args, path, sizeof path);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    if (fd < 0)
        return report_error(errno);
    unsigned char data[64];
    ssize_t n = read(fd, data, sizeof data);
    char line[256] = "{\"read\": \"";
    for (ssize_t i = 0; i < n; i++)
        snprintf(line + strlen(line), 3, "%02x", data[i]);
    strcat(line, "\"}\n");
    put(line);
}

static void list_processes(char *args)
{
    (void)args;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc", O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return report_error(errno);
    report_str("listed");
}

/* ARGS host port as an address. */
static struct sockaddr_in addr_arg(char *args)
{
    unsigned char host[64];
    tok_hex(&args, host, sizeof host);
    return inet((char *)host, tok_int(&args));
}

/* ARGS host port: a new AF_INET socket of `type` and the address; -1 (reported) on error. */
static int inet_socket(char *args, int type, struct sockaddr_in *a)
{
    *a = addr_arg(args);
    int s = (int)syscall(SYS_socket, AF_INET, type, 0);
    if (s < 0)
        report_error(errno);
    return s;
}

static void tcp_connect(char *args)
{
    struct sockaddr_in a;
    int s = inet_socket(args, SOCK_STREAM, &a);
    if (s < 0)
        return;
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        return report_error(errno);
    report_str("connected");
}

static void udp_send(char *args)
{
    struct sockaddr_in a;
    int s = inet_socket(args, SOCK_DGRAM, &a);
    if (s < 0)
        return;
    if (sendto(s, "escaped", 7, 0, (struct sockaddr *)&a, sizeof a) < 0)
        return report_error(errno);
    report_str("sent");
}

static void make_socketpair(char *args)
{
    (void)args;
    int sv[2];
    if (syscall(SYS_socketpair, AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return report_error(errno);
    report_str("made");
}

static void connect_held_socket(char *args)
{
    struct sockaddr_in a = addr_arg(args);
    if (syscall(SYS_connect, cfd, &a, sizeof a) < 0)
        return report_error(errno);
    report_str("connected");
}

static void sendto_held_socket(char *args)
{
    struct sockaddr_in a = addr_arg(args);
    ssize_t n = sendto(cfd, "escaped?", 8, MSG_NOSIGNAL, (struct sockaddr *)&a, sizeof a);
    if (n < 0)
        return report_error(errno);
    char line[64];
    snprintf(line, sizeof line, "{\"sent\": %zd}\n", n);
    put(line);
}

static void set_socket_option(char *args)
{
    long level = tok_int(&args), option = tok_int(&args);
    int value = 1 << 20;
    if (syscall(SYS_setsockopt, cfd, level, option, &value, sizeof value) < 0)
        return report_error(errno);
    report_str("option set");
}

static void unix_connect(char *args)
{
    unsigned char name[108];
    size_t n = tok_hex(&args, name, sizeof name);
    int s = (int)syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    if (s < 0)
        return report_error(errno);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, name, n);
    if (connect(s, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
        return report_error(errno);
    report_str("connected");
}

static void send_signal(char *args)
{
    long pid = tok_int(&args), sig = tok_int(&args);
    if (syscall(SYS_kill, pid, sig) < 0)
        return report_error(errno);
    report_str("signalled");
}

static void ptrace_attach(char *args)
{
    long pid = tok_int(&args);
    if (syscall(SYS_ptrace, PTRACE_ATTACH, pid, NULL, NULL) < 0)
        return report_error(errno);
    report_str("ptrace succeeded");
}

static void read_memory(char *args)
{
    long pid = tok_int(&args);
    char buf[4096];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    long n = syscall(SYS_process_vm_readv, pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return report_error(errno);
    char line[64];
    snprintf(line, sizeof line, "{\"read\": %ld}\n", n);
    put(line);
}

/* ARGS count: fork `count` times (bounded: it must die at the first fork anyway). */
static void forks(char *args)
{
    long count = tok_int(&args);
    for (long i = 0; i < count && i < 64; i++) {
        long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (pid == 0)
            _exit(0);
        if (pid < 0)
            return report_error(errno);
    }
    report_str("forked");
}

static void clone3(char *args)
{
    (void)args;
    if (syscall(435, NULL, 0) < 0) /* __NR_clone3, on every arch */
        return report_error(errno);
    report_str("clone3 succeeded");
}

static void execute(char *args)
{
    unsigned char path[256];
    tok_hex(&args, path, sizeof path);
    char *argv[] = {(char *)path, "-c", "true", NULL}, *envp[] = {NULL};
    syscall(SYS_execve, path, argv, envp);
    report_error(errno);
}

static void unshare_user(char *args)
{
    (void)args;
    if (syscall(SYS_unshare, CLONE_NEWUSER) < 0)
        return report_error(errno);
    report_str("unshare succeeded");
}

static void setns_net(char *args)
{
    (void)args;
    if (syscall(SYS_setns, 0, CLONE_NEWNET) < 0)
        return report_error(errno);
    report_str("setns succeeded");
}

static void mount_tmpfs(char *args)
{
    (void)args;
    if (syscall(SYS_mount, "none", "/", "tmpfs", 0, NULL) < 0)
        return report_error(errno);
    report_str("mount succeeded");
}

static void raise_rlimit(char *args)
{
    (void)args;
    struct rlimit lim;
    if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &lim) < 0)
        return report_error(errno);
    lim.rlim_cur = lim.rlim_max = lim.rlim_max + 1;
    if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &lim, NULL) < 0)
        return report_error(errno);
    report_str("raised");
}

static void exec_memory(char *args)
{
    (void)args;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return report_error(errno);
    report_str("mapped");
}

static void mprotect_exec(char *args)
{
    (void)args;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p, 4096, PROT_READ | PROT_WRITE | PROT_EXEC) < 0)
        return report_error(errno);
    report_str("protected");
}

static void write_root(char *args)
{
    (void)args;
    if (syscall(SYS_mkdirat, AT_FDCWD, "/evil", 0700) < 0)
        return report_error(errno);
    report_str("written");
}

static void do_chroot(char *args)
{
    (void)args;
    if (syscall(SYS_chroot, "/") < 0)
        return report_error(errno);
    report_str("chrooted");
}

static void memory_bomb(char *args)
{
    long limit = tok_int(&args), mib = 0, wait_ms = tok_int(&args);
    int capped = 0;
    while (mib < limit) {
        char *p = mmap(NULL, 16 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            capped = 1;
            break;
        }
        p[0] = 1;
        mib += 16;
    }
    char line[96];
    snprintf(line, sizeof line, "{\"allocated_mib\": %ld, \"capped\": %s}\n", mib,
             capped ? "true" : "false");
    put(line);
    poll(NULL, 0, (int)wait_ms); /* sit on it: the supervisor must end us */
    report_str("still alive");
}

static const char *status_name(int s)
{
    static const char *names[] = {"OK", "REFUSED_SHAPE", "REFUSED_BUDGET", "REFUSED_KEY", "ERROR"};
    return s >= 0 && s <= 4 ? names[s] : "?";
}

/* send(), or sendmsg() with SCM_RIGHTS when there are fds to pass (the worker policy
 * has no sendmsg: a payload that passes fds is killed there). */
static int send_with_fds(int sock, const void *data, size_t len, const int *fds, int nfds)
{
    if (nfds == 0)
        return (int)send(sock, data, len, MSG_NOSIGNAL);
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * 8)];
    } cm;
    struct iovec iov = {(void *)data, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        msg.msg_control = &cm;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(h), fds, sizeof(int) * (size_t)nfds);
    }
    return (int)sendmsg(sock, &msg, MSG_NOSIGNAL);
}

/* ARGS: count, then count x (op key payload-hex), then nfds, then the fds. */
static void ask_keyholder(char *args)
{
    long count = tok_int(&args);
    long ops[8], keys[8];
    static unsigned char payloads[8][2048];
    size_t lens[8];
    for (long i = 0; i < count && i < 8; i++) {
        ops[i] = tok_int(&args);
        keys[i] = tok_int(&args);
        lens[i] = tok_hex(&args, payloads[i], sizeof payloads[i]);
    }
    int fds[8], nfds = (int)tok_int(&args);
    for (int i = 0; i < nfds && i < 8; i++)
        fds[i] = (int)tok_int(&args);
    char out[8192] = "[";
    for (long i = 0; i < count && i < 8; i++) {
        unsigned char frame[2100];
        size_t n = lens[i];
        frame[0] = 1;
        frame[1] = (unsigned char)ops[i];
        frame[2] = (unsigned char)(keys[i] >> 8);
        frame[3] = (unsigned char)keys[i];
        uint32_t id = (uint32_t)(i + 1), len32 = (uint32_t)n;
        for (int b = 0; b < 4; b++) {
            frame[4 + b] = (unsigned char)(id >> (24 - 8 * b));
            frame[8 + b] = (unsigned char)(len32 >> (24 - 8 * b));
        }
        memcpy(frame + 12, payloads[i], n);
        if (i > 0)
            strcat(out, ", ");
        if (send_with_fds(1, frame, 12 + n, fds, nfds) < 0) {
            strcat(out, "\"closed\"");
            break;
        }
        struct pollfd p = {.fd = 1, .events = POLLIN};
        if (poll(&p, 1, 2000) <= 0) {
            strcat(out, "\"no answer\"");
            break;
        }
        unsigned char resp[2100];
        ssize_t r = recv(1, resp, sizeof resp, 0);
        if (r <= 0) {
            strcat(out, "\"closed\"");
            break;
        }
        if (r < 10) {
            strcat(out, "\"malformed\"");
            break;
        }
        strcat(out, "{\"status\": \"");
        strcat(out, status_name(resp[1]));
        strcat(out, "\", \"payload\": \"");
        for (ssize_t k = 10; k < r && strlen(out) + 8 < sizeof out; k++)
            snprintf(out + strlen(out), 3, "%02x", resp[k]);
        strcat(out, "\"}");
    }
    strcat(out, "]\n");
    put(out);
}

/* ARGS: vhost, nfds, the fds: a forged HandshakeDone on the control socket. */
static void forge_handshake(char *args)
{
    long vhost = tok_int(&args);
    int fds[8], nfds = (int)tok_int(&args);
    for (int i = 0; i < nfds && i < 8; i++)
        fds[i] = (int)tok_int(&args);
    unsigned char msg[64] = {0x81, (unsigned char)(vhost >> 8), (unsigned char)vhost,
                             0, 0, 0x03, 0xe8, 0 /* flags */, 7};
    size_t n = 9;
    memcpy(msg + n, "TLSv1.3", 7);
    n += 7;
    msg[n++] = 22;
    memcpy(msg + n, "TLS_AES_128_GCM_SHA256", 22);
    n += 22;
    send_with_fds(0, msg, n, fds, nfds);
    unsigned char reply[2048];
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * 4)];
    } cm;
    struct iovec iov = {reply, sizeof reply};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm,
                       .msg_controllen = sizeof cm};
    ssize_t r = recvmsg(0, &m, 0);
    int got = 0;
    for (struct cmsghdr *h = r >= 0 ? CMSG_FIRSTHDR(&m) : NULL; h; h = CMSG_NXTHDR(&m, h))
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (h->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
                close(fd);
                got++;
            }
    const char *name = r <= 0 ? "None" : reply[0] == 0x02 ? "BackendReady"
                     : reply[0] == 0x03 ? "BackendFailed" : "?";
    char line[96];
    snprintf(line, sizeof line, "{\"reply\": \"%s\", \"fds\": %d}\n", name, got);
    put(line);
}

static const struct {
    const char *name;
    void (*run)(char *args);
} payloads[] = {
    {"read_file", read_file}, {"list_processes", list_processes}, {"tcp_connect", tcp_connect},
    {"udp_send", udp_send}, {"make_socketpair", make_socketpair},
    {"connect_held_socket", connect_held_socket}, {"sendto_held_socket", sendto_held_socket},
    {"set_socket_option", set_socket_option},
    {"unix_connect", unix_connect}, {"send_signal", send_signal},
    {"ptrace_attach", ptrace_attach}, {"read_memory", read_memory}, {"forks", forks},
    {"clone3", clone3}, {"execute", execute},
    {"unshare_user", unshare_user}, {"setns_net", setns_net}, {"mount_tmpfs", mount_tmpfs},
    {"chroot", do_chroot}, {"memory_bomb", memory_bomb}, {"raise_rlimit", raise_rlimit},
    {"exec_memory", exec_memory}, {"mprotect_exec", mprotect_exec}, {"write_root", write_root}, {"ask_keyholder", ask_keyholder},
    {"forge_handshake", forge_handshake},
};

/* ------------------------------------------------------------------ the entry */

static void finished_ok(void)
{
    unsigned char fin[29] = {0x82, 0, 0xff, 0xff}; /* ok, no vhost, zero counts, no strings */
    send(0, fin, sizeof fin, MSG_NOSIGNAL);
}

static void play(const struct rogue *r, long n)
{
    if (n >= 0 && n < r->n_scripts)
        for (int i = 0; i < r->script_len[n]; i++)
            if (send(0, r->packets[n][i], r->packet_len[n][i], MSG_NOSIGNAL) < 0)
                break;
    /* never report: the outcome is what the supervisor made of the script */
    struct pollfd p = {.fd = 0, .events = POLLIN};
    unsigned char junk[4096];
    while (poll(&p, 1, r->plan_wait_ms) > 0 && recv(0, junk, sizeof junk, 0) > 0) {
    }
}

static int rogue_main(void *arg)
{
    const struct rogue *r = arg;
    unsigned char packet[4096];
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov = {packet, sizeof packet};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm,
                         .msg_controllen = sizeof cm};
    ssize_t n = recvmsg(0, &msg, 0);
    struct cmsghdr *h = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
    if (h == NULL || h->cmsg_type != SCM_RIGHTS)
        _exit(0);
    memcpy(&cfd, CMSG_DATA(h), sizeof cfd);

    char first[256] = "";
    struct pollfd p = {.fd = cfd, .events = POLLIN};
    ssize_t got = 0;
    for (int tries = 0; tries < 100 && poll(&p, 1, 2000) > 0; tries++) {
        got = recv(cfd, first, sizeof first - 1, MSG_PEEK);
        if (got <= 0 || first[0] == 0x16 || memchr(first, '\n', (size_t)got) != NULL ||
            got == (ssize_t)sizeof first - 1)
            break;
        poll(NULL, 0, 10);
    }
    if (got > 5 && memcmp(first, "PLAN ", 5) == 0) {
        char line[64];
        read_line(line, sizeof line);
        play(r, strtol(line + 5, NULL, 10));
        _exit(0);
    }
    if (got > 7 && memcmp(first, "ATTACK ", 7) == 0) {
        char line[64];
        static char go[16384];
        read_line(line, sizeof line);
        put("ready\n");
        if (read_line(go, sizeof go) < 2 || memcmp(go, "go", 2) != 0)
            _exit(0);
        for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++)
            if (strcmp(line + 7, payloads[i].name) == 0) {
                payloads[i].run(go + 2);
                finished_ok();
                _exit(0);
            }
        report_str("no such payload");
        _exit(0);
    }
    r->honest->serve(r->honest->arg, packet, (size_t)n, cfd);
    _exit(0);
}

static void rogue_main_void(void *arg) { rogue_main(arg); }

/* ------------------------------------------------------------------ Python */

static PyObject *py_entry(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *capsule, *plans;
    int wait_ms;
    if (!PyArg_ParseTuple(args, "OO!i", &capsule, &PyList_Type, &plans, &wait_ms))
        return NULL;
    const struct wk_entry *honest = PyCapsule_GetPointer(capsule, WK_ENTRY_CAPSULE);
    if (honest == NULL)
        return NULL;
    /* Lives as long as the zygote: every clone reads it. */
    struct rogue *r = calloc(1, sizeof *r);
    Py_ssize_t ns = PyList_GET_SIZE(plans);
    r->n_scripts = (int)ns;
    r->script_len = calloc((size_t)ns + 1, sizeof *r->script_len);
    r->packets = calloc((size_t)ns + 1, sizeof *r->packets);
    r->packet_len = calloc((size_t)ns + 1, sizeof *r->packet_len);
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *script = PyList_GET_ITEM(plans, i);
        if (!PyList_Check(script))
            return PyErr_Format(PyExc_TypeError, "a plan is a list of lists of bytes");
        Py_ssize_t np = PyList_GET_SIZE(script);
        r->script_len[i] = (int)np;
        r->packets[i] = calloc((size_t)np + 1, sizeof **r->packets);
        r->packet_len[i] = calloc((size_t)np + 1, sizeof **r->packet_len);
        for (Py_ssize_t k = 0; k < np; k++) {
            char *data;
            Py_ssize_t len;
            if (PyBytes_AsStringAndSize(PyList_GET_ITEM(script, k), &data, &len) < 0 ||
                len > MAX_PLAN_BYTES)
                return NULL;
            r->packets[i][k] = malloc((size_t)len + 1);
            memcpy(r->packets[i][k], data, (size_t)len);
            r->packet_len[i][k] = (size_t)len;
        }
    }
    r->honest = honest;
    r->plan_wait_ms = wait_ms;
    r->self.main = rogue_main_void;
    r->self.arg = r;
    r->self.serve = NULL;
    r->jail.main = rogue_main;
    r->jail.arg = r;
    PyObject *mine = PyCapsule_New(&r->self, WK_ENTRY_CAPSULE, NULL);
    PyObject *jail = PyCapsule_New(&r->jail, SANDBOX_JAIL_ENTRY_CAPSULE, NULL);
    PyObject *out = mine && jail ? PyTuple_Pack(2, mine, jail) : NULL;
    Py_XDECREF(mine);
    Py_XDECREF(jail);
    return out;
}

static PyMethodDef methods[] = {
    {"entry", py_entry, METH_VARARGS,
     "entry(worker_entry, plans, plan_wait_ms) -> (entry for _worker.run, the executor's)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rogue", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rogue(void) { return PyModule_Create(&module); }
