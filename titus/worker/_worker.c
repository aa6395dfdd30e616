/* titus.worker._worker: the Python glue of the C worker (used by the zygote).
 *
 * The zygote builds its TLS contexts with Python's ssl (titus/worker/contexts.py
 * defines every TLS setting); this module reaches the SSL_CTX behind each
 * ssl.SSLContext, installs remote keys and the C callbacks into it, builds the
 * worker table and hands out the native entry point that a cloned worker runs
 * without ever re-entering Python.  It refuses to work unless it links the very
 * libssl/libcrypto that _ssl runs (DESIGN §5).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <string.h>

#include "../../sandbox/jail_entry.h" /* the executor's native entry point */
#include "wk_entry.h"
#include "wk_ssl.h"

#define ENTRY_CAPSULE WK_ENTRY_CAPSULE

static int runtime_checked;

/* ------------------------------------------------------------------ the same OpenSSL */

/* Whether the library at `path` (an extension module) resolves libssl and libcrypto
 * to the very ones this module links: dlsym through its handle searches its own
 * dependencies, so a second OpenSSL in the process is never mistaken for ours. */
static int same_openssl(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    void *their_ssl = h != NULL ? dlsym(h, "SSL_CTX_new") : NULL;
    void *their_crypto = h != NULL ? dlsym(h, "OPENSSL_init_crypto") : NULL;
    if (h != NULL)
        dlclose(h);
    return their_ssl == (void *)&SSL_CTX_new && their_crypto == (void *)&OPENSSL_init_crypto;
}

static int check_runtime(const char *path)
{
    PyObject *bytes = NULL;
    if (path == NULL) {
        if (runtime_checked)
            return 0;
        PyObject *ssl_mod = PyImport_ImportModule("_ssl");
        if (ssl_mod == NULL)
            return -1;
        PyObject *file = PyModule_GetFilenameObject(ssl_mod);
        Py_DECREF(ssl_mod);
        if (file == NULL) {
            PyErr_SetString(PyExc_RuntimeError,
                            "_ssl is built into Python: no shared OpenSSL 3 to hook");
            return -1;
        }
        bytes = PyUnicode_EncodeFSDefault(file);
        Py_DECREF(file);
        if (bytes == NULL)
            return -1;
        path = PyBytes_AS_STRING(bytes);
    }
    int same = same_openssl(path), ours = bytes != NULL;
    Py_XDECREF(bytes);
    if (!same) {
        PyErr_SetString(PyExc_RuntimeError,
                        "titus.worker._worker and _ssl do not run the same libssl/libcrypto");
        return -1;
    }
    unsigned long num = OpenSSL_version_num();
    if (num < 0x30000000UL || num >= 0x40000000UL) {
        PyErr_Format(PyExc_RuntimeError, "%s: foreign keys are only known to work on OpenSSL 3.x",
                     OpenSSL_version(OPENSSL_VERSION));
        return -1;
    }
    runtime_checked = runtime_checked || ours;
    return 0;
}

/* The SSL_CTX* of an ssl.SSLContext: the first field after the object header,
 * proved by flipping an option in Python and reading it back in C. */
static SSL_CTX *ctx_of(PyObject *obj)
{
    if (check_runtime(NULL) < 0)
        return NULL;
    PyObject *ssl_mod = PyImport_ImportModule("_ssl");
    PyObject *type = ssl_mod != NULL ? PyObject_GetAttrString(ssl_mod, "_SSLContext") : NULL;
    Py_XDECREF(ssl_mod);
    if (type == NULL)
        return NULL;
    int ok = PyObject_IsInstance(obj, type);
    Py_DECREF(type);
    if (ok != 1) {
        if (ok == 0)
            PyErr_SetString(PyExc_TypeError, "an ssl.SSLContext is needed");
        return NULL;
    }
    SSL_CTX *ctx = *(SSL_CTX **)((char *)obj + sizeof(PyObject));
    if (ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no SSL_CTX pointer where CPython keeps it");
        return NULL;
    }
    PyObject *orig = PyObject_GetAttrString(obj, "options");
    if (orig == NULL)
        return NULL;
    unsigned long long original = PyLong_AsUnsignedLongLong(orig);
    unsigned long long flipped = original ^ SSL_OP_NO_TICKET;
    uint64_t seen[3];
    seen[0] = SSL_CTX_get_options(ctx);
    PyObject *f = PyLong_FromUnsignedLongLong(flipped);
    int set = f != NULL ? PyObject_SetAttrString(obj, "options", f) : -1;
    Py_XDECREF(f);
    seen[1] = SSL_CTX_get_options(ctx);
    int restored = PyObject_SetAttrString(obj, "options", orig);
    seen[2] = SSL_CTX_get_options(ctx);
    Py_DECREF(orig);
    if (set < 0 || restored < 0 || PyErr_Occurred())
        return NULL;
    if (seen[0] != original || seen[1] != flipped || seen[2] != original) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the pointer after the object header is not this context's SSL_CTX");
        return NULL;
    }
    return ctx;
}

static PyObject *py_check_runtime(PyObject *self, PyObject *args)
{
    (void)self;
    const char *path = NULL; /* another extension module to compare with (tests) */
    if (!PyArg_ParseTuple(args, "|s", &path) || check_runtime(path) < 0)
        return NULL;
    return PyUnicode_FromString(OpenSSL_version(OPENSSL_VERSION));
}

static PyObject *py_ctx_pointer(PyObject *self, PyObject *ctx)
{
    (void)self;
    SSL_CTX *p = ctx_of(ctx);
    return p != NULL ? PyLong_FromVoidPtr(p) : NULL;
}

/* ------------------------------------------------------------------ contexts */

static PyObject *py_install_key(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *names[] = {"ctx", "ders", "kind", "public", "exponent", "curve", "key_id", NULL};
    PyObject *ctxobj, *ders;
    const char *kind, *curve = NULL;
    Py_buffer pub;
    unsigned long long exponent = 0;
    int key_id;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!sy*Kzi", names, &ctxobj, &PyTuple_Type, &ders,
                                     &kind, &pub, &exponent, &curve, &key_id))
        return NULL;
    PyObject *result = NULL;
    const unsigned char **bufs = NULL;
    size_t *lens = NULL;
    SSL_CTX *ctx = ctx_of(ctxobj);
    Py_ssize_t n = PyTuple_GET_SIZE(ders);
    int is_rsa = strcmp(kind, "rsa") == 0;
    if (ctx == NULL)
        goto out;
    if (key_id < 0 || key_id > 0xffff || n < 1 || n > 16 || (!is_rsa && strcmp(kind, "ec") != 0)) {
        PyErr_SetString(PyExc_ValueError, "bad key id, chain or key kind");
        goto out;
    }
    bufs = PyMem_Calloc((size_t)n, sizeof *bufs);
    lens = PyMem_Calloc((size_t)n, sizeof *lens);
    if (bufs == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyTuple_GET_ITEM(ders, i);
        if (!PyBytes_Check(d)) {
            PyErr_SetString(PyExc_TypeError, "certificates must be DER bytes");
            goto out;
        }
        bufs[i] = (const unsigned char *)PyBytes_AS_STRING(d);
        lens[i] = (size_t)PyBytes_GET_SIZE(d);
    }
    unsigned char e[8];
    size_t elen = 0;
    for (int i = 7; i >= 0; i--)
        if (elen > 0 || (exponent >> (8 * i)) & 0xff)
            e[elen++] = (unsigned char)(exponent >> (8 * i));
    int nid = NID_undef;
    if (!is_rsa) {
        nid = curve == NULL ? NID_undef
              : strcmp(curve, "secp256r1") == 0 ? NID_X9_62_prime256v1
              : strcmp(curve, "secp384r1") == 0 ? NID_secp384r1
                                                : NID_undef;
        if (nid == NID_undef) {
            PyErr_Format(PyExc_ValueError, "curve %s is not P-256 or P-384", curve ? curve : "?");
            goto out;
        }
    } else if (elen == 0) {
        PyErr_SetString(PyExc_ValueError, "no RSA exponent");
        goto out;
    }
    char err[256] = "";
    int size = wk_install_key(ctx, bufs, lens, (int)n, is_rsa, pub.buf, (size_t)pub.len, e, elen,
                              nid, (uint16_t)key_id, err, sizeof err);
    if (size < 0)
        PyErr_SetString(PyExc_RuntimeError, err);
    else
        result = PyLong_FromLong(size);
out:
    PyMem_Free(bufs);
    PyMem_Free(lens);
    PyBuffer_Release(&pub);
    return result;
}

static PyObject *py_set_alpn(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ctxobj;
    Py_buffer wire;
    if (!PyArg_ParseTuple(args, "Oy*", &ctxobj, &wire))
        return NULL;
    SSL_CTX *ctx = ctx_of(ctxobj);
    int r = ctx != NULL ? wk_set_alpn(ctx, wire.buf, (size_t)wire.len) : -1;
    PyBuffer_Release(&wire);
    if (ctx == NULL)
        return NULL;
    if (r < 0) {
        PyErr_SetString(PyExc_ValueError, "not an ALPN protocol list");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_set_ciphersuites(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ctxobj;
    const char *s;
    if (!PyArg_ParseTuple(args, "Os", &ctxobj, &s))
        return NULL;
    SSL_CTX *ctx = ctx_of(ctxobj);
    if (ctx == NULL)
        return NULL;
    int ok = SSL_CTX_set_ciphersuites(ctx, s);
    ERR_clear_error();
    return PyBool_FromLong(ok == 1);
}

static PyObject *py_set_groups(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ctxobj;
    const char *s;
    if (!PyArg_ParseTuple(args, "Os", &ctxobj, &s))
        return NULL;
    SSL_CTX *ctx = ctx_of(ctxobj);
    if (ctx == NULL)
        return NULL;
    int ok = (int)SSL_CTX_set1_groups_list(ctx, s);
    ERR_clear_error();
    return PyBool_FromLong(ok == 1);
}

static PyObject *py_disable_session_cache(PyObject *self, PyObject *ctxobj)
{
    (void)self;
    SSL_CTX *ctx = ctx_of(ctxobj);
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ the table */

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
        SSL_CTX *ctx = ctx_of(ctxobj);
        if (ctx == NULL || PyList_Append(self->contexts, ctxobj) < 0)
            return -1;
        SSL_CTX_up_ref(ctx);
        v->ctx = ctx;
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

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "titus.worker._worker.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The worker table: vhosts in order with their contexts and match rules.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)table_init,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_methods = table_methods,
    .tp_getset = table_getset,
};

/* ------------------------------------------------------------------ module */

static PyObject *py_stats(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    return Py_BuildValue("(IId)", wk_kh.ok, wk_kh.failed, (double)wk_kh.last_us / 1e6);
}

static PyObject *py_set_keyholder(PyObject *self, PyObject *args)
{
    /* Where this process's remote keys send their requests: a worker uses fd 1, set at
     * its entry; the bench signs in memory through a channel of its own. */
    (void)self;
    int fd;
    double timeout;
    if (!PyArg_ParseTuple(args, "id", &fd, &timeout))
        return NULL;
    if (!(timeout > 0 && timeout < 86400))
        return PyErr_Format(PyExc_ValueError, "timeout must be positive");
    wk_kh.fd = fd;
    wk_kh.timeout_ms = (int)(timeout * 1000 + 0.5);
    wk_kh.broken = 0;
    Py_RETURN_NONE;
}

static PyObject *py_reset_stats(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    wk_kh.ok = wk_kh.failed = 0;
    Py_RETURN_NONE;
}

static PyObject *str_or_none(struct wk_str s)
{
    if (s.len < 0)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s.p, s.len, "strict");
}

static PyObject *names_tuple(const struct wk_str *names, int n)
{
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t != NULL && i < n; i++) {
        PyObject *item = str_or_none(names[i]);
        if (item == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, item);
    }
    return t;
}

static PyObject *py_client_identity(PyObject *self, PyObject *der)
{
    /* What a worker reports for this (verified) certificate: (cn, subject, dns, uri). */
    (void)self;
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(der, &p, &n) < 0)
        return NULL;
    const unsigned char *q = (const unsigned char *)p;
    X509 *cert = d2i_X509(NULL, &q, (long)n);
    if (cert == NULL) {
        ERR_clear_error();
        return PyErr_Format(PyExc_ValueError, "not a DER certificate");
    }
    static char arena[WK_CTL_MAX];
    struct wk_handshake_msg m;
    memset(&m, 0, sizeof m);
    wk_identity(cert, &m, arena, sizeof arena);
    X509_free(cert);
    PyObject *cn = str_or_none(m.client_cn), *subject = str_or_none(m.client_subject);
    PyObject *dns = names_tuple(m.dns, m.n_dns), *uri = names_tuple(m.uri, m.n_uri);
    PyObject *out = cn && subject && dns && uri ? PyTuple_Pack(4, cn, subject, dns, uri) : NULL;
    Py_XDECREF(cn);
    Py_XDECREF(subject);
    Py_XDECREF(dns);
    Py_XDECREF(uri);
    return out;
}

static PyObject *py_run(PyObject *self, PyObject *capsule)
{
    /* Runs the worker in this process (a test's or bench's forked child holding fds 0
     * control, 1 key holder, 2 stderr); never returns. */
    (void)self;
    struct wk_entry *e = PyCapsule_GetPointer(capsule, ENTRY_CAPSULE);
    if (e == NULL)
        return NULL;
    e->main(e->arg);
    Py_RETURN_NONE; /* not reached */
}

static PyMethodDef methods[] = {
    {"check_runtime", py_check_runtime, METH_VARARGS,
     "Refuse (RuntimeError) unless this module and _ssl run the same OpenSSL 3."},
    {"ctx_pointer", py_ctx_pointer, METH_O, "The validated SSL_CTX* of an ssl.SSLContext."},
    {"install_key", (PyCFunction)(void (*)(void))py_install_key, METH_VARARGS | METH_KEYWORDS,
     "Serve a context's certificate chain with a key of the key holder."},
    {"set_alpn", py_set_alpn, METH_VARARGS, "The context's ALPN list (wire format), in C."},
    {"set_ciphersuites", py_set_ciphersuites, METH_VARARGS, "SSL_CTX_set_ciphersuites."},
    {"set_groups", py_set_groups, METH_VARARGS, "SSL_CTX_set1_groups_list."},
    {"disable_session_cache", py_disable_session_cache, METH_O, "No server session cache."},
    {"stats", py_stats, METH_NOARGS,
     "(signatures, failed signatures, last round trip in seconds) in this process."},
    {"set_keyholder", py_set_keyholder, METH_VARARGS,
     "set_keyholder(fd, timeout): the key-holder channel of this process (-1: none)."},
    {"reset_stats", py_reset_stats, METH_NOARGS, "Zero the signature counters."},
    {"run", py_run, METH_O, "Run the worker in this process: never returns."},
    {"client_identity", py_client_identity, METH_O,
     "(cn, subject, dns, uri) a worker reports for a DER client certificate (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "titus.worker._worker",
    "The per-connection worker of titus, in C, and its glue for the zygote.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__worker(void)
{
    if (PyType_Ready(&TableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0 ||
        PyModule_AddIntConstant(m, "CTL_MAX", WK_CTL_MAX) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
