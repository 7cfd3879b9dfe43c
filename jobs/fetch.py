"""Fetching an image by URL for classification, only from hosts the operator allowed.

DIGITS let users classify an image by URL. A server that fetches URLs for its users can be
turned against its own network (SSRF), so: only `http`/`https`, only hosts listed in
`KDIGITS_ALLOWED_URL_HOSTS` (an exact host name, `host:port`, or `*.domain` for its
sub-domains), redirects followed by hand with every hop's host checked again (a redirect to any
other host is refused before it is requested), a byte cap enforced while streaming (and from
Content-Length before the body), a per-request timeout and an overall deadline, and no proxy
settings taken from the environment.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = frozenset({"http", "https"})


class FetchError(ValueError):
    """The URL is not allowed, or fetching it failed; the message says which and why."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 16 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 5


DEFAULT_FETCH_LIMITS = FetchLimits()


def parse_allowed_hosts(value: str | Iterable[str]) -> list[str]:
    """Allowed hosts from a `,`/space-separated string or an iterable, lower-cased."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return [item.strip().lower() for item in items if item.strip()]


def host_allowed(url: httpx.URL, allowed_hosts: Iterable[str]) -> bool:
    host = (url.host or "").lower().rstrip(".")
    port = url.port or (443 if url.scheme == "https" else 80)
    for entry in allowed_hosts:
        entry = entry.lower()
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif ":" in entry and not entry.startswith("["):
            name, _, entry_port = entry.rpartition(":")
            if host == name and entry_port.isdigit() and port == int(entry_port):
                return True
        elif host == entry.strip("[]"):
            return True
    return False


def check_url(url: str | httpx.URL, allowed_hosts: Iterable[str], what: str = "url") -> httpx.URL:
    """The parsed URL if its scheme and host are allowed; else FetchError naming the field."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, ValueError) as error:
        raise FetchError(f"{what}: {str(url)[:200]!r} is not a valid URL ({error})") from None
    if parsed.scheme not in SCHEMES:
        raise FetchError(f"{what}: only http and https URLs are fetched (got {parsed.scheme!r})")
    if not parsed.host:
        raise FetchError(f"{what}: {str(url)[:200]!r} has no host")
    allowed = list(allowed_hosts)
    if not host_allowed(parsed, allowed):
        if not allowed:
            reason = "no hosts are allowed (set KDIGITS_ALLOWED_URL_HOSTS)"
        else:
            reason = f"is not an allowed host ({', '.join(allowed)}; KDIGITS_ALLOWED_URL_HOSTS)"
        raise FetchError(f"{what}: host {parsed.host!r} {reason}")
    return parsed


def is_url(text: str) -> bool:
    lowered = text.strip().lower()
    return lowered.startswith("http://") or lowered.startswith("https://")


def fetch_url(
    url: str,
    allowed_hosts: Iterable[str],
    limits: FetchLimits = DEFAULT_FETCH_LIMITS,
    what: str = "url",
    client: httpx.Client | None = None,
) -> bytes:
    """The body at `url` (at most `limits.max_bytes`), following only allowed redirects."""
    allowed = list(allowed_hosts)
    current = check_url(url, allowed, what)
    deadline = time.monotonic() + limits.timeout_s
    own = client is None
    http = client or httpx.Client(
        follow_redirects=False, trust_env=False, timeout=httpx.Timeout(limits.timeout_s)
    )
    try:
        for _ in range(limits.max_redirects + 1):
            try:
                with http.stream(
                    "GET", current, headers={"Accept-Encoding": "identity"}, follow_redirects=False
                ) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(f"{what}: redirect without a Location header")
                        current = check_url(current.join(location), allowed, f"{what} redirect")
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"{what}: {current} answered HTTP {response.status_code}")
                    return _read_capped(response, limits, deadline, what)
            except httpx.TimeoutException:
                raise FetchError(
                    f"{what}: {current} timed out after {limits.timeout_s:g}s"
                ) from None
            except httpx.HTTPError as error:
                raise FetchError(f"{what}: fetching {current} failed: {error}") from None
        raise FetchError(f"{what}: more than {limits.max_redirects} redirects")
    finally:
        if own:
            http.close()


def _read_capped(
    response: httpx.Response, limits: FetchLimits, deadline: float, what: str
) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise FetchError(
            f"{what}: the image is {int(declared)} bytes, more than the {limits.max_bytes} allowed"
        )
    parts: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > limits.max_bytes:
            raise FetchError(f"{what}: the image is more than the {limits.max_bytes} bytes allowed")
        if time.monotonic() > deadline:
            raise FetchError(f"{what}: download took longer than {limits.timeout_s:g}s")
        parts.append(chunk)
    return b"".join(parts)
