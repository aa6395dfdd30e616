/*
 * The fork server's spawn path in C (sandbox/forkserver.py is the Python around it).
 *
 * request.c  the request decoder, the reply encoder, the id-map text (no Python, fuzzed)
 * serve.c    the loop: receive a request and its fds, clone the jail through the
 *            executor, the parent's half (id maps, ready), close the fds, reply;
 *            no Python, and it writes no Python object's memory
 * server.c   the CPython binding (_jail.Server): Python prepares every recipe once
 *            (its plan, its slots, its entry, its id-map templates), then calls
 *            serve(), which returns only for what C does not serve
 *
 * Why in C: every page the server writes after cloning a jail becomes a private copy
 * in that jail (copy-on-write), and the Python loop wrote ~90 pages per spawn.
 *
 * Wire formats (SOCK_SEQPACKET, one message per packet, native byte order: both ends
 * run on one machine, like the plan's):
 *   request  u32 magic "JFSQ", u16 version, u16 kind, u64 id, u32 uid, u16 nfds,
 *            u16 name_len, then the recipe's name (1..64 bytes, no NUL)      24 + name
 *            with exactly nfds fds (SCM_RIGHTS): the jail's fds 0..nfds-1 (spawn),
 *            a memfd with the data (update; uid 0)
 *   reply    u32 magic "JFSR", u16 version, u16 status, u64 id, i32 pid, i32 errno,
 *            u16 layer_len, u16 message_len, u32 flags, then layer and message
 *            status 0: the jail `pid` is ready (no text); 1: it failed (pid 0 when
 *            nothing was cloned), layer and message name why
 *            flags JAIL_REPLY_LISTENER (ready only): exactly one fd comes with the
 *            reply (SCM_RIGHTS), the jail's seccomp notification listener; the
 *            caller holds it before it gives the jail anything to work on
 */
#ifndef SANDBOX_SERVE_H
#define SANDBOX_SERVE_H

#include "jail.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define JAIL_REQ_MAGIC 0x5153464aU   /* "JFSQ" */
#define JAIL_REPLY_MAGIC 0x5253464aU /* "JFSR" */
#define JAIL_SERVE_VERSION 2
#define JAIL_REQ_HEAD 24
#define JAIL_REQ_MAX_NAME 64
#define JAIL_REQ_MAX (JAIL_REQ_HEAD + JAIL_REQ_MAX_NAME)
#define JAIL_REQ_MAX_FDS 16
#define JAIL_REPLY_HEAD 32
#define JAIL_REPLY_MAX 4096
#define JAIL_REPLY_MAX_LAYER 64
#define JAIL_IDMAP_MAX 256  /* a template, and the text made from it */
#define JAIL_IDMAP_HOLE 1   /* the byte of a template that stands for the host id */
#define JAIL_SERVE_MAX_RECIPES 32

enum jail_req_kind { JAIL_REQ_SPAWN = 1, JAIL_REQ_UPDATE = 2 };
enum jail_reply_status { JAIL_REPLY_READY = 0, JAIL_REPLY_FAILED = 1 };
#define JAIL_REPLY_LISTENER 1u /* reply flag: the listener fd comes with it */

struct jail_request {
    uint16_t kind;
    uint64_t id;
    uint32_t uid;
    uint16_t nfds;
    uint16_t name_len;
    const char *name; /* inside the packet, not NUL-terminated */
};

/* Decode and check one request of `len` bytes.  0, or -1 with a reason in `why`;
 * *id_known says whether out->id was read (then the caller can be answered). */
int jail_request_decode(const void *buf, size_t len, struct jail_request *out, int *id_known,
                        char *why, size_t whylen);
/* Encode a reply into out[cap]; its length, or 0 if the texts do not fit, the
 * status is unknown, or the flags are unknown or not a ready reply's. */
size_t jail_reply_encode(unsigned char *out, size_t cap, uint16_t status, uint64_t id, int32_t pid,
                         int32_t err, const char *layer, size_t layer_len, const char *message,
                         size_t message_len, uint32_t flags);
/* A template's text for host id `id` (every JAIL_IDMAP_HOLE byte replaced by its
 * decimal digits), NUL-terminated in out[cap]; its length, or -1 if it does not fit. */
int jail_idmap_render(const char *tmpl, size_t len, uint32_t id, char *out, size_t cap);

/* One recipe the loop serves: everything Python prepared for its spawns. */
struct jail_serve_recipe {
    char name[JAIL_REQ_MAX_NAME];
    uint16_t name_len;
    const struct jail_plan *plan; /* MODE_ENTRY; kept alive by the binding */
    int slots[JAIL_MAX_SLOTS];
    int nslots;
    int (*entry_main)(void *);
    void *entry_arg;
    int maps; /* the plan has an id-map step: the templates below */
    char uid_map[JAIL_IDMAP_MAX], gid_map[JAIL_IDMAP_MAX];
    uint16_t uid_map_len, gid_map_len;
};

struct jail_server {
    int sock;
    int timeout_ms;
    int nrecipes;
    struct jail_serve_recipe recipes[JAIL_SERVE_MAX_RECIPES];
};

/* Why jail_serve returned. */
enum jail_serve_stop {
    JAIL_SERVE_EOF = 1,     /* the caller closed its end (or is gone) */
    JAIL_SERVE_REQUEST,     /* a request it does not serve: out->req, out->fds are the caller's */
    JAIL_SERVE_FAILED,      /* a spawn failed: out->req, out->pid (0: none), out->error */
    JAIL_SERVE_BAD,         /* a malformed request, its fds closed: out->why (out->req.id if known) */
    JAIL_SERVE_INTERRUPTED, /* a signal: run the handlers, then serve again */
    JAIL_SERVE_ERROR,       /* receiving or replying failed: out->err */
};

struct jail_serve_out {
    unsigned char packet[JAIL_REQ_MAX];
    struct jail_request req;
    int id_known;
    int fds[JAIL_REQ_MAX_FDS];
    int nfds;
    pid_t pid;
    struct jail_error error;
    int err;
    char why[128];
};

/* Serve requests on sv->sock until one needs the caller; returns the reason. */
int jail_serve(const struct jail_server *sv, struct jail_serve_out *out);
/* Send one encoded reply, with fd `fd` (SCM_RIGHTS) unless it is -1; 0, or -1 with errno. */
int jail_serve_reply(int sock, const unsigned char *reply, size_t len, int fd);

/* Take every free chunk of malloc's main heap below its top and keep it, so that a
 * jail cloned afterwards allocates past the server's heap: pages it touches are then
 * fresh (zero-filled, contiguous, and malloc_trim gives them back) instead of free
 * chunks among the server's live data (each touched page a copy-on-write copy that
 * stays while the rest of the page is in use).  glibc's malloc; with another (ASan's)
 * its statistics are not the heap's and nothing, or little, is taken.  The bytes taken. */
size_t jail_take_heap_holes(void);

#endif
