/*
 * Built-in native entries (sandbox/jail_entry.h), as capsules: `_jail.entry(name)`.
 *   report  writes "pid uid gid\n" to fd 0 (tests: the jail as the entry sees it)
 *   hold    reads fd 0 until EOF (the shared-root builder holds its namespace)
 *   exit    returns `code` at once (the benchmark: the jail and nothing else)
 */
#include "pyjail.h"

#include <stdio.h>
#include <unistd.h>

static int entry_report(void *arg)
{
    char line[64];
    (void)arg;
    int n = snprintf(line, sizeof line, "%d %d %d\n", (int)getpid(), (int)geteuid(),
                     (int)getegid());
    return write(0, line, (size_t)n) == n ? 0 : 1;
}

static int entry_hold(void *arg)
{
    char c;
    (void)arg;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}

static int entry_exit(void *arg)
{
    return (int)(intptr_t)arg;
}

static void entry_free(PyObject *capsule)
{
    PyMem_Free(PyCapsule_GetPointer(capsule, SANDBOX_JAIL_ENTRY_CAPSULE));
}

PyObject *jail_entry_py(PyObject *module, PyObject *args)
{
    const char *name;
    int code = 0;
    (void)module;
    if (!PyArg_ParseTuple(args, "s|i:entry", &name, &code))
        return NULL;
    struct sandbox_jail_entry *e = PyMem_Malloc(sizeof *e);
    if (e == NULL)
        return PyErr_NoMemory();
    e->arg = NULL;
    if (strcmp(name, "report") == 0) {
        e->main = entry_report;
    } else if (strcmp(name, "hold") == 0) {
        e->main = entry_hold;
    } else if (strcmp(name, "exit") == 0) {
        e->main = entry_exit;
        e->arg = (void *)(intptr_t)code;
    } else {
        PyMem_Free(e);
        PyErr_Format(PyExc_ValueError, "no built-in entry %s", name);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(e, SANDBOX_JAIL_ENTRY_CAPSULE, entry_free);
    if (capsule == NULL)
        PyMem_Free(e);
    return capsule;
}

PyObject *jail_is_entry_py(PyObject *module, PyObject *obj)
{
    (void)module;
    return PyBool_FromLong(PyCapsule_IsValid(obj, SANDBOX_JAIL_ENTRY_CAPSULE));
}

PyObject *jail_entry_code_py(PyObject *module, PyObject *obj)
{
    (void)module;
    struct sandbox_jail_entry *e = PyCapsule_GetPointer(obj, SANDBOX_JAIL_ENTRY_CAPSULE);
    if (e == NULL)
        return NULL;
    return PyLong_FromVoidPtr((void *)(uintptr_t)e->main);
}
