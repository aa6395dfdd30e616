/*
 * sandbox._jail.spawn: the CPython face of jail_clone + jail_handshake (spawn.c).
 *
 *   spawn(plan, mode, *, how, parent, slots, keep, uid_map, gid_map, argv, envp,
 *         paths, entry, timeout, timings, cgroups, on_listener, keep_sync)
 *
 * The parent gets (pid, error, listener, times, result): error None or (layer id,
 * step, sub-step, errno); listener the seccomp listener copied from the child or
 * -1; result the kept sync socket (keep_sync) or -1.  A MODE_CALL child gets None,
 * or its own end of the sync socket with keep_sync.
 */
#include "pyjail.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static int duties_done;

/* A Python child's interpreter re-initialisation (what os.fork does after fork),
 * run where the plan says: inside the jail, before seccomp.  Then Python's own view
 * of the signals is made to match what the plan did: no wakeup fd (its number may
 * now be one of the kept fds), default handlers where the plan reset them. */
static void python_after_fork(uint64_t reset)
{
    PyOS_AfterFork_Child();
    PyObject *sig = PyImport_ImportModule("_signal");
    PyObject *dfl = sig ? PyObject_GetAttrString(sig, "SIG_DFL") : NULL;
    if (dfl != NULL) {
        Py_XDECREF(PyObject_CallMethod(sig, "set_wakeup_fd", "i", -1));
        for (int n = 1; n < 64; n++)
            if ((reset >> (n - 1) & 1) && n != SIGKILL && n != SIGSTOP &&
                (n < 32 || n >= SIGRTMIN) && n < NSIG)
                Py_XDECREF(PyObject_CallMethod(sig, "signal", "iO", n, dfl));
    }
    Py_XDECREF(dfl);
    Py_XDECREF(sig);
    PyErr_Clear();
    duties_done = 1;
}

/* on_listener: the Python callable, called with the GIL while the child waits (the
 * handshake runs without it).  False, or an exception, fails the spawn (ECANCELED). */
static int call_on_listener(void *ctx, pid_t pid, int fd)
{
    PyObject *callable = ctx;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(callable, "ii", (int)pid, fd);
    int rc = 0;
    if (r == NULL) {
        PyErr_WriteUnraisable(callable);
        rc = -1;
    } else if (r == Py_False) {
        rc = -1;
    }
    Py_XDECREF(r);
    PyGILState_Release(gil);
    return rc;
}

static int plan_has(const struct jail_plan *plan, int op)
{
    for (uint32_t i = 0; i < plan->nsteps; i++)
        if (plan->steps[i].op == op)
            return 1;
    return 0;
}

PyObject *jail_spawn_py(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"plan", "mode", "how", "parent", "slots", "keep", "uid_map",
                             "gid_map", "argv", "envp", "paths", "entry", "timeout",
                             "timings", "cgroups", "on_listener", "keep_sync", NULL};
    PlanObject *plan;
    int mode, how = JAIL_HOW_FORK, parent = 0, timings = 0, keep_sync = 0;
    PyObject *slots = NULL, *keep = NULL, *argv = NULL, *envp = NULL, *paths = NULL;
    PyObject *entry = NULL, *result = NULL, *cgroups = NULL, *on_listener = NULL;
    const char *uid_map = NULL, *gid_map = NULL;
    double timeout = 10.0;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!i|$ipOOzzOOOOdpOOp:spawn", kwlist,
                                     &PlanType, &plan, &mode, &how, &parent, &slots, &keep,
                                     &uid_map, &gid_map, &argv, &envp, &paths, &entry,
                                     &timeout, &timings, &cgroups, &on_listener, &keep_sync))
        return NULL;
    if (mode != JAIL_CALL && mode != JAIL_EXEC && mode != JAIL_ENTRY) {
        PyErr_SetString(PyExc_ValueError, "unknown mode");
        return NULL;
    }
    if (how != JAIL_HOW_FORK && how != JAIL_HOW_CLONE) {
        PyErr_SetString(PyExc_ValueError, "unknown way to clone");
        return NULL;
    }
    if (parent && how != JAIL_HOW_CLONE) {
        PyErr_SetString(PyExc_ValueError, "CLONE_PARENT needs how=HOW_CLONE");
        return NULL;
    }
    if (keep_sync && mode != JAIL_CALL) {
        PyErr_SetString(PyExc_ValueError, "keep_sync is for MODE_CALL");
        return NULL;
    }
    if (on_listener == Py_None)
        on_listener = NULL;
    if (on_listener != NULL && !PyCallable_Check(on_listener)) {
        PyErr_SetString(PyExc_TypeError, "on_listener must be callable");
        return NULL;
    }
    struct jail_spawn s;
    memset(&s, 0, sizeof s);
    int slot_fds[JAIL_MAX_SLOTS], keep_fds[JAIL_MAX_KEEP], cgroup_fds[JAIL_MAX_CGROUPS];
    s.run.plan = plan->plan;
    s.run.mode = (enum jail_mode)mode;
    s.run.timings = timings;
    s.run.keep_sync = keep_sync;
    if ((s.ncgroups = int_array(cgroups, cgroup_fds, JAIL_MAX_CGROUPS, "cgroups")) < 0)
        return NULL;
    for (int i = 0; i < s.ncgroups; i++) {
        if (cgroup_fds[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "cgroups: bad fd -1");
            return NULL;
        }
    }
    if (s.ncgroups && !plan_has(plan->plan, OP_IDMAP_SYNC)) {
        /* The child waits at its id-map step until it is in its cgroups. */
        PyErr_SetString(PyExc_ValueError, "cgroups need a plan with an id-map step");
        return NULL;
    }
    s.cgroups = cgroup_fds;
    if (on_listener != NULL) {
        s.on_listener = call_on_listener;
        s.listener_ctx = on_listener;
    }
    s.how = (enum jail_how)how;
    s.clone_parent = parent;
    s.uid_map = uid_map;
    s.gid_map = gid_map;
    s.timeout_ms = timeout > 0 ? (int)(timeout * 1000) : 0;
    if ((s.run.nslots = int_array(slots, slot_fds, JAIL_MAX_SLOTS, "slots")) < 0 ||
        (s.run.nkeep = int_array(keep, keep_fds, JAIL_MAX_KEEP, "kept fds")) < 0)
        return NULL;
    if (plan->plan->max_slot >= s.run.nslots) {
        PyErr_Format(PyExc_ValueError, "the plan uses slot %d, %d given",
                     plan->plan->max_slot, s.run.nslots);
        return NULL;
    }
    s.run.slots = slot_fds;
    s.run.keep = keep_fds;
    char **cargv = NULL, **cenvp = NULL, **cpaths = NULL;
    /* timings: the child fills its copy and sends it; it is received into ours */
    struct jail_times *times_in = NULL;
    if (timings) {
        times_in = PyMem_Calloc(1, sizeof *times_in);
        if (times_in == NULL) {
            PyErr_NoMemory();
            goto out;
        }
        s.run.times = times_in;
    }
    if (mode == JAIL_EXEC) {
        if (argv == NULL || envp == NULL || paths == NULL) {
            PyErr_SetString(PyExc_ValueError, "exec needs argv, envp and paths");
            return NULL;
        }
        int argc = 0;
        if ((cargv = string_array(argv, "argv", &argc)) == NULL ||
            (cenvp = string_array(envp, "envp", NULL)) == NULL ||
            (cpaths = string_array(paths, "paths", &s.run.npaths)) == NULL)
            goto out;
        if (argc == 0) {
            PyErr_SetString(PyExc_ValueError, "exec needs a command");
            goto out;
        }
        s.run.argv = cargv;
        s.run.envp = cenvp;
        s.run.paths = cpaths;
    } else if (mode == JAIL_ENTRY) {
        struct sandbox_jail_entry *e = PyCapsule_GetPointer(entry, SANDBOX_JAIL_ENTRY_CAPSULE);
        if (e == NULL)
            goto out;
        if (e->main == NULL) {
            PyErr_SetString(PyExc_ValueError, "the entry capsule has no main");
            goto out;
        }
        s.run.entry_main = e->main;
        s.run.entry_arg = e->arg;
    } else {
        s.before_fork = PyOS_BeforeFork;
        s.after_fork_parent = PyOS_AfterFork_Parent;
        s.run.fork_duties = python_after_fork;
    }

    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    s.parent_end = pair[0];
    s.run.sync = pair[1];
    duties_done = 0;
    pid_t pid = jail_clone(&s);
    if (pid == 0) { /* the child, JAIL_CALL: back to Python */
        if (!duties_done)
            python_after_fork(s.run.reset);
        PyMem_Free(cargv);
        PyMem_Free(cenvp);
        PyMem_Free(cpaths);
        PyMem_Free(times_in);
        if (keep_sync)
            return PyLong_FromLong(s.run.sync);
        Py_RETURN_NONE;
    }
    close(pair[1]);
    if (pid < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(pair[0]);
        goto out;
    }
    struct jail_result res;
    memset(&res, 0, sizeof res);
    res.times = times_in;
    Py_BEGIN_ALLOW_THREADS
    jail_handshake(&s, pid, &res);
    Py_END_ALLOW_THREADS
    int kept = -1;
    if (keep_sync && !res.failed)
        kept = pair[0]; /* the result comes back on it: the caller's to close */
    else
        close(pair[0]);
    PyObject *times = Py_None;
    Py_INCREF(times);
    if (res.ntimes) {
        Py_DECREF(times);
        times = PyTuple_New(res.ntimes);
        for (uint32_t i = 0; times != NULL && i < res.ntimes; i++)
            PyTuple_SET_ITEM(times, i, PyLong_FromUnsignedLongLong(res.times->ns[i]));
    }
    PyObject *error = res.failed ? error_tuple(&res.error) : (Py_INCREF(Py_None), Py_None);
    if (times != NULL && error != NULL)
        result = Py_BuildValue("(iOiOi)", (int)pid, error, res.listener, times, kept);
    if (result == NULL) {
        if (res.listener >= 0)
            close(res.listener);
        if (kept >= 0)
            close(kept);
    }
    Py_XDECREF(times);
    Py_XDECREF(error);
out:
    PyMem_Free(cargv);
    PyMem_Free(cenvp);
    PyMem_Free(cpaths);
    PyMem_Free(times_in);
    return result;
}
