"""The order of the layers (DESIGN.md §4): one JailSpec -> one Plan.

Privileged work first, untrusted code last:

  clone(NEWPID)                       the child is PID 1 of a new PID namespace
  signals                             handlers back to default, mask emptied, pdeathsig
  network                             join the shared empty netns / a named one
  mount-namespace                     unshare(mount [, net]) as real root
  network                             lo up (loopback)
  rootfs                              join the spec's shared root, or build one:
                                      tmpfs + binds + pivot_root, read-only
  user-namespace, id-map, credentials the jail's own user namespace, the parent
                                      writes the maps, setresuid/gid(0)
  uts, fds                            hostname; kept fds at 0..k-1, the rest closed
  capabilities, no-new-privs, landlock, rlimits, dumpable
  parent                              pdeathsig again (credentials cleared it),
                                      the parent still there
  cwd (exec) / python (call)          chdir; CPython's after-fork duties
  seccomp                             last

Each layer module says what its steps are; this module only orders them.
"""

from __future__ import annotations

import signal

from sandbox import _jail, bpf, fds, landlock, libc, namespaces, network, privileges, rootfs
from sandbox.errors import JailError
from sandbox.plan import MODE_CALL, MODE_ENTRY, MODE_EXEC, Plan, Step
from sandbox.spec import JailSpec


def _signal_steps(spec: JailSpec, mode: int) -> list[Step]:
    """Python installs handlers and the caller may block signals: a jail starts with
    the defaults and an empty mask.  CPython ignores SIGPIPE and SIGXFSZ, and exec
    keeps "ignored": an exec'd program gets them back at their defaults."""
    also = 0
    what = "signal handlers back to SIG_DFL, signal mask emptied"
    if mode == MODE_EXEC:
        also = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
        what += ", SIGPIPE and SIGXFSZ no longer ignored"
    return [Step(_jail.OP_SIGNALS, "signals", what, args=(also,),
                 subs={0: "emptying the signal mask: {err}"}),
            *privileges.parent_death_steps(spec, "signals")]


def compile_plan(spec: JailSpec, mode: int, shared: bool = True) -> Plan:
    """The plan of `spec`'s jails for `mode` (MODE_CALL, MODE_EXEC, MODE_ENTRY).

    `shared`: the launcher keeps a shared empty network namespace and shared
    read-only roots for its jails (a one-jail launcher does not)."""
    join_net, unshare_net, slots = network.steps(spec, shared)
    join_ipc, ipc_flag, ipc_slots = namespaces.ipc_steps(spec, shared)
    slots += ipc_slots
    share_root = shared and rootfs.shareable(spec)
    steps = [*_signal_steps(spec, mode), *join_net, *join_ipc]
    ns_flags = unshare_net | (0 if share_root else libc.CLONE_NEWNS)
    if ns_flags:
        names = [n for f, n in ((libc.CLONE_NEWNS, "mount"), (libc.CLONE_NEWNET, "network"))
                 if ns_flags & f]
        what = f"new {' and '.join(names)} namespace{'s' if len(names) > 1 else ''}"
        steps.append(Step(_jail.OP_UNSHARE, "mount-namespace", what, args=(ns_flags,)))
    steps += network.loopback_steps(spec)
    if share_root:
        steps += rootfs.join_steps()
        slots += ("root",)
    elif spec.empty_root:
        steps += rootfs.root_steps(spec)
    steps += namespaces.user_steps(spec, ipc_flag)
    steps += fds.steps()
    steps += privileges.capability_steps(spec)
    steps += privileges.no_new_privs_steps(spec)
    if spec.landlock:
        try:
            steps += landlock.steps(
                (["/proc"] if spec.mount_proc else [])  # the jail's own /proc
                + [b.target for b in spec.binds if not b.writable],
                (["/dev"] if spec.dev else [])  # its devices: read, write, ioctl
                + [path for path, _ in spec.tmpfs]
                + [b.target for b in spec.binds if b.writable]
                + ([spec.writable_tmpfs] if spec.writable_tmpfs else []))
        except OSError as e:
            raise JailError(landlock.LAYER, e.errno or 0, str(e)) from None
    steps += privileges.rlimit_steps(spec)
    steps += privileges.dumpable_steps(spec)
    steps += privileges.parent_death_steps(spec, "parent")
    if mode == MODE_EXEC:
        steps += rootfs.cwd_steps(spec)
    if mode == MODE_CALL:
        steps.append(Step(_jail.OP_FORK_DUTIES, "python",
                          "CPython's after-fork duties (inside the jail, before seccomp)"))
    if spec.seccomp_bpf is not None:
        # A filter that notifies hands its listener to the parent (sandbox/notify.py);
        # a native entry leaves it open for the parent to take once it is ready (it
        # neither execs nor closes what it was not given), with no round trip.
        flags = bpf.FILTER_FLAG_NEW_LISTENER if spec.seccomp_listener else 0
        steps += bpf.steps(spec.seccomp_bpf, flags,
                           leave=spec.seccomp_listener and mode == MODE_ENTRY)
    return Plan(steps, libc.CLONE_NEWPID, slots, mode)


def plan_section(spec: JailSpec) -> str:
    """`sandbox explain --plan`: the steps of `sandbox run`'s jail, in order."""
    try:
        plan = compile_plan(spec, MODE_EXEC, shared=False)
    except JailError as exc:
        return f"\nNo jail plan: {exc}\n"
    lines = "\n".join(f"  {line}" for line in plan.describe())
    return ("\nThe jail plan of `sandbox run` (step, layer, operation: what it does); the "
            f"executor applies it in this order:\n{lines}\n")
