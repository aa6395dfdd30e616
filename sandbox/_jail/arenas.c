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
 *   tracked_arenas()   (address, size) of each remembered arena;
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

static void *arena_alloc(void *ctx, size_t size)
{
    (void)ctx;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    for (int i = 0; i < MAX_ARENAS; i++) {
        if (arenas[i] == NULL) {
            arenas[i] = p;
            arena_sizes[i] = size;
            break;
        }
    }
    if (dontfork_all)
        (void)madvise(p, size, MADV_DONTFORK); /* a failure only costs the saving */
    return p;
}

static void arena_free(void *ctx, void *p, size_t size)
{
    (void)ctx;
    for (int i = 0; i < MAX_ARENAS; i++) {
        if (arenas[i] == p) {
            arenas[i] = NULL;
            arena_sizes[i] = 0;
            break;
        }
    }
    if (p != NULL)
        munmap(p, size);
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
    for (int i = 0; i < MAX_ARENAS; i++) {
        if (arenas[i] == NULL)
            continue;
        if (madvise(arenas[i], arena_sizes[i], MADV_DONTFORK) != 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        kept_out++;
    }
    dontfork_all = 1;
    return PyLong_FromLong(kept_out);
}

PyObject *jail_tracked_arenas_py(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < MAX_ARENAS; i++) {
        if (arenas[i] == NULL)
            continue;
        PyObject *item = Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)arenas[i],
                                       (Py_ssize_t)arena_sizes[i]);
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
