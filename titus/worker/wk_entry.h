/* The C worker's entry point, as titus.worker._worker hands it out: a PyCapsule named
 * WK_ENTRY_CAPSULE (Table.entry) holding a struct wk_entry.  `main` runs the whole
 * connection path on fds 0 (control), 1 (key holder), 2 (stderr) and never returns.
 * `serve` is for wrappers that read the Connection message themselves (the tests'
 * rogue workers): it takes that packet and its client fd, and never returns either. */
#ifndef TITUS_WK_ENTRY_H
#define TITUS_WK_ENTRY_H

#include <stddef.h>

#define WK_ENTRY_CAPSULE "titus.worker._worker.entry"

struct wk_entry {
    void (*main)(void *arg);
    void *arg;
    void (*serve)(void *arg, const unsigned char *packet, size_t len, int cfd);
};

#endif
