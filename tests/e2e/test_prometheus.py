"""A real Prometheus (the Debian package) scraping a running `kdigits serve` during and after a
tiny training run: every query of every panel of the shipped Grafana dashboards returns data
(the DCGM GPU panels only need to be valid PromQL: that exporter may be absent), and
`promtool check metrics` accepts /metrics."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.dashboards import PanelQuery, all_queries
from controller.ray_local import free_port
from tests.conftest import require
from tests.e2e.conftest import Server, lenet

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL = "prom-lenet"
SCRAPE_INTERVAL_S = 1
INFERENCE_METRIC = "kdigits_inference_latency_seconds_bucket"
CONFIG = """\
global:
  scrape_interval: {interval}s
  evaluation_interval: {interval}s
scrape_configs:
  - job_name: kdigits
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


class Prometheus:
    """/usr/bin/prometheus on a free loopback port with a temporary config and TSDB."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(CONFIG.format(interval=SCRAPE_INTERVAL_S, target=target))
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready:\n{self.log_path.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.http.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.http.close()


def finite(result: list[dict[str, Any]]) -> list[float]:
    """The values of an instant-vector answer that are numbers (histogram_quantile gives NaN
    when nothing was observed in the window)."""
    values = [float(sample["value"][1]) for sample in result]
    return [v for v in values if not math.isnan(v)]


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    require(Path(binary).exists(), "prometheus not installed (apt-get install prometheus)")
    prom = Prometheus(binary, f"127.0.0.1:{server.port}", tmp_path_factory.mktemp("prometheus"))
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def classify_route(server: Server) -> bool:
    paths = server.get("/openapi.json").json().get("paths", {})
    return "/api/v1/models/{name}/classify" in paths


@pytest.fixture(scope="module")
def trained(
    server: Server, digits_dataset: dict[str, Any], digits_dir: Path, prometheus: Prometheus
) -> dict[str, Any]:
    """One short training run (and, when the API classifies, two classifications) scraped
    while it happens; returns the finished model and whether inference was exercised."""
    # Prometheus must see the counters before the job moves them, or increase() sees nothing.
    target = 'kdigits_job_submissions_total{kind="model",job="kdigits"}'
    deadline = time.monotonic() + 30
    while not prometheus.query(target) and time.monotonic() < deadline:
        time.sleep(SCRAPE_INTERVAL_S)
    r = server.post("/api/v1/models", json=lenet(MODEL, epochs=1))
    assert r.status_code == 201, r.text
    done = server.wait_finished(f"/api/v1/models/{MODEL}", timeout=240)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    classified = classify_route(server)
    if classified:
        image = next((digits_dir / "train" / "7").glob("*.png")).read_bytes()
        for _ in range(2):
            answer = server.post(
                f"/api/v1/models/{MODEL}/classify",
                files={"image_file": ("digit.png", image, "image/png")},
            )
            assert answer.status_code == 200, answer.text
            time.sleep(2 * SCRAPE_INTERVAL_S)
    # Wait until Prometheus has scraped the finished run.
    done_expr = f'kdigits_training_epoch{{model="{MODEL}"}} == 1'
    deadline = time.monotonic() + 30
    while not prometheus.query(done_expr):
        assert time.monotonic() < deadline, "Prometheus never scraped the finished run"
        time.sleep(SCRAPE_INTERVAL_S)
    time.sleep(3 * SCRAPE_INTERVAL_S)
    return {"model": done, "classified": classified}


QUERIES = all_queries()


@pytest.mark.parametrize(
    "panel", QUERIES, ids=[f"{q.dashboard}/{q.panel}/{q.ref_id}" for q in QUERIES]
)
def test_dashboard_panel_returns_data(
    panel: PanelQuery, prometheus: Prometheus, trained: dict[str, Any]
) -> None:
    expr = panel.resolved()
    if panel.optional:  # DCGM: the exporter may be absent, the query must still be valid
        prometheus.query(expr)
        return
    if INFERENCE_METRIC in expr:
        assert trained["classified"], "the training run must classify so inference is observed"
    deadline = time.monotonic() + 10 * SCRAPE_INTERVAL_S
    values = finite(prometheus.query(expr))
    while not values and time.monotonic() < deadline:  # rate() needs two samples in its window
        time.sleep(SCRAPE_INTERVAL_S)
        values = finite(prometheus.query(expr))
    assert values, f"{panel.dashboard} / {panel.panel}: no data for {expr}"


def test_the_training_run_is_in_prometheus(prometheus: Prometheus, trained: dict[str, Any]) -> None:
    """The panels show this run, not just any series."""
    loss = prometheus.query(f'kdigits_training_loss{{model="{MODEL}",split="val"}}')
    assert finite(loss) and finite(loss)[0] > 0
    accuracy = finite(prometheus.query(f'kdigits_training_accuracy{{model="{MODEL}"}}'))
    assert accuracy and all(0 <= a <= 1 for a in accuracy)
    succeeded = prometheus.query('kdigits_jobs{kind="model",phase="Succeeded"} >= 1')
    assert succeeded
    duration = prometheus.query(
        'increase(kdigits_job_duration_seconds_count{kind="model"}[1h]) > 0'
    )
    assert duration, "the finished job's duration never reached Prometheus"


def test_promtool_accepts_the_metrics(server: Server, trained: dict[str, Any]) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    text = server.get("/metrics").text
    assert f'model="{MODEL}"' in text
    proc = subprocess.run(
        [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
