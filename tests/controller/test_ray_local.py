"""The private local Ray head must start and take jobs whatever the home directory holds.

Ray >= 2.5x turns token authentication on for `ray start` when `~/.ray/auth_token` exists
(any local `ray.init()` leaves one behind); the head would then answer 401 to its own
readiness probe and to every client. This starts a real head with such a token in HOME.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from controller.ray_local import local_ray_head

pytestmark = pytest.mark.ray


def test_head_ignores_a_token_left_in_home(tmp_path: Path) -> None:
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("0" * 64)
    with local_ray_head(num_cpus=1, env={"HOME": str(tmp_path)}) as head:
        client = JobSubmissionClient(head.dashboard_url)
        sid = client.submit_job(entrypoint="python -c 'print(6 * 7)'")
        deadline = time.monotonic() + 120
        while client.get_job_status(sid) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            assert time.monotonic() < deadline, client.get_job_logs(sid)
            time.sleep(0.5)
        assert client.get_job_status(sid) == JobStatus.SUCCEEDED, client.get_job_logs(sid)
        assert "42" in client.get_job_logs(sid)
