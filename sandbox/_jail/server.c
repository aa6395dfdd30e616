/*
 * _jail.Server: the CPython binding of the fork server's C loop (serve.h).
 *
 *   Server(sock, timeout)       the loop's state, in memory of its own (calloc):
 *                               nothing the loop reads or writes is a Python object
 *   add(name, plan, slots, entry, uid_map, gid_map)
 *                               a recipe the loop serves from now on (replaces one of
 *                               the same name): its plan (MODE_ENTRY), the fds of its
 *                               slots, its native entry capsule, its id-map templates
 *                               (bytes in which each byte IDMAP_HOLE stands for the
 *                               host uid of the request; None: no user namespace)
 *   remove(name)                Python serves that name again
 *   serve()                     serve until something needs Python; returns
 *                                 ("eof",)
 *                                 ("interrupted",)        a signal: serve() again
 *                                 ("request", kind, id, name, uid, fds)  (name: bytes)
 *                                     a request the loop does not serve; fds are the
 *                                     caller's to close
 *                                 ("failed", id, name, pid, error)
 *                                     the spawn failed (error as _jail.spawn's; pid 0:
 *                                     nothing was cloned); its fds are closed; no reply yet
 *                                 ("bad", id or None, why)  a malformed request, fds closed
 *                               raises OSError if the socket fails
 *   reply(id, pid, layer, errno, message, listener)
 *                               send one reply (layer "" for a ready jail; listener:
 *                               its seccomp listener fd, sent with it, the caller's
 *                               to close; -1 for none)
 *
 * and _jail.take_heap_holes() -> bytes: malloc's free chunks kept by the server (serve.h)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "serve.h"
#include "../jail_entry.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    struct jail_server *sv;
    PyObject *held; /* name -> (plan, entry): kept alive while the loop may use them */
} ServerObject;

/* The executor's plan type and its C plan (module.c). */
extern PyTypeObject *jail_plan_type(void);
extern const struct jail_plan *jail_plan_of(PyObject *plan);

static void server_dealloc(ServerObject *self)
{
    free(self->sv);
    Py_XDECREF(self->held);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *server_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sock", "timeout", NULL};
    int sock;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "id:Server", kwlist, &sock, &timeout))
        return NULL;
    if (sock < 0 || !(timeout > 0 && timeout < 3600)) {
        PyErr_SetString(PyExc_ValueError, "a socket fd and a timeout in seconds (0, 3600)");
        return NULL;
    }
    ServerObject *self = (ServerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->sv = calloc(1, sizeof *self->sv);
    self->held = PyDict_New();
    if (self->sv == NULL || self->held == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->sv->sock = sock;
    self->sv->timeout_ms = (int)(timeout * 1000);
    return (PyObject *)self;
}

static int find(const struct jail_server *sv, const char *name, Py_ssize_t len)
{
    for (int i = 0; i < sv->nrecipes; i++)
        if (sv->recipes[i].name_len == len && memcmp(sv->recipes[i].name, name, (size_t)len) == 0)
            return i;
    return -1;
}

/* A template (bytes or None) into buf; 1 if given, 0 if None, -1 with an exception. */
static int template(PyObject *obj, char *buf, uint16_t *len, const char *what)
{
    if (obj == Py_None)
        return 0;
    char *p, text[JAIL_IDMAP_MAX];
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(obj, &p, &n) != 0)
        return -1;
    /* It must fit for the longest uid, whatever the request says. */
    if (n == 0 || n >= JAIL_IDMAP_MAX ||
        jail_idmap_render(p, (size_t)n, UINT32_MAX - 1, text, sizeof text) < 0) {
        PyErr_Format(PyExc_ValueError, "%s template: empty, too long, or a NUL in it", what);
        return -1;
    }
    memcpy(buf, p, (size_t)n);
    *len = (uint16_t)n;
    return 1;
}

static PyObject *server_add(ServerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "plan", "slots", "entry", "uid_map", "gid_map", NULL};
    const char *name;
    Py_ssize_t name_len;
    PyObject *plan, *slots, *entry, *uid_map, *gid_map;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#O!OOOO:add", kwlist, &name, &name_len,
                                     jail_plan_type(), &plan, &slots, &entry, &uid_map, &gid_map))
        return NULL;
    if (name_len < 1 || name_len > JAIL_REQ_MAX_NAME || memchr(name, 0, (size_t)name_len)) {
        PyErr_Format(PyExc_ValueError, "a recipe name is 1 to %d bytes, no NUL", JAIL_REQ_MAX_NAME);
        return NULL;
    }
    struct jail_serve_recipe rc;
    memset(&rc, 0, sizeof rc);
    memcpy(rc.name, name, (size_t)name_len);
    rc.name_len = (uint16_t)name_len;
    rc.plan = jail_plan_of(plan);
    struct sandbox_jail_entry *e = PyCapsule_GetPointer(entry, SANDBOX_JAIL_ENTRY_CAPSULE);
    if (e == NULL)
        return NULL;
    if (e->main == NULL) {
        PyErr_SetString(PyExc_ValueError, "the entry capsule has no main");
        return NULL;
    }
    rc.entry_main = e->main;
    rc.entry_arg = e->arg;
    PyObject *fast = PySequence_Fast(slots, "slots");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > JAIL_MAX_SLOTS || n <= rc.plan->max_slot) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%zd slots for a plan that uses %d", n, rc.plan->max_slot + 1);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int v = _PyLong_AsInt(PySequence_Fast_GET_ITEM(fast, i));
        if ((v == -1 && PyErr_Occurred()) || v < -1) {
            Py_DECREF(fast);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "slots: bad fd");
            return NULL;
        }
        rc.slots[i] = v;
    }
    rc.nslots = (int)n;
    Py_DECREF(fast);
    int u = template(uid_map, rc.uid_map, &rc.uid_map_len, "uid_map");
    int g = u < 0 ? -1 : template(gid_map, rc.gid_map, &rc.gid_map_len, "gid_map");
    if (u < 0 || g < 0)
        return NULL;
    if (u != g) {
        PyErr_SetString(PyExc_ValueError, "both id-map templates, or neither");
        return NULL;
    }
    rc.maps = u;
    int at = find(self->sv, name, name_len);
    if (at < 0 && self->sv->nrecipes == JAIL_SERVE_MAX_RECIPES) {
        PyErr_Format(PyExc_ValueError, "more than %d recipes", JAIL_SERVE_MAX_RECIPES);
        return NULL;
    }
    PyObject *key = PyBytes_FromStringAndSize(name, name_len);
    PyObject *pair = key ? PyTuple_Pack(2, plan, entry) : NULL;
    int rcode = pair ? PyDict_SetItem(self->held, key, pair) : -1;
    Py_XDECREF(key);
    Py_XDECREF(pair);
    if (rcode != 0)
        return NULL;
    self->sv->recipes[at < 0 ? self->sv->nrecipes++ : at] = rc;
    Py_RETURN_NONE;
}

static PyObject *server_remove(ServerObject *self, PyObject *arg)
{
    char *name;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &name, &len) != 0)
        return NULL;
    int at = find(self->sv, name, len);
    if (at >= 0) {
        struct jail_server *sv = self->sv;
        memmove(&sv->recipes[at], &sv->recipes[at + 1],
                sizeof sv->recipes[0] * (size_t)(sv->nrecipes - at - 1));
        sv->nrecipes--;
        if (PyDict_DelItem(self->held, arg) != 0)
            PyErr_Clear();
    }
    return PyBool_FromLong(at >= 0);
}

static PyObject *fd_list(struct jail_serve_out *out)
{
    PyObject *list = PyList_New(out->nfds);
    for (int i = 0; list != NULL && i < out->nfds; i++) {
        PyObject *fd = PyLong_FromLong(out->fds[i]);
        if (fd == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, fd);
    }
    if (list == NULL)
        for (int i = 0; i < out->nfds; i++)
            close(out->fds[i]);
    return list;
}

static PyObject *server_serve(ServerObject *self, PyObject *unused)
{
    (void)unused;
    struct jail_serve_out out;
    int stop = jail_serve(self->sv, &out); /* the GIL stays: no other thread may run */
    switch (stop) {
    case JAIL_SERVE_EOF:
        return Py_BuildValue("(s)", "eof");
    case JAIL_SERVE_INTERRUPTED:
        return Py_BuildValue("(s)", "interrupted");
    case JAIL_SERVE_REQUEST: {
        PyObject *fds = fd_list(&out);
        if (fds == NULL)
            return NULL;
        PyObject *event = Py_BuildValue("(sHKy#kO)", "request", out.req.kind,
                                        (unsigned long long)out.req.id, out.req.name,
                                        (Py_ssize_t)out.req.name_len, (unsigned long)out.req.uid,
                                        fds);
        Py_DECREF(fds);
        if (event == NULL)
            for (int i = 0; i < out.nfds; i++)
                close(out.fds[i]);
        return event;
    }
    case JAIL_SERVE_FAILED:
        return Py_BuildValue("(sKy#i(iiii))", "failed", (unsigned long long)out.req.id,
                             out.req.name, (Py_ssize_t)out.req.name_len, (int)out.pid,
                             out.error.layer, out.error.step, out.error.sub, out.error.err);
    case JAIL_SERVE_BAD:
        if (out.id_known)
            return Py_BuildValue("(sKs)", "bad", (unsigned long long)out.req.id, out.why);
        return Py_BuildValue("(sOs)", "bad", Py_None, out.why);
    default:
        errno = out.err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

static PyObject *server_reply(ServerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"id", "pid", "layer", "errno", "message", "listener", NULL};
    unsigned long long id;
    int pid, err = 0, listener = -1;
    const char *layer = "", *message = "";
    Py_ssize_t layer_len = 0, message_len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Ki|s#is#i:reply", kwlist, &id, &pid, &layer,
                                     &layer_len, &err, &message, &message_len, &listener))
        return NULL;
    unsigned char buf[JAIL_REPLY_MAX];
    uint16_t status = layer_len ? JAIL_REPLY_FAILED : JAIL_REPLY_READY;
    size_t len = 0;
    if (pid >= 0 && (status == JAIL_REPLY_FAILED || (pid > 0 && message_len == 0 && err == 0)))
        len = jail_reply_encode(buf, sizeof buf, status, id, pid, err, layer, (size_t)layer_len,
                                message, (size_t)message_len,
                                listener >= 0 ? JAIL_REPLY_LISTENER : 0);
    if (len == 0 || listener < -1) {
        PyErr_SetString(PyExc_ValueError, "not a reply: a ready pid alone, or a layer and a "
                                          "message that fit");
        return NULL;
    }
    if (jail_serve_reply(self->sv->sock, buf, len, listener) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *server_names(ServerObject *self, void *closure)
{
    (void)closure;
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < self->sv->nrecipes; i++) {
        PyObject *name = PyBytes_FromStringAndSize(self->sv->recipes[i].name,
                                                   self->sv->recipes[i].name_len);
        if (name == NULL || PyList_Append(out, name) != 0)
            Py_CLEAR(out);
        Py_XDECREF(name);
    }
    return out;
}

static PyMethodDef server_methods[] = {
    {"add", (PyCFunction)(void (*)(void))server_add, METH_VARARGS | METH_KEYWORDS,
     "add(name, plan, slots, entry, uid_map, gid_map): a recipe the loop serves"},
    {"remove", (PyCFunction)server_remove, METH_O, "remove(name) -> whether it was served"},
    {"serve", (PyCFunction)server_serve, METH_NOARGS,
     "serve() -> why it returned: eof, interrupted, request, failed, bad"},
    {"reply", (PyCFunction)(void (*)(void))server_reply, METH_VARARGS | METH_KEYWORDS,
     "reply(id, pid, layer='', errno=0, message='', listener=-1): one reply to the caller"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef server_getset[] = {
    {"names", (getter)server_names, NULL, "the recipes the loop serves", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ServerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sandbox._jail.Server",
    .tp_doc = "The fork server's spawn loop in C (serve.h).",
    .tp_basicsize = sizeof(ServerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = server_new,
    .tp_dealloc = (destructor)server_dealloc,
    .tp_methods = server_methods,
    .tp_getset = server_getset,
};

static PyObject *take_heap_holes(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromSize_t(jail_take_heap_holes());
}

static PyMethodDef server_functions[] = {
    {"take_heap_holes", take_heap_holes, METH_NOARGS,
     "take_heap_holes() -> bytes of malloc's free chunks now kept by this process"},
    {NULL, NULL, 0, NULL},
};

/* Called by module.c's init: the type, its function and the wire constants
 * forkserver.py encodes with. */
int jail_server_add(PyObject *m)
{
    static const struct {
        const char *name;
        long value;
    } ints[] = {
        {"REQ_MAGIC", (long)JAIL_REQ_MAGIC}, {"REPLY_MAGIC", (long)JAIL_REPLY_MAGIC},
        {"SERVE_VERSION", JAIL_SERVE_VERSION}, {"REQ_SPAWN", JAIL_REQ_SPAWN},
        {"REQ_UPDATE", JAIL_REQ_UPDATE}, {"REQ_MAX_NAME", JAIL_REQ_MAX_NAME},
        {"REQ_MAX_FDS", JAIL_REQ_MAX_FDS}, {"REPLY_MAX", JAIL_REPLY_MAX},
        {"REPLY_MAX_LAYER", JAIL_REPLY_MAX_LAYER}, {"REPLY_LISTENER", JAIL_REPLY_LISTENER}, {"IDMAP_HOLE", JAIL_IDMAP_HOLE},
    };
    if (PyType_Ready(&ServerType) != 0 || PyModule_AddFunctions(m, server_functions) != 0)
        return -1;
    Py_INCREF(&ServerType);
    if (PyModule_AddObject(m, "Server", (PyObject *)&ServerType) != 0) {
        Py_DECREF(&ServerType);
        return -1;
    }
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (PyModule_AddIntConstant(m, ints[i].name, ints[i].value) != 0)
            return -1;
    return 0;
}
