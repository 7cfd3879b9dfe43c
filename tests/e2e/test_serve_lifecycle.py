"""`kdigits serve` with its own Ray head (no KDIGITS_RAY_ADDRESS): it starts one on 127.0.0.1,
a SIGKILLed serve's head is adopted by the next serve (no second head, jobs keep running), and
SIGTERM stops serve and its head with no process left behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Server

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def test_own_head_adopted_after_kill9_and_stopped_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = Server(home, {"KDIGITS_RAY_ADDRESS": "", "KDIGITS_LOCAL_RAY_CPUS": "1"}).start()
    try:
        info = server.wait_for("/api/v1/info", lambda i: i["ray"]["total"].get("CPU"), 30)
        assert info["ray"]["available"] and info["ray"]["total"]["CPU"] == 1
        record = json.loads((home / "ray-head.json").read_text())
        temp_dir = record["temp_dir"]
        assert processes_mentioning(temp_dir)

        server.kill9()  # serve cannot clean up: its head lives on, recorded in HOME
        assert processes_mentioning(temp_dir)
        server.start()
        again = server.get("/api/v1/info").json()
        assert again["ray"]["address"] == info["ray"]["address"]  # adopted, not a second head

        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 45
    finally:
        if server.process is not None:
            server.stop()
    deadline = time.monotonic() + 10
    while processes_mentioning(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(temp_dir) == []
    assert not (home / "ray-head.json").exists()
    assert not Path(temp_dir).exists()
