"""The key holder's serving loop (inside its jail).

The key holder runs in its own jail (set up by others).  Once serving, this
loop makes only these syscalls (measured with strace): epoll_wait, epoll_ctl,
recvmsg, sendmsg, getsockname + getsockopt (checking a received fd), write (the
log on fd 2), close, and from libcrypto getpid, getrandom and futex.  It creates
no socket and opens no file.  Everything arriving on a worker
channel is hostile; the worst a worker can get is its channel closed.

Transport: every worker channel is an AF_UNIX SOCK_SEQPACKET socket, one
keyproto frame per packet.  The supervisor (titus/supervisor/keyholder.py,
`new_channel`) creates the pair, keeps one end for
the worker and sends the other here over the control socket (also AF_UNIX
SOCK_SEQPACKET) as one packet: a keyproto grant (channel id, budget, key ids)
with the fd as SCM_RIGHTS.  EOF on the control socket means the supervisor is
gone, and the key holder exits.

A channel is closed, with a log line, on any malformed frame, any refusal
(wrong key, wrong shape, budget spent), a signing error, fds passed by the
worker, or a worker that does not read its answers.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import stat
from collections.abc import Callable, Iterable, Sequence

from titus.keyholder.signer import Budget, Refused, Signer
from titus.wire.keyproto import (
    MAX_GRANT,
    MAX_REQUEST,
    Grant,
    ProtocolError,
    Request,
    Response,
    Status,
    decode_grant,
    decode_request_packet,
    encode_response,
)

MAX_KEY_FILE = 1 << 20
_FD_SIZE = array.array("i").itemsize
_NONBLOCK = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)

Log = Callable[[str], None]


def log_stderr(line: str) -> None:
    """One plain line on fd 2: the only output a jailed key holder has."""
    with contextlib.suppress(OSError):
        os.write(2, f"keyholder: {line}\n".encode(errors="replace"))


class _Channel:
    """One worker's signing channel: its socket, what its grant allows, what it has used."""

    __slots__ = ("budget", "fd", "grant", "signed", "sock")

    def __init__(self, sock: socket.socket, grant: Grant) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.grant = grant
        self.budget = Budget(grant.budget)
        self.signed = 0


def _is_seqpacket(sock: socket.socket) -> bool:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_UNIX
        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_SEQPACKET
    )


# Plain ints: socket's MSG_* are IntFlag members, and a flag test on them costs an enum call.
_TRUNC, _CTRUNC = int(socket.MSG_TRUNC), int(socket.MSG_CTRUNC)
_DONTWAIT = int(socket.MSG_DONTWAIT)
_GRANT_ANC = socket.CMSG_SPACE(4 * _FD_SIZE)


class _Server:
    def __init__(self, control: socket.socket, signer: Signer, log: Log, max_channels: int):
        self.control = control
        self.signer = signer
        self.log = log
        self.max_channels = max_channels
        self.known_keys = frozenset(signer.keys.ids())
        # epoll, used directly: an event costs the same with 16 channels or max-children of
        # them (poll's cost grows with every open channel, on each of a connection's three
        # events), and selectors' bookkeeping cost more than the rest of an event.
        self.epoll = select.epoll()
        self.channels: dict[int, _Channel] = {}  # by fd: what an epoll event names

    def run(self) -> None:
        control_fd = self.control.fileno()
        self.epoll.register(control_fd, select.EPOLLIN)
        channels = self.channels
        poll = self.epoll.poll
        try:
            while True:
                for fd, _events in poll():
                    if fd == control_fd:
                        if not self._on_control():
                            return
                    else:
                        # A channel is closed only on its own event, and recvmsg never
                        # waits: an fd that is not (or no longer) a channel's is skipped.
                        chan = channels.get(fd)
                        if chan is not None:
                            self._on_channel(chan)
        finally:
            for chan in list(channels.values()):
                self._close(chan)
            self.epoll.close()

    # --- control socket -----------------------------------------------------------------------

    def _on_control(self) -> bool:
        """Take one grant; False on EOF (the supervisor is gone)."""
        try:
            data, ancdata, flags, _ = self.control.recvmsg(MAX_GRANT + 1, _GRANT_ANC)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            self.log(f"control socket failed ({e}); exiting")
            return False
        fds = _fds_from(ancdata)
        if not data and not fds:
            return False
        try:
            if flags & (_TRUNC | _CTRUNC):
                raise ProtocolError("truncated grant")
            if len(fds) != 1:
                raise ProtocolError(f"a grant carries exactly one fd, not {len(fds)}")
            grant = decode_grant(data)
            if not self.known_keys.issuperset(grant.key_ids):
                unknown = set(grant.key_ids) - self.known_keys
                raise ProtocolError(f"grant names unknown key(s) {sorted(unknown)}")
            if len(self.channels) >= self.max_channels:
                raise ProtocolError(f"already serving {len(self.channels)} channels")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fds[0])
            try:
                if not _is_seqpacket(sock):
                    raise ProtocolError("channel is not an AF_UNIX SOCK_SEQPACKET socket")
            except (OSError, ProtocolError):
                sock.detach()  # the fd is closed below, with any others
                raise
            fds.clear()  # the socket owns it now
        except (ProtocolError, OSError, ValueError) as e:
            self.log(f"control: rejected grant: {e}")
            for fd in fds:
                _close_fd(fd)
            return True
        chan = _Channel(sock, grant)
        self.channels[chan.fd] = chan
        self.epoll.register(chan.fd, select.EPOLLIN)
        return True

    # --- worker channels ----------------------------------------------------------------------

    def _on_channel(self, chan: _Channel) -> None:
        try:
            data, _anc, flags, _ = chan.sock.recvmsg(MAX_REQUEST + 1, 0, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.log(f"channel {chan.grant.channel_id}: receive failed ({e}); closed")
            self._close(chan)
            return
        if not data:
            self._close(chan)  # the worker is done (or dead): nothing to report
            return
        if flags & _CTRUNC:
            self._refuse(chan, None, f"protocol error: worker passed fds (flags {flags:#x})")
            return
        if flags & _TRUNC:
            self._refuse(chan, None, "protocol error: oversize packet")
            return
        try:
            req = decode_request_packet(data)
        except ProtocolError as e:
            self._refuse(chan, None, f"protocol error: {e}")
            return
        self._answer(chan, req)

    def _answer(self, chan: _Channel, req: Request) -> None:
        if req.key_id not in chan.grant.key_ids:
            self._refuse(
                chan,
                Response(Status.REFUSED_KEY, req.request_id),
                f"refused REFUSED_KEY: key not granted ({_what(req)})",
            )
            return
        try:
            sig = self.signer.sign(req.key_id, req.op, req.payload, chan.budget)
        except Refused as r:
            self._refuse(
                chan,
                Response(r.status, req.request_id),
                f"refused {r.status.name}: {r.reason} ({_what(req)})",
            )
            return
        except Exception as e:  # SigningError, or a bug: never let a worker crash us
            self._refuse(
                chan,
                Response(Status.ERROR, req.request_id),
                f"error: {type(e).__name__}: {e} ({_what(req)})",
            )
            return
        chan.signed += 1
        if not self._send(chan, Response(Status.OK, req.request_id, sig)):
            self.log(f"channel {chan.grant.channel_id}: could not answer ({_what(req)}); closed")
            self._close(chan)

    def _send(self, chan: _Channel, resp: Response) -> bool:
        try:
            frame = encode_response(resp)
            return chan.sock.sendmsg([frame], [], _NONBLOCK) == len(frame)
        except (OSError, ProtocolError):
            return False  # includes EAGAIN: a worker that doesn't read gets closed

    def _refuse(self, chan: _Channel, resp: Response | None, why: str) -> None:
        self.log(f"channel {chan.grant.channel_id}: {why}; closed")
        if resp is not None:
            self._send(chan, resp)
        self._close(chan)

    def _close(self, chan: _Channel) -> None:
        if self.channels.pop(chan.fd, None) is not None:
            self.epoll.unregister(chan.fd)
        chan.sock.close()


def _what(req: Request) -> str:
    """A request in a log line (built only when there is a line to write)."""
    return f"{req.op.name} key {req.key_id} request {req.request_id}"


def _fds_from(ancdata: Iterable[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(cdata) - len(cdata) % _FD_SIZE
            fds.extend(array.array("i", cdata[:usable]))
    return fds


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def serve(
    control_sock: socket.socket,
    signer: Signer,
    *,
    log: Log = log_stderr,
    max_channels: int = 4096,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve grants and signing requests until the control socket reaches EOF."""
    if not _is_seqpacket(control_sock):
        raise ValueError("the control socket must be AF_UNIX SOCK_SEQPACKET")
    server = _Server(control_sock, signer, log, max_channels)
    if ready is not None:
        ready()  # the loop's own fds exist: from here on a worker's channel is all that changes
    server.run()


def load_keys_from_fds(fds: Sequence[int], *, max_size: int = MAX_KEY_FILE) -> list[bytes]:
    """Read (and close) key files the supervisor opened for us, so it never reads them."""
    out: list[bytes] = []
    try:
        for fd in fds:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                raise ValueError(f"key fd {fd} is not a regular file or a pipe")
            buf = bytearray()
            while chunk := os.read(fd, 65536):
                buf += chunk
                if len(buf) > max_size:
                    raise ValueError(f"key fd {fd} holds more than {max_size} bytes")
            out.append(bytes(buf))
            buf[:] = bytes(len(buf))
    finally:
        for fd in fds:
            _close_fd(fd)
    return out
