/* titus.worker._worker.Table: the worker table the zygote builds (vhosts in order
 * with their contexts, match rules and OCSP staples) and the native entry points a
 * cloned worker runs.  The module itself is _worker.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "../../sandbox/jail_entry.h" /* the executor's native entry point */
#include "wk_entry.h"
#include "wk_glue.h"
#include "wk_ssl.h"

#define ENTRY_CAPSULE WK_ENTRY_CAPSULE

static void entry_main(void *arg) { wk_main(arg); }

/* What sandbox's executor calls in the jail, after its last layer. */
static int jail_main(void *arg) { wk_main(arg); }

static void entry_serve(void *arg, const unsigned char *packet, size_t len, int cfd)
{
    wk_serve(arg, packet, len, cfd);
}

typedef struct {
    PyObject_HEAD
    struct wk_table t;
    struct wk_entry entry;
    struct sandbox_jail_entry jail_entry;
    PyObject *contexts; /* keeps every SSLContext alive as long as the table */
} Table;

static int parse_addr(PyObject *family, PyObject *ip, PyObject *port, struct wk_addr *out)
{
    Py_buffer b;
    long f = PyLong_AsLong(family), p = PyLong_AsLong(port);
    if (PyErr_Occurred())
        return -1;
    if (PyObject_GetBuffer(ip, &b, PyBUF_SIMPLE) < 0)
        return -1;
    int ok = ((f == 4 && b.len == 4) || (f == 6 && b.len == 16)) && p >= 0 && p <= 0xffff;
    if (ok) {
        memset(out, 0, sizeof *out);
        out->family = (uint8_t)f;
        memcpy(out->ip, b.buf, (size_t)b.len);
        out->port = (uint16_t)p;
    }
    PyBuffer_Release(&b);
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "an address is (4 or 6, packed ip, port)");
    return ok ? 0 : -1;
}

static int set_staple(struct wk_staple *s, PyObject *value)
{
    /* value: None, or (der or None, expires or None) */
    unsigned char *der = NULL;
    size_t len = 0;
    double expires = 0;
    if (value != Py_None) {
        PyObject *d, *e;
        if (!PyTuple_Check(value) || !PyArg_ParseTuple(value, "OO", &d, &e))
            return -1;
        if (e != Py_None && (expires = PyFloat_AsDouble(e)) == -1.0 && PyErr_Occurred())
            return -1;
        if (d != Py_None) {
            char *p;
            Py_ssize_t n;
            if (PyBytes_AsStringAndSize(d, &p, &n) < 0)
                return -1;
            if (n > 0 && (der = malloc((size_t)n)) == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            if (n > 0)
                memcpy(der, p, (size_t)n);
            len = (size_t)n;
        }
    }
    free(s->der);
    s->der = der;
    s->len = len;
    s->expires = expires;
    return 0;
}

static void table_dealloc(Table *self)
{
    /* The zygote keeps its table for life; a test's table goes away here. */
    for (int i = 0; i < self->t.n; i++) {
        struct wk_vhost *v = &self->t.v[i];
        for (int k = 0; k < v->n_sni; k++)
            free(v->sni[k]);
        free(v->sni);
        free(v->staple.der);
        SSL_CTX_free(v->ctx);
    }
    free(self->t.v);
    SSL_CTX_free(self->t.probe);
    Py_XDECREF(self->contexts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int table_init(Table *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"vhosts", "handshake_timeout", "keyholder_timeout", NULL};
    PyObject *vhosts;
    double hs, kh;
    if (self->t.v != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a table is built once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!dd", names, &PyList_Type, &vhosts, &hs, &kh))
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(vhosts);
    if (n < 1 || n > 0xfffe || !(hs > 0 && hs < 86400) || !(kh > 0 && kh < 86400)) {
        PyErr_SetString(PyExc_ValueError, "1..65534 vhosts and positive timeouts");
        return -1;
    }
    self->t.probe = wk_new_probe_ctx();
    self->t.v = calloc((size_t)n, sizeof *self->t.v);
    self->contexts = PyList_New(0);
    if (self->t.probe == NULL || self->t.v == NULL || self->contexts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    wk_probe_install(self->t.probe);
    BIO_free(wk_client_bio(-1, NULL, 0)); /* its BIO_METHOD, made here once for every clone */
    self->t.handshake_timeout_ms = (int)(hs * 1000 + 0.5);
    self->t.keyholder_timeout_ms = (int)(kh * 1000 + 0.5);
    for (Py_ssize_t i = 0; i < n; i++) {
        /* (ctx, family or None, packed ip or None, port or None, sni patterns, stapling) */
        PyObject *ctxobj, *fam, *ip, *port, *sni;
        int stapling;
        struct wk_vhost *v = &self->t.v[i];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(vhosts, i), "OOOOO!p", &ctxobj, &fam, &ip, &port,
                              &PyTuple_Type, &sni, &stapling))
            return -1;
        SSL_CTX *ctx = wk_ctx_of(ctxobj);
        if (ctx == NULL || PyList_Append(self->contexts, ctxobj) < 0)
            return -1;
        SSL_CTX_up_ref(ctx);
        v->ctx = ctx;
        if (wk_vhost_hello_install(ctx) < 0) {
            PyErr_SetString(PyExc_RuntimeError, "libssl gave no ex_data index");
            return -1;
        }
        self->t.n = (int)i + 1;
        if (fam != Py_None) {
            PyObject *zero = PyLong_FromLong(0);
            int r = zero != NULL ? parse_addr(fam, ip, zero, &v->addr) : -1;
            Py_XDECREF(zero);
            if (r < 0)
                return -1;
            v->has_addr = 1;
        }
        if (port != Py_None) {
            long p = PyLong_AsLong(port);
            if (p < 0 || p > 0xffff) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "bad port");
                return -1;
            }
            v->has_port = 1;
            v->port = (uint16_t)p;
        }
        Py_ssize_t ns = PyTuple_GET_SIZE(sni);
        if (ns > 1024 || (ns > 0 && (v->sni = calloc((size_t)ns, sizeof *v->sni)) == NULL)) {
            PyErr_SetString(PyExc_ValueError, "too many server names");
            return -1;
        }
        for (Py_ssize_t k = 0; k < ns; k++) {
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(sni, k), &len);
            if (s == NULL)
                return -1;
            if ((v->sni[k] = strndup(s, (size_t)len)) == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            v->n_sni = (int)k + 1;
        }
        if (stapling) {
            if (wk_enable_stapling(ctx, &v->staple) < 0) {
                PyErr_SetString(PyExc_RuntimeError, "libssl refused the OCSP status callback");
                return -1;
            }
            v->stapling = 1;
        }
    }
    self->entry.main = entry_main;
    self->entry.serve = entry_serve;
    self->entry.arg = &self->t;
    self->jail_entry.main = jail_main;
    self->jail_entry.arg = &self->t;
    return 0;
}

static PyObject *table_update_staples(Table *self, PyObject *values)
{
    /* One value per vhost; vhosts without stapling ignore theirs (as before). */
    if (!PyList_Check(values) && !PyTuple_Check(values))
        return PyErr_Format(PyExc_TypeError, "a list of staples");
    PyObject *seq = PySequence_Fast(values, "a list of staples");
    if (seq == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != self->t.n) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "one staple per vhost");
    }
    for (int i = 0; i < self->t.n; i++) {
        PyObject *value = PySequence_Fast_GET_ITEM(seq, i);
        if (self->t.v[i].stapling && value != Py_None && set_staple(&self->t.v[i].staple, value) < 0) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a staple is (der or None, expiry or None)");
            return NULL;
        }
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyObject *table_probe(Table *self, PyObject *args)
{
    /* probe(hello, (family, packed ip, port)) -> (vhost or -1 none or -2 incomplete, sni) */
    Py_buffer hello;
    PyObject *fam, *ip, *port;
    struct wk_addr local;
    char sni[WK_MAX_SNI + 1];
    if (!PyArg_ParseTuple(args, "y*(OOO)", &hello, &fam, &ip, &port))
        return NULL;
    int r = -3;
    if (parse_addr(fam, ip, port, &local) == 0)
        r = wk_probe_memory(&self->t, &local, hello.buf, (size_t)hello.len, sni, sizeof sni);
    PyBuffer_Release(&hello);
    if (r == -3) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    return Py_BuildValue("(is)", r, sni);
}

static PyObject *table_choose(Table *self, PyObject *args)
{
    /* choose((family, packed ip, port), server name or None) -> index or -1 */
    PyObject *fam, *ip, *port;
    const char *name = NULL;
    Py_ssize_t len = 0;
    struct wk_addr local;
    if (!PyArg_ParseTuple(args, "(OOO)z#", &fam, &ip, &port, &name, &len))
        return NULL;
    if (parse_addr(fam, ip, port, &local) < 0)
        return NULL;
    char *norm = PyMem_Malloc((size_t)len + 1);
    if (norm == NULL)
        return PyErr_NoMemory();
    wk_normalize_sni(name != NULL ? name : "", (size_t)len, norm);
    int r = wk_choose(&self->t, &local, norm);
    PyMem_Free(norm);
    return PyLong_FromLong(r);
}

static PyObject *table_choose_by_address(Table *self, PyObject *args)
{
    /* choose_by_address((family, packed ip, port)) -> index, or -1: needs the name */
    PyObject *fam, *ip, *port;
    struct wk_addr local;
    if (!PyArg_ParseTuple(args, "(OOO)", &fam, &ip, &port))
        return NULL;
    if (parse_addr(fam, ip, port, &local) < 0)
        return NULL;
    return PyLong_FromLong(wk_choose_by_address(&self->t, &local));
}

static PyObject *table_entry(Table *self, void *closure)
{
    (void)closure;
    return PyCapsule_New(&self->entry, ENTRY_CAPSULE, NULL);
}

static PyMethodDef table_methods[] = {
    {"update_staples", (PyCFunction)table_update_staples, METH_O,
     "New (der, expiry) per vhost for the workers cloned from now on."},
    {"probe", (PyCFunction)table_probe, METH_VARARGS,
     "Run the vhost choice on ClientHello bytes in memory (warm-up, tests)."},
    {"choose", (PyCFunction)table_choose, METH_VARARGS, "The vhost chooser alone (tests)."},
    {"choose_by_address", (PyCFunction)table_choose_by_address, METH_VARARGS,
     "The vhost if the local address alone decides it, else -1 (tests)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *table_jail_entry(Table *self, void *closure)
{
    (void)closure;
    return PyCapsule_New(&self->jail_entry, SANDBOX_JAIL_ENTRY_CAPSULE, NULL);
}

static PyGetSetDef table_getset[] = {
    {"entry", (getter)table_entry, NULL,
     "The worker's entry for wrappers and tests (wk_entry.h): a PyCapsule.", NULL},
    {"jail_entry", (getter)table_jail_entry, NULL,
     "The native entry point sandbox's executor runs in the jail: a PyCapsule.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* A table lives in malloc's heap, not in Python's memory (pymalloc's arenas, nor the
 * raw allocator's regions): a fork server keeps that out of its native jails
 * (sandbox/_jail/arenas.c), and the worker reads the table. */
static PyObject *table_alloc(PyTypeObject *type, Py_ssize_t nitems)
{
    (void)nitems;
    PyObject *obj = calloc(1, (size_t)type->tp_basicsize);
    if (obj == NULL)
        return PyErr_NoMemory();
    return PyObject_Init(obj, type);
}

PyTypeObject wk_TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "titus.worker._worker.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The worker table: vhosts in order with their contexts and match rules.",
    .tp_alloc = table_alloc,
    .tp_free = free,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)table_init,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_methods = table_methods,
    .tp_getset = table_getset,
};

