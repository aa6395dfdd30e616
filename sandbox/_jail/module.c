/*
 * sandbox._jail: the CPython face of the jail executor.
 *
 *   Plan(wire)        a decoded, checked plan (sandbox/plan.py encodes it)
 *   spawn(plan, mode, ...)
 *                     clone a child that applies the plan, then returns to Python
 *                     (MODE_CALL: None in the child, or with keep_sync its sync fd),
 *                     execs (MODE_EXEC) or calls a native entry (MODE_ENTRY); the
 *                     parent gets (pid, error, listener, times, result) once the
 *                     child is ready or failed (result: the kept sync socket, or -1)
 *   apply(plan, ...)  apply a plan to this process (fds, Landlock, seccomp alone)
 *   entry(name[, code])
 *                     a built-in native entry capsule (tests, the shared root, bench)
 *   track_arenas(), arenas_dontfork(), tracked_arenas(), dontfork(addr, length)
 *                     a fork server's Python memory kept out of native jails (arenas.c)
 *
 * error is None or (layer id, step index, sub-step, errno); plan.py names it.
 * spawn() is in pyspawn.c, the built-in entries in entries.c.
 */
#include "pyjail.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static void plan_dealloc(PlanObject *self)
{
    jail_plan_free(self->plan);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *plan_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wire", NULL};
    Py_buffer wire;
    char why[160];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:Plan", kwlist, &wire))
        return NULL;
    struct jail_plan *plan = NULL;
    int rc = jail_plan_decode(wire.buf, (size_t)wire.len, &plan, why, sizeof why);
    PyBuffer_Release(&wire);
    if (rc != 0) {
        PyErr_Format(PyExc_ValueError, "bad jail plan: %s", why);
        return NULL;
    }
    PlanObject *self = (PlanObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        jail_plan_free(plan);
        return NULL;
    }
    self->plan = plan;
    return (PyObject *)self;
}

static PyObject *plan_get_nsteps(PlanObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(self->plan->nsteps);
}

static PyObject *plan_get_clone_flags(PlanObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->plan->clone_flags);
}

static PyGetSetDef plan_getset[] = {
    {"nsteps", (getter)plan_get_nsteps, NULL, "number of steps", NULL},
    {"clone_flags", (getter)plan_get_clone_flags, NULL, "namespace flags of the clone", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sandbox._jail.Plan",
    .tp_doc = "A checked jail plan, ready for spawn() and apply().",
    .tp_basicsize = sizeof(PlanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = plan_new,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_getset = plan_getset,
};

/* For server.c (the fork server's loop): the type, and the C plan of an instance. */
PyTypeObject *jail_plan_type(void)
{
    return &PlanType;
}

const struct jail_plan *jail_plan_of(PyObject *plan)
{
    return ((PlanObject *)plan)->plan;
}

/* A sequence of fds (-1: none) into out[max]; their number, -1 with an exception. */
int int_array(PyObject *seq, int *out, int max, const char *what)
{
    if (seq == NULL || seq == Py_None)
        return 0;
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > max) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "more than %d %s", max, what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int v = _PyLong_AsInt(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (v < -1) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s: bad fd %d", what, v);
            return -1;
        }
        out[i] = v;
    }
    Py_DECREF(fast);
    return (int)n;
}

/* A list of bytes as a NULL-terminated char* array (pointing into the bytes). */
char **string_array(PyObject *seq, const char *what, int *count)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        char *s;
        Py_ssize_t len;
        if (!PyBytes_Check(item) || PyBytes_AsStringAndSize(item, &s, &len) != 0 ||
            (Py_ssize_t)strlen(s) != len) {
            PyErr_Format(PyExc_ValueError, "%s must be bytes without NUL", what);
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = s;
    }
    /* The items stay alive: the caller holds `seq` for the whole spawn. */
    Py_DECREF(fast);
    if (count)
        *count = (int)n;
    return out;
}

PyObject *error_tuple(const struct jail_error *e)
{
    return Py_BuildValue("(iiii)", e->layer, e->step, e->sub, e->err);
}

static PyObject *jail_apply_py(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"plan", "keep", "sync", "slots", NULL};
    PlanObject *plan;
    PyObject *keep = NULL, *slots = NULL;
    int sync = -1;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|$OiO:apply", kwlist, &PlanType, &plan,
                                     &keep, &sync, &slots))
        return NULL;
    struct jail_run r;
    memset(&r, 0, sizeof r);
    int slot_fds[JAIL_MAX_SLOTS], keep_fds[JAIL_MAX_KEEP];
    r.plan = plan->plan;
    r.mode = JAIL_HERE;
    r.sync = sync;
    r.parent_end = -1;
    if ((r.nslots = int_array(slots, slot_fds, JAIL_MAX_SLOTS, "slots")) < 0 ||
        (r.nkeep = int_array(keep, keep_fds, JAIL_MAX_KEEP, "kept fds")) < 0)
        return NULL;
    if (plan->plan->max_slot >= r.nslots) {
        PyErr_SetString(PyExc_ValueError, "the plan uses more slots than given");
        return NULL;
    }
    r.slots = slot_fds;
    r.keep = keep_fds;
    if (jail_apply(&r) != 0)
        return Py_BuildValue("(iN)", r.sync, error_tuple(&r.error));
    return Py_BuildValue("(iO)", r.sync, Py_None);
}

/* arenas.c */
PyObject *jail_track_arenas_py(PyObject *module, PyObject *unused);
PyObject *jail_arenas_dontfork_py(PyObject *module, PyObject *unused);
PyObject *jail_dontfork_py(PyObject *module, PyObject *args);
PyObject *jail_tracked_arenas_py(PyObject *module, PyObject *unused);
/* hugetext.c */
PyObject *jail_huge_text_py(PyObject *module, PyObject *args);
/* server.c */
int jail_server_add(PyObject *m);

static PyMethodDef methods[] = {
    {"spawn", (PyCFunction)(void (*)(void))jail_spawn_py, METH_VARARGS | METH_KEYWORDS,
     "spawn(plan, mode, *, how, parent, slots, keep, uid_map, gid_map, argv, envp, paths, "
     "entry, timeout, timings, cgroups, on_listener, keep_sync) -> (pid, error, listener, "
     "times, result) in the parent"},
    {"apply", (PyCFunction)(void (*)(void))jail_apply_py, METH_VARARGS | METH_KEYWORDS,
     "apply(plan, *, keep, sync, slots) -> (sync, error): apply a plan to this process"},
    {"entry", jail_entry_py, METH_VARARGS, "entry(name[, code]) -> a built-in entry capsule"},
    {"is_entry", jail_is_entry_py, METH_O, "is_entry(obj) -> whether obj is an entry capsule"},
    {"entry_code", jail_entry_code_py, METH_O,
     "entry_code(capsule) -> the address of the entry's main function"},
    {"track_arenas", jail_track_arenas_py, METH_NOARGS,
     "track_arenas(): pymalloc's arenas from here on are remembered (arenas.c)"},
    {"arenas_dontfork", jail_arenas_dontfork_py, METH_NOARGS,
     "arenas_dontfork() -> arenas now kept out of clones, and every later one too"},
    {"tracked_arenas", jail_tracked_arenas_py, METH_NOARGS,
     "tracked_arenas() -> [(address, size)] of the arenas track_arenas() remembers"},
    {"dontfork", jail_dontfork_py, METH_VARARGS,
     "dontfork(addr, length): MADV_DONTFORK on that range"},
    {"huge_text", jail_huge_text_py, METH_VARARGS,
     "huge_text(start, length): that range of read-only pages moved into 2 MB pages "
     "(hugetext.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "sandbox._jail",
    "The jail executor: applies plans compiled by sandbox.plan (Python decides, C executes).",
    -1, methods, NULL, NULL, NULL, NULL,
};

static int add_ints(PyObject *m)
{
    static const struct {
        const char *name;
        long value;
    } ints[] = {
        {"MAGIC", JAIL_PLAN_MAGIC}, {"VERSION", JAIL_PLAN_VERSION},
        {"MODE_CALL", JAIL_CALL}, {"MODE_EXEC", JAIL_EXEC}, {"MODE_ENTRY", JAIL_ENTRY},
        {"HOW_FORK", JAIL_HOW_FORK}, {"HOW_CLONE", JAIL_HOW_CLONE},
        {"LAYER_EXEC", JAIL_LAYER_EXEC}, {"LAYER_IDMAP", JAIL_LAYER_IDMAP},
        {"LAYER_SPAWN", JAIL_LAYER_SPAWN}, {"LAYER_CGROUP", JAIL_LAYER_CGROUP},
        {"LAYER_RESERVED", JAIL_LAYER_RESERVED},
        {"RLIMIT_KEPT", JAIL_RLIMIT_KEPT}, {"RLIMIT_HARD", JAIL_RLIMIT_HARD},
        {"SECCOMP_LEAVE", JAIL_SECCOMP_LEAVE},
        {"MAX_CGROUPS", JAIL_MAX_CGROUPS},
        {"MAX_STEPS", JAIL_MAX_STEPS}, {"MAX_BINDS", JAIL_MAX_BINDS},
        {"MAX_SLOTS", JAIL_MAX_SLOTS}, {"MAX_KEEP", JAIL_MAX_KEEP},
        {"MAX_RULES", JAIL_MAX_RULES},
        {"OP_SIGNALS", OP_SIGNALS}, {"OP_UNSHARE", OP_UNSHARE},
        {"OP_SETNS_SLOT", OP_SETNS_SLOT}, {"OP_SETNS_PATH", OP_SETNS_PATH},
        {"OP_LOOPBACK_UP", OP_LOOPBACK_UP}, {"OP_MOUNT", OP_MOUNT}, {"OP_MKDIR", OP_MKDIR},
        {"OP_OPEN_BIND", OP_OPEN_BIND}, {"OP_BIND", OP_BIND}, {"OP_CHDIR", OP_CHDIR},
        {"OP_PIVOT_ROOT", OP_PIVOT_ROOT}, {"OP_UMOUNT", OP_UMOUNT},
        {"OP_SETHOSTNAME", OP_SETHOSTNAME}, {"OP_IDMAP_SYNC", OP_IDMAP_SYNC},
        {"OP_SETRESGID", OP_SETRESGID}, {"OP_SETRESUID", OP_SETRESUID}, {"OP_FDS", OP_FDS},
        {"OP_CAPS", OP_CAPS}, {"OP_PRCTL", OP_PRCTL}, {"OP_LANDLOCK", OP_LANDLOCK},
        {"OP_RLIMIT", OP_RLIMIT}, {"OP_PARENT_CHECK", OP_PARENT_CHECK},
        {"OP_SECCOMP", OP_SECCOMP}, {"OP_SYMLINK", OP_SYMLINK},
        {"OP_FORK_DUTIES", OP_FORK_DUTIES},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (PyModule_AddIntConstant(m, ints[i].name, ints[i].value) != 0)
            return -1;
    return 0;
}

PyMODINIT_FUNC PyInit__jail(void)
{
    if (PyType_Ready(&PlanType) != 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PlanType);
    if (PyModule_AddObject(m, "Plan", (PyObject *)&PlanType) != 0 || add_ints(m) != 0 ||
        jail_server_add(m) != 0 ||
        PyModule_AddStringConstant(m, "ENTRY_CAPSULE", SANDBOX_JAIL_ENTRY_CAPSULE) != 0) {
        Py_DECREF(&PlanType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
