"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 endpoint (moto's server).

The S3 store's retry and resume logic has to be proven against the failures S3 really produces
(503 SlowDown, 500 InternalError, dropped connections, silent peers, bodies cut short), over a
real socket, with boto3 unpatched. The proxy forwards every request to the upstream endpoint
unless a queued or standing fault says otherwise, and records what it saw.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

FaultKind = Literal["status", "reset", "hang", "truncate"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    status: answer `status` with an S3 error document carrying `code` (nothing is forwarded).
    reset: drop the connection with a TCP reset instead of answering.
    hang: accept the request and never answer.
    truncate: forward, then send the headers and only the first half of the body, and close.
    `methods` limits which requests the fault applies to (empty: any); `after` runs once the
    fault has been served, before the connection closes.
    """

    kind: FaultKind
    status: int = 503
    code: str = "SlowDown"
    methods: frozenset[str] = frozenset()
    after: Callable[[], None] | None = None

    def applies_to(self, method: str) -> bool:
        return not self.methods or method in self.methods


SLOW_DOWN = Fault("status", 503, "SlowDown")
INTERNAL_ERROR = Fault("status", 500, "InternalError")
RESET = Fault("reset")
HANG = Fault("hang")
TRUNCATE_GET = Fault("truncate", methods=frozenset({"GET"}))


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it, and the fault it got (None: forwarded)."""

    method: str
    path: str
    headers: dict[str, str]
    fault: FaultKind | None


@dataclass
class _Plan:
    queued: list[Fault] = field(default_factory=list)
    always: Fault | None = None
    seen: list[Seen] = field(default_factory=list)


class FaultProxy:
    """`with FaultProxy(upstream) as proxy:` serves on `proxy.url` until the block ends."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self._plan = _Plan()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_next(self, *faults: Fault) -> None:
        """Queue faults; each is served to the next request it applies to."""
        with self._lock:
            self._plan.queued.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Serve `fault` to every request it applies to (after the queue); None: stop."""
        with self._lock:
            self._plan.always = fault

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._plan.seen)

    def faults_served(self) -> int:
        return sum(1 for request in self.seen if request.fault is not None)

    def _pick(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            fault = next((f for f in self._plan.queued if f.applies_to(method)), None)
            if fault is not None:
                self._plan.queued.remove(fault)
            elif self._plan.always is not None and self._plan.always.applies_to(method):
                fault = self._plan.always
            self._plan.seen.append(Seen(method, path, headers, fault.kind if fault else None))
            return fault

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Quiet: the test asserts on `proxy.seen` instead."""

            def do_GET(self) -> None:
                proxy._serve(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = _read_body(handler)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        fault = self._pick(handler.command, handler.path, headers)
        if fault is None:
            self._answer(handler, *self._forward(handler, body))
        elif fault.kind == "status":
            self._answer_error(handler, fault)
        elif fault.kind == "reset":
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.close_connection = True
        elif fault.kind == "hang":
            self._stopping.wait(timeout=60)
            handler.close_connection = True
        else:
            status, reason, response_headers, data = self._forward(handler, body)
            self._answer(
                handler, status, reason, response_headers, data[: len(data) // 2], len(data)
            )
            handler.wfile.flush()
            handler.close_connection = True
        if fault is not None and fault.after is not None:
            fault.after()

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            headers = {
                name: value
                for name, value in handler.headers.items()
                if name.lower() not in _HOP_BY_HOP
            }
            headers["Content-Length"] = str(len(body))
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        data: bytes,
        declared_length: int | None = None,
    ) -> None:
        handler.send_response_only(status, reason)
        length_header = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                length_header = value
            elif lower not in _HOP_BY_HOP:
                handler.send_header(name, value)
        if handler.command == "HEAD" or status in (204, 304):
            if length_header is not None:
                handler.send_header("Content-Length", length_header)
            handler.end_headers()
            return
        length = len(data) if declared_length is None else declared_length
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _answer_error(handler: BaseHTTPRequestHandler, fault: Fault) -> None:
        document = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{fault.code}</Code><Message>injected by the test proxy</Message>"
            "<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        handler.send_response_only(fault.status)
        handler.send_header("Content-Type", "application/xml")
        if handler.command == "HEAD":
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_header("Content-Length", str(len(document)))
        handler.end_headers()
        handler.wfile.write(document)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The whole request body, whether sized or sent with chunked transfer encoding."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""
