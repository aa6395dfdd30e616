/*
 * The jail executor's internals: the plan as C sees it, the per-spawn context,
 * the records the child sends to its parent.  Python (sandbox/plan.py) decides
 * every value; this code only checks and applies them.
 *
 * plan.c    decodes and validates the wire format (no Python, fuzzed)
 * steps.c   applies steps: async-signal-safe, no allocation (runs in the child)
 * confine.c the steps that confine (fds, capabilities, Landlock, rlimits, seccomp)
 * spawn.c  clones the child and runs the parent's half of the handshake
 * module.c the CPython binding
 */
#ifndef SANDBOX_JAIL_H
#define SANDBOX_JAIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Wire format (native byte order; produced and consumed on one machine):
 *   header  u32 magic, u16 version, u16 nsteps, u64 clone_flags        16 bytes
 *   step    u16 op, u16 layer, u32 flags, i64 a[3], u32 len, u32 pad    40 bytes
 *           then `len` payload bytes, padded with zeros to a multiple of 8. */
#define JAIL_PLAN_MAGIC 0x4e4c504aU /* "JPLN" */
#define JAIL_PLAN_VERSION 2
#define JAIL_HEADER_SIZE 16
#define JAIL_STEP_SIZE 40
#define JAIL_MAX_STEPS 512
#define JAIL_MAX_PAYLOAD (1u << 20)
#define JAIL_MAX_BINDS 64
#define JAIL_MAX_SLOTS 8
#define JAIL_MAX_KEEP 256
#define JAIL_MAX_RULES 256
#define JAIL_MAX_STRINGS 4
#define JAIL_MAX_BPF 4096 /* instructions, the kernel's BPF_MAXINSNS */
#define JAIL_MAX_CGROUPS 4 /* cgroup directories a jail joins (v1: one per controller) */

enum jail_op {
    OP_SIGNALS = 1,    /* handlers -> SIG_DFL (and a[0]'s signals too), mask emptied */
    OP_UNSHARE,        /* unshare(a[0]) */
    OP_SETNS_SLOT,     /* setns(slots[a[0]], a[1]) */
    OP_SETNS_PATH,     /* setns(open(s[0]), a[1]) */
    OP_LOOPBACK_UP,    /* lo up in the current network namespace */
    OP_MOUNT,          /* mount(s[1] if a[1]&1, s[0], s[2] if a[1]&2, a[0], s[3] if a[1]&4) */
    OP_MKDIR,          /* mkdir(s[0], a[0]), an existing directory is fine */
    OP_OPEN_BIND,      /* binds[a[0]] = open(s[0], O_PATH) */
    OP_BIND,           /* bind binds[a[0]] at s[0] (dir or file as the source), remount a[1] */
    OP_CHDIR,          /* chdir(s[0]) */
    OP_PIVOT_ROOT,     /* pivot_root(s[0], s[1]) */
    OP_UMOUNT,         /* umount2(s[0], a[0]) */
    OP_SETHOSTNAME,    /* sethostname(s[0]) */
    OP_IDMAP_SYNC,     /* tell the parent to write the id maps, wait until it has */
    OP_SETRESGID,      /* setresgid(a[0] x3), raw syscall */
    OP_SETRESUID,      /* setresuid(a[0] x3), raw syscall */
    OP_FDS,            /* kept fds -> 0..k-1, sync -> k (cloexec), close the rest */
    OP_CAPS,           /* securebits a[0], ambient cleared, bounding set 0..a[1] dropped, capset 0 */
    OP_PRCTL,          /* prctl(a[0], a[1]) */
    OP_LANDLOCK,       /* ruleset (fs a[0], net a[1], scoped a[2], attr size flags) + rules */
    OP_RLIMIT,         /* setrlimit(a[0], a[1]; flags&1: the number of kept fds) */
    OP_PARENT_CHECK,   /* fail if the parent end of the sync socket is gone */
    OP_SECCOMP,        /* seccomp(SET_MODE_FILTER, a[0], data); listener handed to the parent
                          (flags & JAIL_SECCOMP_LEAVE: left open, taken once the child is ready) */
    OP_SYMLINK,        /* symlink(s[0], s[1]): a link at s[1] whose text is s[0] */
    OP_FORK_DUTIES,    /* a Python child's interpreter re-initialisation runs here */
    OP_MAX
};

#define JAIL_RLIMIT_KEPT 1u /* OP_RLIMIT flag: the value is the number of kept fds */
#define JAIL_RLIMIT_HARD 2u /* OP_RLIMIT flag: the value is the current hard limit */
/* OP_SECCOMP flag (with SECCOMP_FILTER_FLAG_NEW_LISTENER): the child says where its
 * listener will be (JAIL_REC_LISTENER_AT, before the filter: a filter that forbids
 * read and write cannot hand it over after), never waits, and keeps it open; the
 * parent copies it once the child is ready (a native entry: it neither execs nor
 * closes fds it was not given). */
#define JAIL_SECCOMP_LEAVE 1u

struct jail_rule {
    uint64_t access_dir, access_file;
    const char *path;
};

struct jail_step {
    uint16_t op, layer;
    uint32_t flags;
    int64_t a[3];
    const char *s[JAIL_MAX_STRINGS]; /* NUL-terminated, inside the plan's buffer */
    const unsigned char *data;        /* OP_SECCOMP: the BPF program */
    uint32_t len;
    uint32_t nrules; /* OP_LANDLOCK */
    const struct jail_rule *rules;
};

struct jail_plan {
    uint64_t clone_flags;
    uint32_t nsteps;
    int max_slot;  /* highest slot index a step uses, -1 for none */
    int max_bind;  /* highest bind index, -1 for none */
    struct jail_step *steps;
    struct jail_rule *rules;
    unsigned char *buf; /* private copy of the wire bytes */
    size_t buflen;
};

/* Decode and check `wire`; on failure returns -1 and a reason in `why`. */
int jail_plan_decode(const void *wire, size_t len, struct jail_plan **out, char *why,
                     size_t whylen);
void jail_plan_free(struct jail_plan *plan);

/* What failed: the step's layer id (or one of the JAIL_LAYER_* below), its index,
 * which of its system calls (sub), and errno. */
struct jail_error {
    uint16_t layer, step, sub;
    int32_t err;
};

#define JAIL_LAYER_EXEC 0xfffe   /* exec (or its path search) failed */
#define JAIL_LAYER_IDMAP 0xfffd  /* the parent could not write the id maps */
#define JAIL_LAYER_SPAWN 0xfffc  /* clone, the handshake, a timeout */
#define JAIL_LAYER_CGROUP 0xfffb /* the parent could not put the child in its cgroup */
#define JAIL_LAYER_RESERVED 0xfff0 /* layer ids from here on are not a step's */

enum jail_mode { JAIL_CALL, JAIL_EXEC, JAIL_ENTRY, JAIL_HERE };

struct jail_times;

/* Everything the child reads: prepared by the parent before the clone. */
struct jail_run {
    const struct jail_plan *plan;
    enum jail_mode mode;
    int sync;        /* the child's end of the sync socket, -1 for none */
    int parent_end;  /* closed first thing in the child */
    const int *slots;
    int nslots;
    const int *keep;
    int nkeep;
    uint64_t handled; /* signals (bit n-1) with a handler in the parent */
    int binds[JAIL_MAX_BINDS];
    char *const *argv, *const *envp, *const *paths; /* JAIL_EXEC */
    int npaths;
    int (*entry_main)(void *);                     /* JAIL_ENTRY */
    void *entry_arg;
    void (*fork_duties)(uint64_t reset);           /* JAIL_CALL, at OP_FORK_DUTIES */
    int keep_sync;   /* JAIL_CALL: send JAIL_REC_READY and keep the sync socket (a result) */
    uint64_t reset;  /* signals OP_SIGNALS set back to SIG_DFL */
    int timings;
    /* timings: the record the child fills (thread CPU ns at its start and after each
     * step) and sends, in the caller's memory (the child writes its copy).  Not on the
     * stack: every page of a frame is written (stack-clash probes), so 4 kB more of
     * frame cost a fork server a copy-on-write fault at every jail. */
    struct jail_times *times;
    struct jail_error error;
};

/* One step each (confine.c); -1 with r->error.sub and .err set on failure. */
int jail_fds(struct jail_run *r);
int jail_caps(struct jail_run *r, const struct jail_step *st);
int jail_landlock(struct jail_run *r, const struct jail_step *st);
int jail_rlimit(struct jail_run *r, const struct jail_step *st);
int jail_seccomp(struct jail_run *r, const struct jail_step *st);
/* Record a failed system call (which one: `sub`; errno) and return -1. */
int jail_failed(struct jail_run *r, uint16_t sub);
/* Set errno, return -1: for failures that are not a system call's. */
int jail_errno(int err);

/* Apply steps [0, nsteps) to the calling process; -1 with r->error on failure. */
int jail_apply(struct jail_run *r);
/* The child's life after the clone: never returns except in JAIL_CALL (0). */
int jail_child(struct jail_run *r);

/* Child -> parent records on the sync socket (SOCK_SEQPACKET, one per send). */
#define JAIL_REC_IDMAP 'U'    /* 1 byte: write my id maps; the answer is JAIL_REC_MAPPED */
#define JAIL_REC_MAPPED 'M'
#define JAIL_REC_ERROR 'E'    /* struct jail_record */
#define JAIL_REC_TIMES 'T'    /* struct jail_times */
#define JAIL_REC_LISTENER 'L' /* struct jail_record, err = the listener's fd in the child */
#define JAIL_REC_TAKEN 'K'    /* parent -> child: the listener is copied */
#define JAIL_REC_READY 'R'    /* 1 byte: ready, the sync socket stays open (keep_sync) */
#define JAIL_REC_LISTENER_AT 'A' /* struct jail_record, err = the fd the listener will be
                                    at; the parent takes it when the child is ready */

struct jail_record {
    char kind;
    uint8_t pad;
    uint16_t layer, step, sub;
    int32_t err;
};

struct jail_times_head {
    char kind;
    uint8_t pad[3];
    uint32_t count; /* of ns that follow */
};

struct jail_times {
    struct jail_times_head head;
    uint64_t ns[JAIL_MAX_STEPS + 1];
};

/* The parent's side of one spawn. */
enum jail_how { JAIL_HOW_FORK, JAIL_HOW_CLONE };

struct jail_spawn {
    struct jail_run run;
    enum jail_how how;
    int clone_parent;
    const char *uid_map, *gid_map; /* written by the parent at JAIL_REC_IDMAP */
    int timeout_ms;
    const int *cgroups; /* directory fds: the parent writes the child's pid to their
                           cgroup.procs at JAIL_REC_IDMAP, before the child goes on */
    int ncgroups;
    /* Called once the seccomp listener is copied, before the child goes on (it may
     * exec under a filter that notifies): nonzero fails the spawn. */
    int (*on_listener)(void *ctx, pid_t pid, int fd);
    void *listener_ctx;
    void (*before_fork)(void);       /* JAIL_CALL: PyOS_BeforeFork */
    void (*after_fork_parent)(void); /* JAIL_CALL: PyOS_AfterFork_Parent */
    int parent_end;
};

struct jail_result {
    pid_t pid;
    int failed;
    struct jail_error error;
    int listener; /* seccomp notification fd copied from the child, or -1 */
    uint32_t ntimes;
    struct jail_times *times; /* the caller's, for the child's timings; NULL: none wanted */
};

/* Clone: returns the pid in the parent, 0 in the child (after jail_child for
 * JAIL_CALL, never for the other modes), -1 with errno if no child was made. */
pid_t jail_clone(struct jail_spawn *s);
/* The parent's half: id maps, errors, timings, the listener, until the child is
 * ready (its end of the sync socket closed) or failed. Blocking, no Python. */
void jail_handshake(struct jail_spawn *s, pid_t pid, struct jail_result *res);

/* The decimal digits of `v` at the end of out[0..cap), NUL-terminated; returns where
 * they start, NULL if they do not fit.  The one number formatter of the executor, the
 * fork server and the request decoder: snprintf is not async-signal-safe, and its
 * frame would be the deepest stack page a fork server touches per jail (a copy-on-write
 * fault each time). */
static inline char *jail_decimal(uint32_t v, char *out, size_t cap)
{
    if (cap < 2)
        return NULL;
    char *p = out + cap - 1;
    *p = '\0';
    do {
        if (p == out)
            return NULL;
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return p;
}

#endif
