"""Policy files: parsing, groups, includes, and every validation error with FILE:LINE."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.constants import CONSTANTS, parse_value
from sandbox.errors import PolicyError
from sandbox.policy import load_policy
from sandbox.rules import DENY, parse_action
from sandbox.syscalls import known_syscalls, syscall_number


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


def error_of(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value


# ---------------------------------------------------------------------------
# Syscall names


def test_syscall_table_covers_both_arches() -> None:
    names = known_syscalls()
    assert {"openat", "read", "mmap", "clone3", "io_uring_setup"} <= names
    assert len(names) > 350
    assert "open" in names and syscall_number("open", "aarch64") is None
    assert syscall_number("openat", "x86_64") == 257
    assert syscall_number("openat", "aarch64") == 56
    assert "opnat" not in names


def test_typo_in_syscall_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.toml",
        """
[seccomp]
default = "kill-process"
allow = [
    "read",
    "opnat",
]
""",
    )
    err = error_of(path)
    assert str(err).startswith(f"{path}:5: ")
    assert "unknown syscall 'opnat'" in str(err)
    assert "did you mean 'openat'?" in str(err)
    assert (err.path, err.line) == (path, 5)


def test_typo_in_rule_points_at_the_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.toml",
        """
[seccomp]
allow = ["read"]

[[seccomp.rules]]
syscall = "mmap"

[[seccomp.rules]]
syscall = "mprotct"
args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]
""",
    )
    err = error_of(path)
    assert str(err).startswith(f"{path}:8: ")
    assert "did you mean 'mprotect'?" in str(err)


def test_only_one_arch_is_fine(tmp_path: Path) -> None:
    # open exists on x86_64 only; that is not an error.
    p = load_policy(write(tmp_path, "p.toml", '[seccomp]\nallow = ["open", "read"]\n'))
    assert p.allowed() == ["open", "read"]


# ---------------------------------------------------------------------------
# Keys, actions, values


def test_unknown_top_level_table(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", '[profile]\ndescription = "x"\n\n[seccom]\nallow = []\n')
    err = error_of(path)
    assert str(err).startswith(f"{path}:4: ")
    assert "unknown key 'seccom'" in str(err) and "did you mean 'seccomp'?" in str(err)


def test_unknown_key_in_seccomp(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", '[seccomp]\ndefault = "log"\nalow = ["read"]\n')
    err = error_of(path)
    assert str(err).startswith(f"{path}:3: ")
    assert "did you mean 'allow'?" in str(err)


def test_unknown_key_in_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.toml",
        '[seccomp]\nallow = ["read"]\n[[seccomp.rules]]\nsyscall = "mmap"\nactoin = "allow"\n',
    )
    err = error_of(path)
    assert str(err).startswith(f"{path}:5: ") and "did you mean 'action'?" in str(err)


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", '[seccomp]\nallow = ["read"\ndefault = 1\n')
    err = error_of(path)
    assert str(err).startswith(f"{path}:") and "TOML syntax error" in str(err)
    assert err.line >= 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kill-process", "kill-process"),
        ("log", "log"),
        ("errno:EPERM", "errno:1"),
        ("errno:13", "errno:13"),
    ],
)
def test_actions(text: str, expected: str) -> None:
    assert parse_action(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [("errno:EPREM", "EPERM"), ("kill-proces", "kill-process"), ("errno:0", "range")],
)
def test_bad_actions(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_action(text)


def test_bad_default_action_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", '[seccomp]\nallow = ["read"]\ndefault = "kil-process"\n')
    err = error_of(path)
    assert str(err).startswith(f"{path}:3: ") and "kill-process" in str(err)


def test_symbolic_constants() -> None:
    assert parse_value("PROT_READ|PROT_WRITE") == 3
    assert parse_value("PROT_EXEC") == 4
    assert parse_value("AF_UNIX") == 1
    assert parse_value("FIONBIO") == 0x5421
    assert parse_value("MAP_PRIVATE | 0x20") == 0x22
    assert parse_value("CLONE_NEWUSER|CLONE_NEWNET") == 0x50000000
    assert parse_value("O_RDWR|O_CLOEXEC") == 0o2000002
    assert parse_value(-100) == parse_value("AT_FDCWD") == 2**64 - 100
    with pytest.raises(ValueError, match="did you mean 'PROT_EXEC'"):
        parse_value("PROT_EXCE")
    with pytest.raises(ValueError, match="differs between x86_64 and aarch64"):
        parse_value("O_DIRECTORY")
    with pytest.raises(ValueError):
        parse_value(True)
    with pytest.raises(ValueError):
        parse_value(2**64)


@given(st.lists(st.sampled_from(sorted(k for k, v in CONSTANTS.items() if v >= 0)), min_size=1))
def test_constant_expressions_are_ors(names: list[str]) -> None:
    expected = functools.reduce(lambda a, b: a | b, (CONSTANTS[n] for n in names))
    assert parse_value("|".join(names)) == expected


def test_unknown_constant_in_rule_has_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.toml",
        """
[seccomp]
allow = ["read"]
[[seccomp.rules]]
syscall = "socket"
args = [{ arg = 0, op = "==", value = "AF_UNX" }]
""",
    )
    err = error_of(path)
    assert str(err).startswith(f"{path}:5: ") and "did you mean 'AF_UNIX'?" in str(err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ('{ arg = 0, op = "=~", value = 1 }', "unknown op '=~'"),
        ('{ arg = 7, op = "==", value = 1 }', "argument index 0..5"),
        ('{ arg = 0, op = "masked-eq", value = 1 }', "needs a 'mask'"),
        ('{ arg = 0, op = "==", value = 1, mask = 1 }', "only for op 'masked-eq'"),
        ('{ arg = 0, op = "==" }', "needs a 'value'"),
        ('{ arg = 0, op = "==", value = 1, vlaue = 2 }', "did you mean 'value'"),
    ],
)
def test_bad_argument_filters(tmp_path: Path, args: str, message: str) -> None:
    path = write(
        tmp_path, "p.toml", f'[seccomp]\n[[seccomp.rules]]\nsyscall = "socket"\nargs = [{args}]\n'
    )
    err = error_of(path)
    assert message in str(err) and str(err).startswith(f"{path}:")


def test_rules_are_parsed(tmp_path: Path) -> None:
    p = load_policy(
        write(
            tmp_path,
            "p.toml",
            """
[seccomp]
default = "errno:EPERM"
allow = ["read", "write"]
deny = ["ptrace"]
[[seccomp.rules]]
syscall = "mmap"
args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]
[[seccomp.rules]]
syscall = "socket"
args = [{ arg = 0, op = "==", value = "AF_UNIX" }]
[[seccomp.rules]]
syscall = "socket"
args = [{ arg = 0, op = "==", value = "AF_INET6" }]
[[seccomp.rules]]
syscall = "getppid"
action = "log"
""",
        )
    )
    assert p.default == "errno:1"
    assert p.allowed() == ["read", "write"]
    assert list(p.conditional()) == ["mmap", "socket"]
    (mmap_rule,) = p.rules_for("mmap")
    (cond,) = mmap_rule.args
    assert (cond.arg, cond.op, cond.mask, cond.value) == (2, "masked-eq", 4, 0)
    assert [r.args[0].value for r in p.rules_for("socket")] == [1, 10]
    assert p.rules_for("ptrace")[0].action == DENY
    assert p.effective_action(p.rules_for("ptrace")[0]) == "errno:1"
    assert p.is_allowed("read") is True
    assert p.is_allowed("socket") is None
    assert p.is_allowed("ptrace") is False
    assert p.is_allowed("getppid") is False
    assert p.is_allowed("openat") is False


# ---------------------------------------------------------------------------
# Conflicts


def test_conflict_unconditional_and_argument_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.toml",
        """
[seccomp]
allow = ["read", "mmap"]

[[seccomp.rules]]
syscall = "mmap"
args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]
""",
    )
    err = str(error_of(path))
    assert "conflict" in err and "'mmap'" in err
    assert f"{path}:2" in err and f"{path}:5" in err  # both places


def test_conflict_two_actions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.toml",
        """
[seccomp]
[[seccomp.rules]]
syscall = "getppid"
action = "errno:EPERM"
[[seccomp.rules]]
syscall = "getppid"
action = "log"
""",
    )
    err = str(error_of(path))
    assert "conflict" in err and "errno:EPERM" in err and "log" in err
    assert f"{path}:3" in err and f"{path}:6" in err


def test_conflict_allowed_and_denied_across_group(tmp_path: Path) -> None:
    write(tmp_path, "groups/io.toml", '[group]\ndescription = "io"\nallow = ["read", "socket"]\n')
    path = write(tmp_path, "p.toml", '[seccomp]\ngroups = ["@io"]\ndeny = ["socket"]\n')
    err = str(error_of(path))
    assert "allowed at" in err and "denied at" in err
    assert str(tmp_path / "groups" / "io.toml") + ":3 (via @io)" in err
    assert f"{path}:3" in err


def test_same_allow_twice_is_not_a_conflict(tmp_path: Path) -> None:
    write(tmp_path, "groups/a.toml", '[group]\nallow = ["read", "write"]\n')
    write(tmp_path, "groups/b.toml", '[group]\nallow = ["read", "close"]\n')
    p = load_policy(write(tmp_path, "p.toml", '[seccomp]\ngroups = ["@a", "@b"]\nallow=["read"]\n'))
    assert p.allowed() == ["close", "read", "write"]


def test_default_allow_needs_denials(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "p.toml", '[seccomp]\ndefault = "allow"\nallow = ["read"]\n'))
    assert "needs explicit deny rules" in str(err)
    p = load_policy(write(tmp_path, "q.toml", '[seccomp]\ndefault = "allow"\ndeny = ["ptrace"]\n'))
    assert p.effective_action(p.rules[0]) == "kill-process"


# ---------------------------------------------------------------------------
# Groups and includes


def test_groups_nest_and_carry_rules(tmp_path: Path) -> None:
    write(
        tmp_path,
        "groups/mem.toml",
        """
[group]
description = "memory"
allow = ["brk"]
[[group.rules]]
syscall = "mmap"
args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]
""",
    )
    write(tmp_path, "groups/rt.toml", '[group]\ngroups = ["@mem"]\nallow = ["futex"]\n')
    p = load_policy(write(tmp_path, "p.toml", '[seccomp]\ngroups = ["@rt"]\n'))
    assert p.allowed() == ["brk", "futex"]
    assert p.rules_for("mmap")[0].via == "@mem"
    assert set(p.groups) == {"@rt", "@mem"}


def test_unknown_group_suggests(tmp_path: Path) -> None:
    write(tmp_path, "groups/basic-io.toml", '[group]\nallow = ["read"]\n')
    path = write(tmp_path, "p.toml", '[seccomp]\nallow = ["write"]\ngroups = ["@basic-oi"]\n')
    err = error_of(path)
    assert str(err).startswith(f"{path}:3: ")
    assert "unknown group '@basic-oi'" in str(err) and "did you mean '@basic-io'?" in str(err)


def test_group_name_needs_at(tmp_path: Path) -> None:
    write(tmp_path, "groups/basic-io.toml", '[group]\nallow = ["read"]\n')
    err = error_of(write(tmp_path, "p.toml", '[seccomp]\ngroups = ["basic-io"]\n'))
    assert "did you mean '@basic-io'?" in str(err)


def test_syscall_group_in_allow_list_is_explained(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "p.toml", '[seccomp]\nallow = ["@basic-io"]\n'))
    assert "groups = [...]" in str(err)


def test_error_inside_group_names_group_file(tmp_path: Path) -> None:
    group = write(tmp_path, "groups/bad.toml", '[group]\nallow = [\n  "read",\n  "wirte",\n]\n')
    err = error_of(write(tmp_path, "p.toml", '[seccomp]\ngroups = ["@bad"]\n'))
    assert str(err).startswith(f"{group}:4: ") and "did you mean 'write'?" in str(err)


def test_unknown_key_in_group_file(tmp_path: Path) -> None:
    group = write(tmp_path, "groups/g.toml", '[group]\nallow = ["read"]\ndeny = ["write"]\n')
    err = error_of(write(tmp_path, "p.toml", '[seccomp]\ngroups = ["@g"]\n'))
    assert str(err).startswith(f"{group}:3: ") and "unknown key 'deny'" in str(err)


def test_group_cycle(tmp_path: Path) -> None:
    write(tmp_path, "groups/a.toml", '[group]\ngroups = ["@b"]\n')
    write(tmp_path, "groups/b.toml", '[group]\ngroups = ["@a"]\n')
    err = error_of(write(tmp_path, "p.toml", '[seccomp]\ngroups = ["@a"]\n'))
    assert "group cycle: @a -> @b -> @a" in str(err)


def test_groups_found_beside_parent_dir(tmp_path: Path) -> None:
    # policies/examples/x.toml uses policies/groups/.
    write(tmp_path, "groups/local.toml", '[group]\nallow = ["getpid"]\n')
    p = load_policy(write(tmp_path, "examples/x.toml", '[seccomp]\ngroups = ["@local"]\n'))
    assert p.allowed() == ["getpid"]


def test_include_merges(tmp_path: Path) -> None:
    write(
        tmp_path,
        "common/base.toml",
        """
[seccomp]
default = "log"
allow = ["read"]
[[seccomp.rules]]
syscall = "socket"
args = [{ arg = 0, op = "==", value = "AF_UNIX" }]
""",
    )
    p = load_policy(
        write(tmp_path, "p.toml", '[seccomp]\ninclude = ["common/base.toml"]\nallow = ["write"]\n')
    )
    assert p.default == "kill-process"  # an include's default is not merged
    assert p.allowed() == ["read", "write"]
    assert p.rules_for("socket")[0].origin.startswith(str(tmp_path / "common" / "base.toml"))
    assert p.includes == ((tmp_path / "common" / "base.toml").resolve(),)


def test_include_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", '[seccomp]\ninclude = ["b.toml"]\n')
    b = write(tmp_path, "b.toml", '[seccomp]\nallow = ["read"]\ninclude = ["a.toml"]\n')
    err = error_of(tmp_path / "a.toml")
    assert str(err).startswith(f"{b}:3: ") and "include cycle" in str(err)


def test_missing_include(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", '[seccomp]\nallow = ["read"]\ninclude = ["nope.toml"]\n')
    err = error_of(path)
    assert str(err).startswith(f"{path}:3: ") and "not found" in str(err)


def test_conflict_across_include_names_both_files(tmp_path: Path) -> None:
    inc = write(tmp_path, "inc.toml", '[seccomp]\ndeny = ["ptrace"]\n')
    path = write(tmp_path, "p.toml", '[seccomp]\ninclude = ["inc.toml"]\nallow = ["ptrace"]\n')
    err = str(error_of(path))
    assert f"{inc}:2" in err and f"{path}:3" in err


# ---------------------------------------------------------------------------
# The shipped groups


def test_every_shipped_group_loads(tmp_path: Path) -> None:
    groups = Path(__file__).resolve().parents[3] / "policies" / "groups"
    names = sorted(p.stem for p in groups.glob("*.toml"))
    assert {
        "basic-io",
        "memory",
        "python-runtime",
        "tls-io",
        "signals",
        "time",
        "process-exit",
        "unix-socket-io",
        "network-io",
    } <= set(names)
    for name in names:
        assert "description" in (groups / f"{name}.toml").read_text(), f"@{name}: no description"
        # Found through the search path (the repo's policies/), and valid on its own.
        p = load_policy(write(tmp_path, f"{name}.toml", f'[seccomp]\ngroups = ["@{name}"]\n'))
        assert p.rules and f"@{name}" in p.groups
