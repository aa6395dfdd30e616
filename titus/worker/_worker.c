/* titus.worker._worker: the Python glue of the C worker (used by the zygote).
 *
 * The zygote builds its TLS contexts with Python's ssl (titus/worker/contexts.py
 * defines every TLS setting); this module reaches the SSL_CTX behind each
 * ssl.SSLContext, installs remote keys and the C callbacks into it, builds the
 * worker table and hands out the native entry point that a cloned worker runs
 * without ever re-entering Python.  It refuses to work unless it links the very
 * libssl/libcrypto that _ssl runs (DESIGN §5).  The table type is wk_table.c.
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
#include "wk_glue.h"
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
SSL_CTX *wk_ctx_of(PyObject *obj)
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
    SSL_CTX *p = wk_ctx_of(ctx);
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
    SSL_CTX *ctx = wk_ctx_of(ctxobj);
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
    SSL_CTX *ctx = wk_ctx_of(ctxobj);
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
    SSL_CTX *ctx = wk_ctx_of(ctxobj);
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
    SSL_CTX *ctx = wk_ctx_of(ctxobj);
    if (ctx == NULL)
        return NULL;
    int ok = (int)SSL_CTX_set1_groups_list(ctx, s);
    ERR_clear_error();
    return PyBool_FromLong(ok == 1);
}

static PyObject *py_disable_session_cache(PyObject *self, PyObject *ctxobj)
{
    (void)self;
    SSL_CTX *ctx = wk_ctx_of(ctxobj);
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    Py_RETURN_NONE;
}

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
    if (PyType_Ready(&wk_TableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&wk_TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&wk_TableType) < 0 ||
        PyModule_AddIntConstant(m, "CTL_MAX", WK_CTL_MAX) < 0) {
        Py_DECREF(&wk_TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
