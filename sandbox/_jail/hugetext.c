/*
 * A shared library's text in 2 MB pages, for a fork server's native jails.
 *
 * A jail cloned from a fork server starts with none of its libraries' text in its
 * page tables (fork copies the page table entries of anonymous memory only): every
 * code page it runs first costs it a fault, which maps 16 pages around it, and its
 * exit unmaps them all again.  For titus's worker that is ~40 faults and ~600 page
 * table entries of libcrypto per connection.  Copied into anonymous memory backed
 * by transparent huge pages at the same address, the text is two PMD entries that
 * fork copies as they are: no fault, nothing per page at exit, and two TLB entries.
 *
 *   huge_text(start, length)
 *       copies [start, start + length) into a new anonymous mapping, 2 MB aligned,
 *       asks the kernel to back it with huge pages (MADV_COLLAPSE, which fails
 *       unless it did), makes it read+execute and moves it over the original
 *       (mremap MREMAP_FIXED: the old pages are gone in the same call).  Nothing
 *       changes unless every step worked; OSError says which did not.
 *
 * Python decides (sandbox/hugetext.py): which range, only read-only pages that
 * are still exactly the file's, and whether the host's THP setting allows it.
 * The caller runs no other thread: the range must not change while it is copied.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* linux/mman.h, Linux 6.1 */
#endif

#define HUGE_PAGE ((uintptr_t)2 << 20)

/* OSError(err, "huge_text: <step>: <strerror>"), errno set as Python's own. */
static PyObject *fail(const char *step, int err)
{
    PyObject *args = Py_BuildValue("(iN)", err,
                                   PyUnicode_FromFormat("huge_text: %s: %s", step, strerror(err)));
    if (args != NULL) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}

PyObject *jail_huge_text_py(PyObject *module, PyObject *args)
{
    unsigned long long start_arg, length_arg;
    (void)module;
    if (!PyArg_ParseTuple(args, "KK:huge_text", &start_arg, &length_arg))
        return NULL;
    uintptr_t start = (uintptr_t)start_arg;
    size_t length = (size_t)length_arg;
    if (start_arg > UINTPTR_MAX || length_arg > SIZE_MAX - HUGE_PAGE || length == 0 ||
        start % HUGE_PAGE != 0 || length % HUGE_PAGE != 0 || start > UINTPTR_MAX - length) {
        PyErr_SetString(PyExc_ValueError, "huge_text: a non-empty range of whole 2 MB pages");
        return NULL;
    }
    /* Room to align the copy: mmap promises only 4 kB alignment. */
    size_t room = length + HUGE_PAGE;
    char *raw = mmap(NULL, room, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return fail("mmap", errno);
    char *copy = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1));
    size_t head = (size_t)(copy - raw), tail = room - head - length;
    if (head != 0)
        munmap(raw, head);
    if (tail != 0)
        munmap(copy + length, tail);
    int err = 0;
    const char *step = NULL;
    if (madvise(copy, length, MADV_HUGEPAGE) != 0) {
        err = errno, step = "madvise(MADV_HUGEPAGE)";
    } else {
        memcpy(copy, (const void *)start, length);
        if (madvise(copy, length, MADV_COLLAPSE) != 0)
            err = errno, step = "madvise(MADV_COLLAPSE)";
        else if (mprotect(copy, length, PROT_READ | PROT_EXEC) != 0)
            err = errno, step = "mprotect";
        else if (mremap(copy, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)start) ==
                 MAP_FAILED)
            err = errno, step = "mremap";
    }
    if (step != NULL) {
        munmap(copy, length);
        return fail(step, err);
    }
    Py_RETURN_NONE;
}
