/*
 * Keeping a fork server's Python memory out of its native jails.
 *
 * A jail entered through a native entry point (MODE_ENTRY) never runs Python again,
 * yet a clone copies the page tables of every Python object of the fork server,
 * the jail's exit tears them down again, and each page the server's Python writes
 * afterwards (refcounts, its request loop) is copied on write, for the server and
 * into the jail's private memory.  So:
 *
 *   track_arenas()     from now on pymalloc's arenas come from here, and are
 *                      remembered (call it first thing in the fork server);
 *                      a server started with this module in LD_PRELOAD and
 *                      SANDBOX_TRACK_ARENAS=1 tracks them from before the
 *                      interpreter's first arena (track_from_start below);
 *   arenas_dontfork()  marks every remembered arena MADV_DONTFORK, and the arenas
 *                      made later too: clones no longer get them;
 *                      Python's larger blocks (over pymalloc's 512 bytes: dict
 *                      tables, lists, big strings) come from here too (the raw
 *                      allocator below), not from malloc's heap, which keeps only
 *                      what C code allocates (OpenSSL's contexts for titus);
 *   tracked_arenas()   (address, size) of each remembered arena and raw region;
 *   dontfork(addr, length)
 *                      MADV_DONTFORK on a range Python chose (the interpreter's
 *                      own data: sandbox/forkserver.py finds it in /proc/self/maps).
 *
 * Only for a server whose every jail is native (Python decides, forkserver.py):
 * a jail that returned to Python would fault on its first object.  Anything a
 * native entry reads must live in malloc's heap, not in Python objects' arenas
 * (titus's worker table does: titus/worker/_worker.c).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "jail.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Arenas are 1 MiB in CPython 3.11: 4096 of them is 4 GiB of Python objects.  An
 * arena beyond the table is still served, only not kept out of clones. */
#define MAX_ARENAS 4096

static PyObjectArenaAllocator pymalloc_default;
static void *arenas[MAX_ARENAS];
static size_t arena_sizes[MAX_ARENAS];
static int tracking;
static int dontfork_all;
/* The table is changed by pymalloc (under the GIL) and by the raw allocator (not). */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

/* A region (an arena, or the raw allocator's) is remembered, and kept out of clones
 * once arenas_dontfork() has been called; one beyond the table is only not kept out. */
static void remember(void *p, size_t size)
{
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_ARENAS; i++) {
        if (arenas[i] == NULL) {
            arenas[i] = p;
            arena_sizes[i] = size;
            break;
        }
    }
    if (dontfork_all)
        (void)madvise(p, size, MADV_DONTFORK); /* a failure only costs the saving */
    pthread_mutex_unlock(&table_lock);
}

static void forget(void *p)
{
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_ARENAS; i++) {
        if (arenas[i] == p) {
            arenas[i] = NULL;
            arena_sizes[i] = 0;
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
}

static void *map_region(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void *arena_alloc(void *ctx, size_t size)
{
    (void)ctx;
    void *p = map_region(size);
    if (p != NULL)
        remember(p, size);
    return p;
}

static void arena_free(void *ctx, void *p, size_t size)
{
    (void)ctx;
    forget(p);
    if (p != NULL)
        munmap(p, size);
}

/*
 * The raw allocator: PyMem_RawMalloc & co., which pymalloc also uses for every block
 * over 512 bytes.  Blocks of 1 KiB to 128 KiB (powers of two, a 16-byte header
 * included) are cut from 1 MiB regions and kept on a free list per size; larger ones
 * are mappings of their own.  Regions are remembered with the arenas (same table),
 * so arenas_dontfork() keeps them out of clones.  The header's second word, where
 * malloc keeps a chunk's size, carries RAW_TAG, which no malloc chunk size can
 * have (its top bits): a block this allocator did not make (one allocated before it
 * was installed) goes back to the allocator it replaced.  Thread-safe (the raw
 * domain is called without the GIL); a fork in another thread finds it unlocked.
 */
#define RAW_TAG 0xA5A5000000000000ull
#define RAW_TAG_MASK 0xFFFF000000000000ull
#define RAW_MIN_SHIFT 10 /* 1 KiB */
#define RAW_MAX_SHIFT 17 /* 128 KiB */
#define RAW_CLASSES (RAW_MAX_SHIFT - RAW_MIN_SHIFT + 1)
#define RAW_REGION ((size_t)1 << 20)
#define RAW_HEADER 16

struct raw_header {
    uint64_t size;   /* the block's whole size: a power of two, or a mapping's length */
    uint64_t tag;    /* RAW_TAG */
};

static PyMemAllocatorEx raw_default;
static pthread_mutex_t raw_lock = PTHREAD_MUTEX_INITIALIZER;
static void *raw_free_list[RAW_CLASSES];
static char *raw_cursor[RAW_CLASSES], *raw_limit[RAW_CLASSES];

static struct raw_header *header_of(void *ptr)
{
    struct raw_header *h = (struct raw_header *)((char *)ptr - RAW_HEADER);
    return (h->tag & RAW_TAG_MASK) == RAW_TAG ? h : NULL;
}

/* Called with raw_lock held. */
static void *raw_take(size_t n)
{
    if (n > SIZE_MAX - RAW_HEADER - RAW_REGION)
        return NULL;
    size_t want = n + RAW_HEADER;
    struct raw_header *h;
    if (want > ((size_t)1 << RAW_MAX_SHIFT)) {
        size_t len = (want + 4095) & ~(size_t)4095;
        h = map_region(len);
        if (h == NULL)
            return NULL;
        remember(h, len);
        h->size = len;
    } else {
        int c = 0;
        while (((size_t)1 << (RAW_MIN_SHIFT + c)) < want)
            c++;
        size_t block = (size_t)1 << (RAW_MIN_SHIFT + c);
        if (raw_free_list[c] != NULL) {
            h = raw_free_list[c];
            raw_free_list[c] = *(void **)raw_free_list[c];
        } else {
            if (raw_cursor[c] == NULL || raw_cursor[c] + block > raw_limit[c]) {
                char *region = map_region(RAW_REGION);
                if (region == NULL)
                    return NULL;
                remember(region, RAW_REGION);
                raw_cursor[c] = region;
                raw_limit[c] = region + RAW_REGION;
            }
            h = (struct raw_header *)raw_cursor[c];
            raw_cursor[c] += block;
        }
        h->size = block;
    }
    h->tag = RAW_TAG;
    return (char *)h + RAW_HEADER;
}

/* Called with raw_lock held. */
static void raw_give(struct raw_header *h)
{
    size_t size = (size_t)h->size;
    if (size > ((size_t)1 << RAW_MAX_SHIFT)) {
        forget(h);
        munmap(h, size);
        return;
    }
    int c = 0;
    while (((size_t)1 << (RAW_MIN_SHIFT + c)) < size)
        c++;
    h->tag = 0; /* a second free of it is then foreign, not a corrupted list */
    *(void **)h = raw_free_list[c];
    raw_free_list[c] = h;
}

static void *raw_malloc(void *ctx, size_t n)
{
    (void)ctx;
    pthread_mutex_lock(&raw_lock);
    void *p = raw_take(n ? n : 1);
    pthread_mutex_unlock(&raw_lock);
    return p;
}

static void *raw_calloc(void *ctx, size_t count, size_t size)
{
    if (size != 0 && count > SIZE_MAX / size)
        return NULL;
    void *p = raw_malloc(ctx, count * size);
    if (p != NULL)
        memset(p, 0, count * size);
    return p;
}

static void raw_free(void *ctx, void *ptr)
{
    (void)ctx;
    if (ptr == NULL)
        return;
    struct raw_header *h = header_of(ptr);
    if (h == NULL) {
        raw_default.free(raw_default.ctx, ptr);
        return;
    }
    pthread_mutex_lock(&raw_lock);
    raw_give(h);
    pthread_mutex_unlock(&raw_lock);
}

static void *raw_realloc(void *ctx, void *ptr, size_t n)
{
    if (ptr == NULL)
        return raw_malloc(ctx, n);
    struct raw_header *h = header_of(ptr);
    size_t have;
    if (h == NULL) {
        /* Not made here (none is, when the module is preloaded): it stays with the
         * allocator that made it, whose realloc knows its size. */
        return raw_default.realloc(raw_default.ctx, ptr, n);
    }
    have = (size_t)h->size - RAW_HEADER;
    if (n <= have && n > have / 4)
        return ptr;
    void *p = raw_malloc(ctx, n);
    if (p == NULL)
        return NULL;
    memcpy(p, ptr, n < have ? n : have);
    raw_free(ctx, ptr);
    return p;
}

static void raw_lock_for_fork(void)
{
    pthread_mutex_lock(&raw_lock);
    pthread_mutex_lock(&table_lock);
}

static void raw_unlock_after_fork(void)
{
    pthread_mutex_unlock(&table_lock);
    pthread_mutex_unlock(&raw_lock);
}

static void start_raw(void)
{
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &raw_default);
    PyMemAllocatorEx ours = {NULL, raw_malloc, raw_calloc, raw_realloc, raw_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &ours);
    (void)pthread_atfork(raw_lock_for_fork, raw_unlock_after_fork, raw_unlock_after_fork);
}

static void start_tracking(void)
{
    if (!tracking) {
        PyObject_GetArenaAllocator(&pymalloc_default);
        PyObjectArenaAllocator ours = {NULL, arena_alloc, arena_free};
        PyObject_SetArenaAllocator(&ours);
        tracking = 1;
    }
}

/* Run by the dynamic loader when this module is preloaded, before main(): the
 * interpreter's start-up (its builtins, sys, the import system: two arenas and
 * more) then lands in tracked arenas too, which track_arenas() called from the
 * server's first statement could only miss.  (PyObject_SetArenaAllocator only
 * stores the struct: it may be called before Py_Initialize.)  The environment is
 * put back as it was, so that nothing the server starts inherits the preload. */
__attribute__((constructor)) static void track_from_start(void)
{
    const char *ask = getenv("SANDBOX_TRACK_ARENAS");
    if (ask == NULL || strcmp(ask, "1") != 0)
        return;
    const char *was = getenv("SANDBOX_LD_PRELOAD_WAS");
    if (was != NULL && was[0] != '\0')
        (void)setenv("LD_PRELOAD", was, 1);
    else
        (void)unsetenv("LD_PRELOAD");
    (void)unsetenv("SANDBOX_LD_PRELOAD_WAS");
    (void)unsetenv("SANDBOX_TRACK_ARENAS");
    start_tracking();
    start_raw(); /* before the interpreter's first raw block, and its first thread */
}

PyObject *jail_track_arenas_py(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    start_tracking();
    Py_RETURN_NONE;
}

PyObject *jail_arenas_dontfork_py(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    if (!tracking) {
        PyErr_SetString(PyExc_RuntimeError, "track_arenas() was not called");
        return NULL;
    }
    long kept_out = 0;
    int err = 0;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_ARENAS && err == 0; i++) {
        if (arenas[i] == NULL)
            continue;
        if (madvise(arenas[i], arena_sizes[i], MADV_DONTFORK) != 0)
            err = errno;
        kept_out++;
    }
    if (err == 0)
        dontfork_all = 1;
    pthread_mutex_unlock(&table_lock);
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(kept_out);
}

PyObject *jail_tracked_arenas_py(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    static void *seen[MAX_ARENAS]; /* a copy: building the list allocates (GIL held) */
    static size_t seen_sizes[MAX_ARENAS];
    pthread_mutex_lock(&table_lock);
    memcpy(seen, arenas, sizeof seen);
    memcpy(seen_sizes, arena_sizes, sizeof seen_sizes);
    pthread_mutex_unlock(&table_lock);
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < MAX_ARENAS; i++) {
        if (seen[i] == NULL)
            continue;
        PyObject *item = Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)seen[i],
                                       (Py_ssize_t)seen_sizes[i]);
        if (item == NULL || PyList_Append(out, item) != 0) {
            Py_XDECREF(item);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(item);
    }
    return out;
}

PyObject *jail_dontfork_py(PyObject *module, PyObject *args)
{
    unsigned long long addr, length;
    (void)module;
    if (!PyArg_ParseTuple(args, "KK:dontfork", &addr, &length))
        return NULL;
    if (madvise((void *)(uintptr_t)addr, (size_t)length, MADV_DONTFORK) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}
