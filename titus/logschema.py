"""Every log record titus writes, field by field: the one schema of its JSON log.

`make docs` renders it as docs/logging.md (for people) and
docs/logging.schema.json (JSON Schema, for tools); tests check that every
`logs.event(...)` call in titus names a documented event with documented
fields, and the test harness validates every record that a titus under test
writes.  A new event or field is added here first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# 127.0.0.1:443 or [::1]:443 (IPv4-mapped IPv6 addresses are written as IPv4).
ENDPOINT = r"^([0-9.]+|\[[0-9a-fA-F:.]+(%[^\]]+)?\]):[0-9]{1,5}$"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Field:
    """One field: its JSON type(s) and what it means.  `null` says the field may be null."""

    kind: str  # "string", "integer", "number", "boolean", "endpoint", "endpoints", "strings"
    meaning: str
    null: bool = False
    values: tuple[str, ...] = ()  # the only values it takes, when they are few

    def schema(self) -> dict[str, Any]:
        if self.kind == "endpoint":
            out: dict[str, Any] = {"type": "string", "pattern": ENDPOINT}
        elif self.kind == "endpoints":
            out = {"type": "array", "items": {"type": "string", "pattern": ENDPOINT}}
        elif self.kind == "strings":
            out = {"type": "array", "items": {"type": "string"}}
        else:
            out = {"type": self.kind}
        if self.values:
            out["enum"] = list(self.values)
        if self.null:
            out = {"anyOf": [out, {"type": "null"}]}
        return {"description": self.meaning, **out}

    @property
    def shown(self) -> str:
        """The type as docs/logging.md writes it."""
        kind = {"endpoint": "address", "endpoints": "list of addresses",
                "strings": "list of strings"}.get(self.kind, self.kind)
        if self.values:
            kind += ": " + " \\| ".join(f"`{v}`" for v in self.values)
        return kind + (" or null" if self.null else "")


@dataclass(frozen=True)
class Event:
    """One kind of record: the `event` field's value, when it is written, its fields."""

    meaning: str
    levels: tuple[str, ...]
    fields: dict[str, Field] = field(default_factory=dict)


COMMON = {
    "time": Field("string", "when the record was written: RFC 3339, UTC, milliseconds "
                            "(`2026-12-02T17:10:39.896Z`)"),
    "level": Field("string", "severity", values=LEVELS),
    "event": Field("string", "what happened: one of the events below"),
}
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"

OUTCOMES = ("ok", "handshake-failed", "no-vhost", "backend-failed", "client-reset",
            "backend-reset", "timeout", "error", "policy-violation", "killed", "worker-died",
            "client-not-allowed")
_PID = Field("integer", "the worker's pid")
_ERROR = Field("string", "the reason, one line")

EVENTS: dict[str, Event] = {
    "started": Event("titus is serving: listeners bound, key holder up", ("INFO",), {
        "listeners": Field("endpoints", "the addresses it accepts connections on"),
        "metrics": Field("endpoint", "the Prometheus endpoint", null=True),
        "vhosts": Field("integer", "number of vhosts"),
        "min_spare": Field("integer", "min-spare-children"),
        "max_children": Field("integer", "max-children"),
    }),
    "connection": Event(
        "one client connection, written when its worker has exited (WARNING: killed, a "
        "policy violation, a client certificate not allowed)", ("INFO", "WARNING"), {
            "conn_id": Field("integer", "connection number since start-up"),
            "client": Field("endpoint", "the client's address"),
            "local": Field("endpoint", "the address the client connected to"),
            "sni": Field("string", "the server name the client asked for", null=True),
            "vhost": Field("string", "the vhost chosen (its name)", null=True),
            "tls_version": Field("string", "e.g. TLSv1.3", null=True),
            "cipher": Field("string", "the cipher suite", null=True),
            "alpn": Field("string", "the ALPN protocol chosen", null=True),
            "client_cn": Field("string", "the verified client certificate's subject CN",
                               null=True),
            "client_subject": Field("string", "the verified client certificate's subject "
                                              "(RFC 4514, `CN=alice,O=Example`)", null=True),
            "backend": Field("string", "the backend connection, `local->peer` (two addresses)",
                             null=True),
            "bytes_in": Field("integer", "plaintext bytes from the client to the backend"),
            "bytes_out": Field("integer", "plaintext bytes from the backend to the client"),
            "handshake_ms": Field("number", "TLS handshake time", null=True),
            "duration_ms": Field("number", "accept to the worker's exit"),
            "outcome": Field("string", "how it ended", values=OUTCOMES),
            "detail": Field("string", "more about the outcome", null=True),
            "notes": Field("string", "what the supervisor noticed on the way", null=True),
            "worker_pid": Field("integer", "the worker's pid"),
            "worker_uid": Field("integer", "the worker's host uid"),
            "worker_exit": Field("integer", "the worker's exit code, or 128+signal", null=True),
            "violation": Field("string", "the seccomp violation that ended it: the call "
                               "with its arguments (user notification), else its name "
                               "(audit log)", null=True),
            "syscall": Field("string", "the forbidden system call's name", null=True),
        }),
    "config-notice": Event("something in the configuration worth knowing (start-up and "
                           "reload)", ("WARNING",), {
        "notice": Field("string", "FILE:LINE: what"),
    }),
    "reloaded": Event("SIGHUP: the new configuration serves new connections", ("INFO",), {
        "vhosts": Field("integer", "number of vhosts"),
        "listeners": Field("endpoints", "the addresses it accepts connections on"),
    }),
    "reload-refused": Event("SIGHUP: the new configuration cannot be used; nothing changed",
                            ("ERROR",), {"error": _ERROR}),
    "stopping": Event("SIGTERM: no new connections; those in flight may finish", ("INFO",), {
        "busy": Field("integer", "connections still in flight"),
    }),
    "stopped": Event("the supervisor exits", ("INFO",)),
    "connection-cap": Event("every one of max-children workers is busy: new connections wait "
                            "in the listen backlog (at most one record in 10 s; see "
                            "docs/sizing.md)", ("WARNING",), {
        "max_children": Field("integer", "max-children"),
        "busy": Field("integer", "workers serving a connection"),
        "hits": Field("integer", "times the cap was hit since the last such record"),
        "waiting": Field("integer", "connections waiting in the listen queues"),
    }),
    "spawn-failed": Event("a worker jail could not be made", ("WARNING",), {"reason": _ERROR}),
    "spawn-backoff": Event("repeated spawn failures: waiting before the next try", ("ERROR",), {
        "reason": _ERROR,
        "seconds": Field("number", "the wait"),
        "failures": Field("integer", "failures in a row"),
    }),
    "out-of-fds": Event("titus ran out of file descriptors; clients are refused until it "
                        "recovers", ("ERROR",), {
        "reason": _ERROR,
        "limit": Field("integer", "the supervisor's RLIMIT_NOFILE"),
        "workers": Field("integer", "workers alive"),
    }),
    "fds-recovered": Event("file descriptors are available again", ("INFO",), {
        "refused": Field("integer", "clients refused during the shortage"),
    }),
    "accept-failed": Event("accept() failed for want of memory or buffers", ("ERROR",),
                           {"error": _ERROR}),
    "zygote-failed": Event("the process that clones workers died or hung; it is replaced",
                           ("ERROR",), {
        "reason": _ERROR,
        "pending": Field("integer", "workers it still owed"),
    }),
    "zygote-restart-failed": Event("the zygote could not be restarted; retried", ("ERROR",),
                                   {"error": _ERROR}),
    "keyholder-died": Event("the key holder exited; it is restarted", ("ERROR",), {
        "exit": Field("integer", "its exit code, or 128+signal", null=True),
        "violation": Field("string", "the seccomp violation that killed it", null=True),
    }),
    "keyholder-restarted": Event("a new key holder serves", ("INFO",), {
        "pid": Field("integer", "its pid", null=True),
    }),
    "keyholder-restart-failed": Event("the key holder could not be restarted; retried",
                                      ("ERROR",), {
        "error": _ERROR,
        "retry_in": Field("number", "seconds until the next try"),
    }),
    "keyholder-channel-failed": Event("no channel to the key holder for a new worker",
                                      ("ERROR",), {"error": _ERROR}),
    "forged-control-message": Event("a worker sent a malformed message; it was killed",
                                    ("WARNING",), {"pid": _PID, "error": _ERROR}),
    "unexpected-control-message": Event("a worker sent a message out of turn; it was killed",
                                        ("WARNING",), {
        "pid": _PID,
        "state": Field("string", "the worker's state"),
        "message": Field("string", "the message's type"),
    }),
    "forbidden-backend-request": Event("a worker asked for a vhost its connection cannot "
                                       "have; it was killed", ("WARNING",), {
        "pid": _PID,
        "vhost": Field("integer", "the vhost index it asked for"),
    }),
    "jail-stderr": Event("a line a jailed process wrote to stderr (untrusted)", ("WARNING",), {
        "line": Field("string", "the line, escaped"),
    }),
    "jail-stderr-dropped": Event("jail stderr lines dropped (rate limit)", ("WARNING",), {
        "lines": Field("integer", "how many"),
    }),
    "backend-addresses-changed": Event("a backend name's addresses changed (dns-refresh); new "
                                       "connections go to the new ones", ("INFO",), {
        "vhost": Field("string", "the vhost"),
        "backend": Field("string", "the backend name"),
        "before": Field("endpoints", "the addresses until now"),
        "after": Field("endpoints", "the addresses from now on"),
    }),
    "backend-refresh-failed": Event("a backend name did not resolve in the background; its "
                                    "addresses stay (logged once until it resolves again)",
                                    ("WARNING",), {
        "vhost": Field("string", "the vhost"),
        "backend": Field("string", "the backend name"),
        "error": _ERROR,
        "kept": Field("endpoints", "the addresses still used"),
    }),
    "backend-refresh-recovered": Event("a backend name resolves again", ("INFO",), {
        "vhost": Field("string", "the vhost"),
        "backend": Field("string", "the backend name"),
    }),
    "ocsp-response-loaded": Event("an OCSP response is stapled from now on", ("INFO", "WARNING"),
                                  {
        "vhost": Field("string", "the vhost"),
        "file": Field("string", "the response file"),
        "status": Field("string", "the certificate's status", values=("good", "revoked",
                                                                       "unknown")),
        "next_update": Field("string", "when the response expires (RFC 3339)", null=True),
        "bytes": Field("integer", "size of the response"),
    }),
    "ocsp-not-stapled": Event("an OCSP response file is not used", ("WARNING",), {
        "vhost": Field("string", "the vhost"),
        "file": Field("string", "the response file"),
        "reason": _ERROR,
    }),
}


def event_schema(name: str) -> dict[str, Any]:
    """JSON Schema of one event's records."""
    event = EVENTS[name]
    props: dict[str, Any] = {
        "time": {**COMMON["time"].schema(), "pattern": TIME_PATTERN},
        "level": {"description": COMMON["level"].meaning, "enum": list(event.levels)},
        "event": {"description": event.meaning, "const": name},
    }
    props.update({key: value.schema() for key, value in event.fields.items()})
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


def json_schema() -> dict[str, Any]:
    """The whole log: each line is one of the events."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "titus log record",
        "description": "One line of titus's JSON log (--log-format json). Generated from "
                       "titus/logschema.py by `make docs`.",
        "$defs": {name: event_schema(name) for name in EVENTS},
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in EVENTS],
    }
