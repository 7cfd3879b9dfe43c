"""Fetching images by URL against real HTTP servers on 127.0.0.1: allowed hosts, redirects, caps.

Two servers run on loopback. The allowed one is reached as `127.0.0.1`; the other is reached
as `localhost` (the same interface, a different host name), which is not on the allow-list, so
every refused request can also be checked to have never reached it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from jobs.fetch import FetchError, FetchLimits, check_url, fetch_url, parse_allowed_hosts
from tests.jobs.inference_helpers import png_bytes

DIGIT = png_bytes(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))


@dataclass
class Server:
    port: int
    hits: list[str] = field(default_factory=list)
    other_port: int = 0


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            return

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            server.hits.append(self.path)
            path = self.path
            if path == "/digit.png":
                self._send(200, DIGIT, {"Content-Type": "image/png"})
            elif path == "/hop":
                self._send(302, headers={"Location": "/digit.png"})
            elif path == "/two-hops":
                self._send(301, headers={"Location": f"http://127.0.0.1:{server.port}/hop"})
            elif path == "/away":
                location = f"http://localhost:{server.other_port}/digit.png"
                self._send(302, headers={"Location": location})
            elif path == "/away-scheme":
                self._send(302, headers={"Location": "file:///etc/passwd"})
            elif path == "/loop":
                self._send(307, headers={"Location": "/loop"})
            elif path == "/declared-big":
                self._send(200, b"x" * 10, {"Content-Length": str(10**9)})
            elif path == "/streamed-big":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"y" * 65536
                for _ in range(40):
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/slow":
                time.sleep(2)
                self._send(200, DIGIT)
            else:
                self._send(404, b"no")

    return Handler


@pytest.fixture()
def servers() -> Iterator[tuple[Server, Server]]:
    running = []
    made = []
    for _ in range(2):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        info = Server(port=httpd.server_address[1])
        httpd.RequestHandlerClass = _handler(info)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        running.append(httpd)
        made.append(info)
    made[0].other_port = made[1].port
    try:
        yield made[0], made[1]
    finally:
        for httpd in running:
            httpd.shutdown()
            httpd.server_close()


ALLOWED = ["127.0.0.1"]


def test_fetch_from_allowed_host_with_redirects(servers) -> None:
    allowed, _ = servers
    base = f"http://127.0.0.1:{allowed.port}"
    assert fetch_url(f"{base}/digit.png", ALLOWED) == DIGIT
    assert fetch_url(f"{base}/hop", ALLOWED) == DIGIT
    assert fetch_url(f"{base}/two-hops", ALLOWED) == DIGIT
    assert allowed.hits == ["/digit.png", "/hop", "/digit.png", "/two-hops", "/hop", "/digit.png"]
    assert fetch_url(f"{base}/digit.png", [f"127.0.0.1:{allowed.port}"]) == DIGIT


def test_disallowed_host_never_contacted(servers) -> None:
    allowed, other = servers
    with pytest.raises(FetchError, match="host 'localhost' is not an allowed host"):
        fetch_url(f"http://localhost:{other.port}/digit.png", ALLOWED)
    with pytest.raises(FetchError, match="no hosts are allowed"):
        fetch_url(f"http://127.0.0.1:{allowed.port}/digit.png", [])
    with pytest.raises(FetchError, match="not an allowed host"):
        fetch_url(f"http://127.0.0.1:{allowed.port}/digit.png", ["127.0.0.1:1"])
    assert other.hits == [] and allowed.hits == []


def test_redirect_to_disallowed_host_refused(servers) -> None:
    allowed, other = servers
    with pytest.raises(FetchError, match="url redirect: host 'localhost' is not an allowed host"):
        fetch_url(f"http://127.0.0.1:{allowed.port}/away", ALLOWED)
    with pytest.raises(FetchError, match="only http and https"):
        fetch_url(f"http://127.0.0.1:{allowed.port}/away-scheme", ALLOWED)
    assert allowed.hits == ["/away", "/away-scheme"]
    assert other.hits == []  # the redirect target was never requested


def test_caps_and_failures(servers) -> None:
    allowed, _ = servers
    base = f"http://127.0.0.1:{allowed.port}"
    small = FetchLimits(max_bytes=1_000_000, timeout_s=0.5, max_redirects=3)
    with pytest.raises(FetchError, match="1000000000 bytes, more than the 1000000 allowed"):
        fetch_url(f"{base}/declared-big", ALLOWED, small)
    with pytest.raises(FetchError, match="more than the 1000000 bytes allowed"):
        fetch_url(f"{base}/streamed-big", ALLOWED, small)
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch_url(f"{base}/loop", ALLOWED, small)
    with pytest.raises(FetchError, match="timed out after 0.5s"):
        fetch_url(f"{base}/slow", ALLOWED, small)
    with pytest.raises(FetchError, match="answered HTTP 404"):
        fetch_url(f"{base}/nothing", ALLOWED, small)


def test_url_checks() -> None:
    hosts = parse_allowed_hosts("images.example, *.cdn.example 10.0.0.5:8080")
    assert hosts == ["images.example", "*.cdn.example", "10.0.0.5:8080"]
    assert check_url("https://images.example/a.png", hosts).host == "images.example"
    assert check_url("https://a.b.cdn.example/x.png", hosts)
    assert check_url("http://10.0.0.5:8080/x.png", hosts)
    refused = {
        "https://cdn.example/x.png": "not an allowed host",
        "https://images.example.evil.com/a.png": "not an allowed host",
        "https://images.example@evil.com/a.png": "host 'evil.com'",
        "http://10.0.0.5/x.png": "not an allowed host",
        "file:///etc/passwd": "only http and https",
        "ftp://images.example/a.png": "only http and https",
        "http:///nohost": "has no host",
    }
    for url, message in refused.items():
        with pytest.raises(FetchError, match=message):
            check_url(url, hosts)
