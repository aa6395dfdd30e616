/*
 * The native entry point of a jail: how a C extension hands its main function to
 * sandbox's executor (sandbox/_jail) so that a jail runs it with no Python at all.
 *
 * The provider (e.g. the titus C worker) wraps a static struct sandbox_jail_entry
 * in a PyCapsule named SANDBOX_JAIL_ENTRY_CAPSULE and passes the capsule where a
 * Python function would go (Launcher.spawn, a fork server Recipe's target).  The
 * executor reads the struct in the parent, clones, builds the jail, and in the
 * child calls main(arg) after the last layer, then _exit()s with its return value
 * (& 0xff).  main never returns to Python and must not call the Python C API.
 *
 * When main runs:
 *   - the kept fds are 0..k-1 (in the order the spawner passed them), nothing else
 *     is open, RLIMIT_NOFILE is what the profile says ("kept" = k);
 *   - every layer is applied: namespaces, root, credentials, capabilities dropped,
 *     no_new_privs, rlimits, not dumpable, parent-death signal, seccomp loaded last;
 *   - signal handlers are back to SIG_DFL, ignored signals stay ignored, the signal
 *     mask is empty;
 *   - the spawner already knows the jail is ready (the executor closed its sync fd).
 * A spawner with several threads gets a child made by glibc's fork() (its at-fork
 * handlers ran, malloc is usable); a fork server (CLONE_PARENT) is single-threaded.
 * `arg` points into the spawner's memory as it was at the clone: a copy-on-write
 * snapshot, the provider's to interpret.
 */
#ifndef SANDBOX_JAIL_ENTRY_H
#define SANDBOX_JAIL_ENTRY_H

#define SANDBOX_JAIL_ENTRY_CAPSULE "sandbox._jail.entry"

struct sandbox_jail_entry {
    int (*main)(void *arg);
    void *arg;
};

#endif
