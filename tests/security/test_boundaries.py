"""The process boundaries, read from the code (DESIGN §1, §7): which code may run where.

* sandbox/ never imports titus/: the jail library knows nothing of TLS.
* Nothing outside titus/keyholder/ loads a private key: no call of a private-key
  loader (cryptography's, pyOpenSSL's, OpenSSL's through ctypes, ssl's
  load_cert_chain, the key holder's own), no OpenSSL private-key loader bound by
  name, and no key file read (open/read_bytes/read_text/os.read of something named
  key).  The supervisor may os.open a key file: it passes the fd to the key
  holder's jail and never reads it.
* titus/supervisor/ never imports the worker's connection path, directly or
  through the modules it imports at load time: the code that parses what clients
  send runs only in jailed workers.

Imports are read with ast, never those under ``if TYPE_CHECKING:``.  For
sandbox/ every one counts, also inside functions (they run when the function
does).  For the supervisor: every import of titus/supervisor/'s own modules,
followed through the module-level imports of every titus/ and sandbox/ module
they reach (what loading the supervisor loads).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The worker's connection path: per connection, inside the jail (and its C successor).
CONNECTION_PATH = {
    "titus.worker.connection",
    "titus.worker.pump",
    "titus.worker.clienthello",
    "titus.worker.stapling",
    "titus.worker._worker",
}
# Calls that load a private key.
KEY_LOADERS = {
    "load_pem_private_key", "load_der_private_key", "load_ssh_private_key",
    "load_key_and_certificates", "load_pkcs12", "load_privatekey", "use_privatekey",
    "use_privatekey_file", "load_cert_chain", "load_keys_from_fds", "load_store", "KeyStore",
}
# OpenSSL's private-key loaders, as a ctypes binding would name them.
OPENSSL_KEY_LOADERS = re.compile(
    r"^(d2i_(Auto)?PrivateKey\w*|PEM_read_(bio_)?PrivateKey|d2i_PKCS8\w*|PEM_read\w*PrivateKey"
    r"|SSL(_CTX)?_use_PrivateKey_(file|ASN1)|SSL(_CTX)?_use_RSAPrivateKey\w*|OSSL_DECODER\w*)$"
)
# Reading a file: builtin open, io.open, Path.open/read_bytes/read_text, os.read/fdopen.
READERS = {"open", "read_bytes", "read_text", "read", "fdopen"}
KEYISH = re.compile(r"\bkey(s|file|_path|_file|_fd|_fds|_pem)?\b")


def modules(top: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((REPO / top).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def import_nodes(tree: ast.AST, lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, except under ``if TYPE_CHECKING:``; inside functions
    (imports that run when the function does) only with `lazy`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            children: list[ast.AST] = list(node.orelse)
        elif isinstance(node, FUNCTIONS) and not lazy:
            continue
        else:
            children = [node]
        for child in children:
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            yield from import_nodes(child, lazy)


def imported(tree: ast.AST, module: str, is_package: bool, lazy: bool = True) -> set[str]:
    """The modules `tree` imports (for `from a import b`: a and a.b, b may be a module)."""
    found: set[str] = set()
    for node in import_nodes(tree, lazy):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join([*package[: len(package) - node.level + 1], base]).rstrip(".")
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def sandbox_imports_of_titus() -> list[str]:
    bad = []
    for name, path in modules("sandbox"):
        for target in imported(parse(path), name, path.name == "__init__.py"):
            if target == "titus" or target.startswith("titus."):
                bad.append(f"{path.relative_to(REPO)} imports {target}")
    return bad


def private_key_loads() -> list[str]:
    bad = []
    for _name, path in modules("titus"):
        rel = path.relative_to(REPO)
        if rel.parts[:2] == ("titus", "keyholder"):
            continue
        for node in ast.walk(parse(path)):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and OPENSSL_KEY_LOADERS.match(node.value):
                bad.append(f"{where}: binds OpenSSL's {node.value}")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in KEY_LOADERS:
                bad.append(f"{where}: calls {called}")
            elif called in READERS:
                receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
                if receiver == "os" and called == "open":
                    continue  # os.open passes the fd on, unread (supervisor/keyholder.py)
                what = [receiver] if receiver not in ("", "os", "io") else []
                what += [ast.unparse(arg) for arg in node.args[:1]]
                if any(KEYISH.search(text) for text in what):
                    bad.append(f"{where}: reads a key file ({ast.unparse(node)})")
    return bad


def supervisor_imports_of_the_connection_path() -> list[str]:
    known = {name: path for name, path in (*modules("titus"), *modules("sandbox"))}
    bad = []
    for start, path in modules("titus/supervisor"):
        seen: dict[str, str] = {start: start}
        todo = [start]
        while todo:
            name = todo.pop()
            mod_path = known[name]
            lazy = name.startswith("titus.supervisor")  # its own code, wherever it runs
            for target in imported(parse(mod_path), name, mod_path.name == "__init__.py", lazy):
                if target in CONNECTION_PATH:
                    chain = [target, name]
                    while chain[-1] != start:
                        chain.append(seen[chain[-1]])
                    bad.append(f"{path.relative_to(REPO)}: {' <- '.join(reversed(chain))}")
                elif target in known and target not in seen:
                    seen[target] = name
                    todo.append(target)
    return sorted(set(bad))


def test_sandbox_never_imports_titus() -> None:
    assert sandbox_imports_of_titus() == []


def test_only_the_key_holder_loads_private_keys() -> None:
    assert private_key_loads() == []


def test_the_supervisor_never_loads_the_worker_s_connection_path() -> None:
    assert supervisor_imports_of_the_connection_path() == []


def test_the_checks_see_what_they_look_for() -> None:
    """The readers find what is allowed where it is: a key loaded in the key holder, the
    zygote importing the connection path, a lazy import, a type-only one skipped."""
    keyholder = REPO / "titus/keyholder/signer.py"
    assert any(isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "load_pem_private_key"
               for n in ast.walk(parse(keyholder)))
    zygote = REPO / "titus/worker/zygote.py"
    assert "titus.worker.connection" in imported(parse(zygote), "titus.worker.zygote", False)
    cli = REPO / "sandbox/cli.py"
    assert "sandbox.explain" in imported(parse(cli), "sandbox.cli", False)  # inside a function
    assert "sandbox.explain" not in imported(parse(cli), "sandbox.cli", False, lazy=False)
    pool = REPO / "titus/supervisor/pool.py"
    assert "titus.supervisor.generation" not in imported(parse(pool), "titus.supervisor.pool",
                                                         False)  # under TYPE_CHECKING
