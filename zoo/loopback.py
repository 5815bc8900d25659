"""A local HTTP file server with Range support and switchable faults.

Why it is in the package and not only in the tests: the fetch tests need a real server on
127.0.0.1 that misbehaves on purpose (dropped connections, no Range, stalls, wrong lengths, HTML
error pages), and the demo serves random-weight checkpoints from it so that the real download,
hash and load path runs end to end without the internet. Standard library only.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import re
import socket
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

from zoo.fileio import write_atomic

_CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_HTML_ERROR = b"<!DOCTYPE html><html><head><title>Error</title></head><body>Access denied</body></html>\n"


@dataclass(frozen=True)
class Fault:
    """How the server misbehaves for one path; `times` limits it to the first N requests (None: always).

    Build one with the named constructors below rather than by hand.
    """

    kind: str
    times: int | None = None
    after_bytes: int = 0
    status: int = 500
    seconds: float = 0.0
    location: str = ""
    shortfall: int = 0
    retry_after: str | None = None

    @classmethod
    def drop(cls, after_bytes: int, times: int | None = 1) -> Fault:
        """Send the headers (with the true length) and `after_bytes` of the body, then cut the connection."""
        return cls("drop", times=times, after_bytes=after_bytes)

    @classmethod
    def error(cls, status: int, times: int | None = None, retry_after: str | None = None) -> Fault:
        """Answer with an HTTP error status (e.g. 500 twice, then serve normally; 404 always)."""
        return cls("status", times=times, status=status, retry_after=retry_after)

    @classmethod
    def no_range(cls, times: int | None = None) -> Fault:
        """Ignore `Range` and `If-Range`: always 200 with the whole file, like many simple servers."""
        return cls("no_range", times=times)

    @classmethod
    def no_content_length(cls, times: int | None = None) -> Fault:
        """Omit Content-Length; the end of the body is marked only by closing the connection."""
        return cls("no_content_length", times=times)

    @classmethod
    def short_content_length(cls, shortfall: int, times: int | None = None) -> Fault:
        """Announce `shortfall` bytes fewer than the body that is then sent."""
        return cls("short_content_length", times=times, shortfall=shortfall)

    @classmethod
    def stall(cls, seconds: float, after_bytes: int = 0, times: int | None = 1) -> Fault:
        """Send headers and `after_bytes`, go silent for `seconds` (ended early by `release`), send the rest."""
        return cls("stall", times=times, seconds=seconds, after_bytes=after_bytes)

    @classmethod
    def html_200(cls, times: int | None = None) -> Fault:
        """Answer 200 with an HTML error page instead of the file (captive portals, CDN errors)."""
        return cls("html_200", times=times)

    @classmethod
    def redirect(cls, location: str, status: int = 302, times: int | None = None) -> Fault:
        """Redirect to another path (or absolute URL) on every request."""
        return cls("redirect", times=times, status=status, location=location)


@dataclass
class LoggedRequest:
    """One request as the server saw it, so tests can count requests and bytes actually served.

    Logged on arrival; `status` and `body_bytes` are filled in before the client can see them, so a
    client that got its answer always finds it complete in the log.
    """

    method: str
    path: str
    headers: dict[str, str]
    fault: str | None
    status: int = 0
    body_bytes: int = 0

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class _State:
    root: Path
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    log: list[LoggedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)

    def take_fault(self, path: str) -> Fault | None:
        """The first queued fault for `path`, consuming one of its `times`."""
        with self.lock:
            queue = self.faults.get(path)
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                if fault.times <= 1:
                    queue.pop(0)
                else:
                    queue[0] = replace(fault, times=fault.times - 1)
            return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Silence the stdlib's per-request stderr line; the request log replaces it."""

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    # -- helpers -------------------------------------------------------------------------------------------

    def _serve(self, head: bool) -> None:
        state = self.server.state
        path = unquote(urlsplit(self.path).path)
        fault = state.take_fault(path)
        self.close_connection = True  # one request per connection keeps faults and logs simple
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._record = LoggedRequest(self.command, path, headers, fault and fault.kind)
        with state.lock:
            state.log.append(self._record)
        self._respond(path, fault, head)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._record.status = code
        super().send_response(code, message)

    def _write(self, data: bytes) -> None:
        self._record.body_bytes += len(data)  # counted first: the client may read it at once
        self.wfile.write(data)

    def _respond(self, path: str, fault: Fault | None, head: bool) -> None:
        kind = fault.kind if fault else None
        file = self._resolve(path)
        if kind == "status":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._simple(fault.status, b"error\n", "text/plain", head, extra)
        elif kind == "redirect":
            self._simple(fault.status, b"", "text/plain", head, {"Location": fault.location})
        elif kind == "html_200":
            self._simple(200, _HTML_ERROR, "text/html; charset=utf-8", head)
        elif file is None:
            self._simple(404, b"not found\n", "text/plain", head)
        else:
            self._send_file(file, fault, head)

    def _send_file(self, file: Path, fault: Fault | None, head: bool) -> None:
        """200 or 206 (honouring Range and If-Range unless the fault says otherwise), or 416."""
        kind = fault.kind if fault else None
        st = file.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end, status = 0, size, 200
        ranged = self.headers.get("Range")
        if ranged and kind != "no_range" and self.headers.get("If-Range") in (None, etag, last_modified):
            parsed = self._parse_range(ranged, size)
            if parsed is None:
                self._simple(416, b"", "text/plain", head, {"Content-Range": f"bytes */{size}"})
                return
            (start, end), status = parsed, 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "none" if kind == "no_range" else "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        self.send_header("Connection", "close")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if kind == "short_content_length":
            self.send_header("Content-Length", str(max(0, end - start - fault.shortfall)))
        elif kind != "no_content_length":
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if head:
            return
        if kind not in ("drop", "stall"):
            self._copy(file, start, end)
            return
        pause_at = min(end, start + fault.after_bytes)
        self._copy(file, start, pause_at)
        if kind == "drop":
            self._cut()
        else:
            self.server.state.released.wait(fault.seconds)
            self._copy(file, pause_at, end)

    def _copy(self, file: Path, start: int, end: int) -> None:
        """Write file[start:end] (less if the client went away)."""
        try:
            with file.open("rb") as f:
                f.seek(start)
                while start < end:
                    chunk = f.read(min(_CHUNK, end - start))
                    if not chunk:
                        break
                    self._write(chunk)
                    start += len(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its read timeout)
            pass

    def _cut(self) -> None:
        """End the connection mid-body: the client sees fewer bytes than Content-Length promised."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _simple(
        self, status: int, body: bytes, ctype: str, head: bool, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self._write(body)

    def _resolve(self, path: str) -> Path | None:
        """The served file for a URL path, never outside the root."""
        root = self.server.state.root
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int] | None:
        """(start, end-exclusive) of a single `bytes=` range, or None when it is unsatisfiable."""
        m = _RANGE_RE.fullmatch(header.strip())
        if not m or not (m.group(1) or m.group(2)):
            return None
        if not m.group(1):  # suffix range: the last N bytes
            n = int(m.group(2))
            return (max(0, size - n), size) if n > 0 and size > 0 else None
        start = int(m.group(1))
        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
        return (start, end) if start < size and start < end else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    state: _State


class LoopbackServer:
    """Serve the files under `root` on http://127.0.0.1:<ephemeral port>/ from a background thread.

    `with LoopbackServer(root) as srv: srv.url("a.pth")`. Faults are set per URL path with
    `srv.set_fault("a.pth", Fault.drop(1000), Fault.no_range())` (applied in turn, each for its
    `times`); `srv.requests` is the log of what was served.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._state = _State(root=self.root)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LoopbackServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.state = self._state
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._state.released.set()  # end any stall so its thread exits promptly
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("LoopbackServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def url(self, relpath: str) -> str:
        """The URL of a file under the root (relative POSIX path)."""
        return self.base_url + quote(relpath.lstrip("/"))

    def put(self, relpath: str, data: bytes) -> Path:
        """Write a file to serve (atomically, so a concurrent request never sees half of it)."""
        target = self.root / relpath.lstrip("/")
        write_atomic(target, data)
        return target

    def set_fault(self, relpath: str, *faults: Fault) -> None:
        """Replace the fault queue of a path; a fault with `times=None` stays until cleared."""
        with self._state.lock:
            self._state.faults["/" + relpath.lstrip("/")] = list(faults)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def release(self) -> None:
        """End every current and future stall now (tests use it to hold a download open on purpose)."""
        self._state.released.set()

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._state.lock:
            return list(self._state.log)

    def requests_for(self, relpath: str, method: str = "GET") -> list[LoggedRequest]:
        path = "/" + relpath.lstrip("/")
        return [r for r in self.requests if r.path == path and r.method == method]

    def bytes_served(self, relpath: str) -> int:
        """Body bytes actually written for `relpath` over all GET requests."""
        return sum(r.body_bytes for r in self.requests_for(relpath))
