/*
 * What the CPython binding's files share (module.c, pyspawn.c, entries.c).
 */
#ifndef SANDBOX_PYJAIL_H
#define SANDBOX_PYJAIL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "jail.h"
#include "../jail_entry.h"

typedef struct {
    PyObject_HEAD
    struct jail_plan *plan;
} PlanObject;

extern PyTypeObject PlanType;

/* A sequence of fds (-1: none) into out[max]; their number, -1 with an exception. */
int int_array(PyObject *seq, int *out, int max, const char *what);
/* A list of bytes as a NULL-terminated char* array (pointing into the bytes). */
char **string_array(PyObject *seq, const char *what, int *count);
PyObject *error_tuple(const struct jail_error *e);

PyObject *jail_spawn_py(PyObject *module, PyObject *args, PyObject *kwds); /* pyspawn.c */
PyObject *jail_entry_py(PyObject *module, PyObject *args);                 /* entries.c */
PyObject *jail_is_entry_py(PyObject *module, PyObject *obj);
PyObject *jail_entry_code_py(PyObject *module, PyObject *obj);

#endif
