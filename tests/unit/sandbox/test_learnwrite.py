"""The profile `sandbox learn` writes: the base's own text plus each addition, commented."""

from __future__ import annotations

import tomllib
from pathlib import Path

from sandbox.callwatch import Learned, Seen
from sandbox.learnwrite import additions, extend
from sandbox.profile import load_profile

BASE = '''# my daemon: the operator's comments stay
[jail]
binds = ["/usr"]  # system

[seccomp]
default = "kill-process"
groups = ["@basic-io"]  # read, write, close
allow = [
    "execve",   # the launcher's exec
]

[[seccomp.rules]]
syscall = "openat"   # read-only
args = [{ arg = 2, op = "masked-eq", mask = "O_ACCMODE|O_CREAT|O_TRUNC|O_APPEND", value = 0 }]
'''


def learned(name: str, *calls: tuple[int, ...], comm: str = "prog") -> Learned:
    seen = [Seen(name, args, f"{name}({args[0]}, ...)", 1, comm) for args in calls]
    entry = Learned(name, seen[0])
    for one in seen:
        entry.add(one)
    return entry


def test_additions_keep_argument_rules_and_comment_where_seen(tmp_path: Path) -> None:
    path = tmp_path / "base.toml"
    path.write_text(BASE)
    base = load_profile(path).policy
    calls = [
        learned("getppid", (0,) * 6),
        learned("socket", (16, 3, 0, 0, 0, 0), (16, 3, 0, 0, 0, 0), (2, 1, 0, 0, 0, 0)),
        learned("openat", (0xFFFFFF9C, 0x1000, 0o1 | 0o100 | 0o1000, 0o644, 0, 0)),
        learned("fcntl", (3, 1, 0, 0, 0, 0), comm="sh"),
    ]
    adds = additions(base, calls)
    text = extend(BASE, adds, tmp_path)
    assert text.startswith(BASE.split("allow = [")[0])  # the base's text, untouched
    assert '    "getppid",  # learned: process 1 (prog): getppid(0, ...)' in text
    data = tomllib.loads(text)
    assert data["seccomp"]["allow"] == ["execve", "getppid"]
    assert data["seccomp"]["groups"] == ["@basic-io"]
    rules = {(r["syscall"], str(r["args"])) for r in data["seccomp"]["rules"]}
    # socket only for the families seen, never outright; openat in the base's shape.
    assert ("socket", str([{"arg": 0, "op": "==", "value": "AF_NETLINK"}])) in rules
    assert ("socket", str([{"arg": 0, "op": "==", "value": "AF_INET"}])) in rules
    assert ("fcntl", str([{"arg": 1, "op": "==", "value": "F_GETFD"}])) in rules
    assert ("openat", str([{"arg": 2, "op": "masked-eq", "mask": "O_ACCMODE|O_CREAT|O_TRUNC|"
                            "O_APPEND", "value": "O_WRONLY|O_CREAT|O_TRUNC"}])) in rules
    assert "# learned: process 1 (sh): fcntl(3, ...)" in text
    out = tmp_path / "learned.toml"
    out.write_text(text)
    policy = load_profile(out).policy
    assert policy is not None
    assert policy.is_allowed("getppid") is True
    assert policy.is_allowed("socket") is None  # conditional


def test_one_line_and_missing_allow_lists(tmp_path: Path) -> None:
    one = '[seccomp]\nallow = ["read", "write"]  # io\n'
    text = extend(one, additions(None, [learned("getpid", (0,) * 6)]))
    assert tomllib.loads(text)["seccomp"]["allow"] == ["read", "write", "getpid"]
    assert "# io" in text
    none = '[jail]\nhostname = "x"\n\n[seccomp]\ndefault = "kill-process"\n'
    text = extend(none, additions(None, [learned("getpid", (0,) * 6)]))
    assert tomllib.loads(text)["seccomp"] == {"default": "kill-process", "allow": ["getpid"]}


def test_relative_bind_sources_become_absolute(tmp_path: Path) -> None:
    base = '[jail]\nbinds = [{ source = "./site.conf", target = "/etc/site.conf" }]\n'
    text = extend(base, [], tmp_path)
    assert f'source = "{tmp_path}/site.conf"' in text
