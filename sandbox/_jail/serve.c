/*
 * The fork server's loop (serve.h): no Python here, so none runs per spawn, and the
 * only memory written is this loop's stack and what the kernel writes for it.
 *
 * For each request: receive the packet and its fds, decode it, and if it is a spawn
 * of a recipe Python handed over, clone the jail exactly as the executor's spawn()
 * does for a fork server (raw clone, CLONE_PARENT, the recipe's plan, slots and entry),
 * write the id maps when the child asks, wait until it is ready, close the fds, and
 * reply.  Anything else returns to the caller (Python), with what it needs.
 */
#define _GNU_SOURCE
#include "serve.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* JAIL_LAYER_SPAWN sub-steps of a failure before the child exists (plan.py names them). */
#define SUB_SYNC_SOCKET 3 /* plan.py _SPAWN_SUBS; 1 and 2 are spawn.c's */
#define SUB_CLONE 4

static void close_fds(struct jail_serve_out *out)
{
    for (int i = 0; i < out->nfds; i++)
        close(out->fds[i]);
    out->nfds = 0;
}

static int bad(struct jail_serve_out *out, const char *why)
{
    close_fds(out);
    size_t n = strlen(why);
    if (n >= sizeof out->why)
        n = sizeof out->why - 1;
    memcpy(out->why, why, n);
    out->why[n] = 0;
    return JAIL_SERVE_BAD;
}

/* One request and its fds into `out`: 0, or why the loop stops. */
static int receive(const struct jail_server *sv, struct jail_serve_out *out)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * JAIL_REQ_MAX_FDS)];
    } control;
    struct iovec iov = {out->packet, sizeof out->packet};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    out->nfds = 0;
    out->id_known = 0;
    ssize_t n = recvmsg(sv->sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
        if (errno == EINTR)
            return JAIL_SERVE_INTERRUPTED;
        if (errno == ECONNRESET)
            return JAIL_SERVE_EOF;
        out->err = errno;
        return JAIL_SERVE_ERROR;
    }
    /* The fds first: whatever else is wrong, they are ours to close. */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0))
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (out->nfds < JAIL_REQ_MAX_FDS)
                out->fds[out->nfds++] = fd;
            else
                close(fd); /* the control buffer holds no more: cannot happen */
        }
    }
    if (n == 0) {
        close_fds(out);
        return JAIL_SERVE_EOF;
    }
    char why[sizeof out->why];
    int rc = jail_request_decode(out->packet, (size_t)n, &out->req, &out->id_known, why,
                                 sizeof why);
    if (msg.msg_flags & MSG_TRUNC)
        return bad(out, "a request longer than its largest size");
    if (msg.msg_flags & MSG_CTRUNC)
        return bad(out, "more fds than a request may carry");
    if (rc != 0)
        return bad(out, why);
    if (out->req.nfds != out->nfds)
        return bad(out, "the request carries another number of fds than it says");
    return 0;
}

static const struct jail_serve_recipe *find(const struct jail_server *sv,
                                            const struct jail_request *req)
{
    for (int i = 0; i < sv->nrecipes; i++) {
        const struct jail_serve_recipe *rc = &sv->recipes[i];
        if (rc->name_len == req->name_len && memcmp(rc->name, req->name, rc->name_len) == 0)
            return rc;
    }
    return NULL;
}

static int failed(struct jail_serve_out *out, pid_t pid, uint16_t layer, uint16_t sub, int err)
{
    close_fds(out);
    out->pid = pid;
    out->error.layer = layer;
    out->error.step = 0;
    out->error.sub = sub;
    out->error.err = err ? err : EIO;
    return JAIL_SERVE_FAILED;
}

/* The jail of one request: 0 when it is ready and the caller told, else why we stop. */
static int spawn(const struct jail_server *sv, const struct jail_serve_recipe *rc,
                 struct jail_serve_out *out)
{
    char uid_map[JAIL_IDMAP_MAX], gid_map[JAIL_IDMAP_MAX];
    if (rc->maps &&
        (jail_idmap_render(rc->gid_map, rc->gid_map_len, out->req.uid, gid_map, sizeof gid_map) < 0 ||
         jail_idmap_render(rc->uid_map, rc->uid_map_len, out->req.uid, uid_map, sizeof uid_map) < 0))
        return failed(out, 0, JAIL_LAYER_IDMAP, 1, EOVERFLOW);
    struct jail_spawn s;
    memset(&s, 0, sizeof s);
    s.run.plan = rc->plan;
    s.run.mode = JAIL_ENTRY;
    s.run.slots = rc->slots;
    s.run.nslots = rc->nslots;
    s.run.keep = out->fds;
    s.run.nkeep = out->nfds;
    s.run.entry_main = rc->entry_main;
    s.run.entry_arg = rc->entry_arg;
    s.how = JAIL_HOW_CLONE;
    s.clone_parent = 1;
    s.uid_map = rc->maps ? uid_map : NULL;
    s.gid_map = rc->maps ? gid_map : NULL;
    s.timeout_ms = sv->timeout_ms;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        return failed(out, 0, JAIL_LAYER_SPAWN, SUB_SYNC_SOCKET, errno);
    s.parent_end = pair[0];
    s.run.sync = pair[1];
    pid_t pid = jail_clone(&s);
    if (pid == 0)
        _exit(127); /* not reached: an entry's child never returns from jail_clone */
    int err = errno;
    close(pair[1]);
    if (pid < 0) {
        close(pair[0]);
        return failed(out, 0, JAIL_LAYER_SPAWN, SUB_CLONE, err);
    }
    struct jail_result res;
    memset(&res, 0, sizeof res);
    res.listener = -1; /* and no timings: res.times NULL */
    jail_handshake(&s, pid, &res);
    close(pair[0]);
    if (res.failed) {
        if (res.listener >= 0)
            close(res.listener);
        failed(out, pid, res.error.layer, res.error.sub, res.error.err);
        out->error.step = res.error.step;
        return JAIL_SERVE_FAILED;
    }
    close_fds(out);
    unsigned char reply[JAIL_REPLY_HEAD];
    /* The listener goes to the caller with the reply, which it reads before it gives
     * the jail any work: it holds it before the jail could make a forbidden call. */
    size_t len = jail_reply_encode(reply, sizeof reply, JAIL_REPLY_READY, out->req.id, pid, 0,
                                   NULL, 0, NULL, 0, res.listener >= 0 ? JAIL_REPLY_LISTENER : 0);
    int sent = jail_serve_reply(sv->sock, reply, len, res.listener);
    if (res.listener >= 0)
        close(res.listener);
    if (sent != 0) {
        if (errno == EPIPE || errno == ECONNRESET)
            return JAIL_SERVE_EOF; /* the caller is gone; its jail dies with it */
        out->err = errno;
        return JAIL_SERVE_ERROR;
    }
    return 0;
}

int jail_serve(const struct jail_server *sv, struct jail_serve_out *out)
{
    for (;;) {
        int stop = receive(sv, out);
        if (stop != 0)
            return stop;
        const struct jail_serve_recipe *rc = find(sv, &out->req);
        if (out->req.kind != JAIL_REQ_SPAWN || rc == NULL)
            return JAIL_SERVE_REQUEST;
        stop = spawn(sv, rc, out);
        if (stop != 0)
            return stop;
    }
}

int jail_serve_reply(int sock, const unsigned char *reply, size_t len, int fd)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct iovec iov = {(void *)reply, len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n == (ssize_t)len)
            return 0;
        if (n >= 0) {
            errno = EMSGSIZE;
            return -1;
        }
        if (errno != EINTR)
            return -1;
    }
}

static void *holes; /* the chunks jail_take_heap_holes took, linked through their first word */

size_t jail_take_heap_holes(void)
{
    struct mallinfo2 mi = mallinfo2();
    char *end = sbrk(0);
    if (mi.arena == 0 || mi.fordblks <= mi.keepcost || end == (char *)-1 ||
        mi.keepcost > (uintptr_t)end)
        return 0;
    uintptr_t top = (uintptr_t)end - mi.keepcost; /* the top chunk: past the last chunk */
    size_t budget = mi.fordblks - mi.keepcost, taken = 0;
    /* Large first, so that a large hole is taken whole rather than in slivers. */
    for (size_t n = (size_t)1 << 16; n >= 16 && taken < budget; n /= 2) {
        while (taken < budget) {
            void **p = malloc(n);
            if (p == NULL)
                return taken;
            if ((uintptr_t)p >= top) { /* from the top: no hole of this size is left */
                free(p);
                break;
            }
            *p = holes;
            holes = p;
            taken += n;
        }
    }
    return taken;
}
