/* What _worker.c and wk_table.c, the CPython glue of the C worker, share. */
#ifndef TITUS_WK_GLUE_H
#define TITUS_WK_GLUE_H

#include <Python.h>
#include <openssl/ssl.h>

/* The SSL_CTX* behind an ssl.SSLContext (checked; NULL with an exception). */
SSL_CTX *wk_ctx_of(PyObject *obj);

/* titus.worker._worker.Table (wk_table.c). */
extern PyTypeObject wk_TableType;

#endif
