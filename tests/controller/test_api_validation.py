"""REST admission and shapes without Ray: every bad input is a 422 naming its field; 404, 409,
paging, group filter, auth. The reconciler does not run here (see test_reconciler.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.api.main import create_app
from controller.api.routes import common
from controller.services import Services
from controller.settings import Settings
from jobs.specs import ObjectMeta, Phase, PretrainedModel, PretrainedModelSpec

LOCAL = ("127.0.0.1", 40000)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
    (root / "list.txt").write_text("a/1.png 0\n")
    (root / "labels.txt").write_text("a\nb\n")
    return root


@pytest.fixture
def services(tmp_path: Path, data_root: Path) -> Services:
    settings = Settings(
        home=tmp_path / "home",
        ray_address="http://127.0.0.1:9",  # nothing there: these tests never reach Ray
        data_roots=str(data_root),
        allowed_url_hosts="minio.example.com",
    )
    return Services.build(settings)


@pytest.fixture
def client(services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(common, "DELETE_WAIT_S", 0.0)
    app = create_app(services=services, run_reconciler=False)
    with TestClient(app, client=LOCAL) as c:
        yield c


def ds_body(name: str, data_root: Path, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {
            "source": {"folder": {"train": str(data_root / "train")}},
            "image": {"channels": 1, "width": 28, "height": 28},
        },
    }
    body["spec"].update(spec)
    return body


def model_body(name: str, dataset: str = "d", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"dataset": dataset, "network": {"standard": "lenet"}, **spec},
    }


def assert_422(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field, body
    assert field in body["reason"] and body["detail"]


def test_create_get_list(client: TestClient, data_root: Path) -> None:
    r = client.post("/api/v1/datasets", json=ds_body("d", data_root))
    assert r.status_code == 201, r.text
    obj = r.json()
    assert obj["apiVersion"] == "kdigits.io/v1alpha1" and obj["kind"] == "Dataset"
    assert obj["metadata"]["uid"] and obj["metadata"]["creationTimestamp"]
    assert obj["status"]["phase"] == "Pending"
    assert client.get("/api/v1/datasets/d").json()["metadata"]["uid"] == obj["metadata"]["uid"]
    r = client.post("/api/v1/datasets", json=ds_body("d", data_root))
    assert r.status_code == 409 and r.json()["field"] == "metadata.name"
    assert client.get("/api/v1/datasets/nope").status_code == 404
    assert client.get("/api/v1/datasets/d/stats").status_code == 404
    assert client.get("/api/v1/datasets/d/mean").status_code == 404
    r = client.post("/api/v1/models", json=model_body("m"))
    assert r.status_code == 201, r.text
    listing = client.get("/api/v1/models").json()
    assert listing["kind"] == "ModelList" and [i["metadata"]["name"] for i in listing["items"]] == [
        "m"
    ]
    assert client.get("/api/v1/models", params={"namespace": "other"}).json()["items"] == []
    assert client.get("/api/v1/pretrained-models").json()["items"] == []
    assert client.get("/api/v1/pretrained-models/x").status_code == 404


def test_paging_and_group(client: TestClient, data_root: Path) -> None:
    for i in range(5):
        body = ds_body(f"d{i}", data_root)
        body["metadata"]["labels"] = {"kdigits.io/group": "g1" if i < 3 else "g2"}
        assert client.post("/api/v1/datasets", json=body).status_code == 201
    first = client.get("/api/v1/datasets", params={"limit": 2}).json()
    token = first["metadata"]["continue"]
    assert [i["metadata"]["name"] for i in first["items"]] == ["d0", "d1"] and token
    second = client.get("/api/v1/datasets", params={"limit": 10, "continue": token}).json()
    assert [i["metadata"]["name"] for i in second["items"]] == ["d2", "d3", "d4"]
    g2 = client.get("/api/v1/datasets", params={"group": "g2"}).json()
    assert [i["metadata"]["name"] for i in g2["items"]] == ["d3", "d4"]
    assert_422(client.get("/api/v1/datasets", params={"continue": "xx"}), "continue")
    assert_422(client.get("/api/v1/datasets", params={"limit": 0}), "limit")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b, r: b["metadata"].update(name="Bad_Name"), "metadata.name"),
        (lambda b, r: b["spec"]["image"].update(channels=2), "spec.image.channels"),
        (lambda b, r: b["spec"]["image"].update(width=0), "spec.image.width"),
        (lambda b, r: b["spec"].update(encoding="gif"), "spec.encoding"),
        (lambda b, r: b["spec"].update(split={"valPercent": 120}), "spec.split.valPercent"),
        (lambda b, r: b["spec"].update(bogus=1), "spec.bogus"),
        (
            lambda b, r: b["spec"]["source"]["folder"].update(train="/etc"),
            "spec.source.folder.train",
        ),
        (
            lambda b, r: b["spec"]["source"]["folder"].update(train="relative/dir"),
            "spec.source.folder.train",
        ),
        (
            lambda b, r: b["spec"]["source"]["folder"].update(train=str(r / "train/../../..")),
            "spec.source.folder.train",
        ),
        (
            lambda b, r: b["spec"]["source"]["folder"].update(val=str(r / "missing")),
            "spec.source.folder.val",
        ),
        (
            lambda b, r: b["spec"].update(
                source={"textfile": {"train": str(r / "list.txt"), "labels": "/etc/passwd"}}
            ),
            "spec.source.textfile.labels",
        ),
        (
            lambda b, r: b["spec"].update(
                source={"s3": {"bucket": "data", "endpoint": "http://evil.example.com"}}
            ),
            "spec.source.s3.endpoint",
        ),
        (lambda b, r: b["spec"].update(source={}), "spec.source"),
    ],
)
def test_dataset_422(client: TestClient, data_root: Path, mutate: Any, field: str) -> None:
    body = ds_body("d", data_root)
    mutate(body, data_root)
    assert_422(client.post("/api/v1/datasets", json=body), field)


def test_symlink_escape_is_refused(client: TestClient, data_root: Path) -> None:
    (data_root / "escape").symlink_to("/etc")
    body = ds_body("d", data_root)
    body["spec"]["source"]["folder"]["train"] = str(data_root / "escape")
    assert_422(client.post("/api/v1/datasets", json=body), "spec.source.folder.train")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"dataset": "missing"}, "spec.dataset"),
        ({"network": {"standard": "no_such_net"}}, "spec.network.standard"),
        ({"network": {"standard": "lenet", "pretrained": {"name": "x"}}}, "spec.network"),
        (
            {"network": {"custom": {"python": "def build_network(): pass"}}},
            "spec.network.custom.python",
        ),
        ({"network": {"previous": {"model": "ghost"}}}, "spec.network.previous.model"),
        ({"network": {"pretrained": {"name": "ghost"}}}, "spec.network.pretrained.name"),
        ({"training": {"epochs": 0}}, "spec.training.epochs"),
        ({"solver": {"type": "lbfgs"}}, "spec.solver.type"),
        ({"solver": {"baseLr": -1}}, "spec.solver.baseLr"),
        ({"resources": {"workers": 0}}, "spec.resources.workers"),
        ({"maxRetries": 11}, "spec.maxRetries"),
    ],
)
def test_model_422(client: TestClient, data_root: Path, spec: dict[str, Any], field: str) -> None:
    assert client.post("/api/v1/datasets", json=ds_body("d", data_root)).status_code == 201
    body = model_body("m")
    body["spec"].update(spec)
    assert_422(client.post("/api/v1/models", json=body), field)


def test_namespace_mismatch_and_bad_query(client: TestClient, data_root: Path) -> None:
    body = ds_body("d", data_root)
    body["metadata"]["namespace"] = "a"
    r = client.post("/api/v1/datasets", params={"namespace": "b"}, json=body)
    assert_422(r, "metadata.namespace")
    assert_422(client.get("/api/v1/datasets", params={"namespace": "Not OK"}), "namespace")


def test_delete_used_dataset_409_abort_clone(client: TestClient, data_root: Path) -> None:
    assert client.post("/api/v1/datasets", json=ds_body("d", data_root)).status_code == 201
    assert client.post("/api/v1/models", json=model_body("m")).status_code == 201
    r = client.delete("/api/v1/datasets/d")
    assert r.status_code == 409 and "m" in r.json()["reason"]
    clone = client.post("/api/v1/models/m/clone", json={"name": "m2"})
    assert (
        clone.status_code == 201
        and clone.json()["spec"] == client.get("/api/v1/models/m").json()["spec"]
    )
    assert client.post("/api/v1/models/m/clone", json={"name": "m2"}).status_code == 409
    assert_422(client.post("/api/v1/models/m/clone", json={"name": "UPPER"}), "name")
    aborted = client.post("/api/v1/models/m/abort")
    assert aborted.status_code == 200
    assert "kdigits.io/abort-requested" in aborted.json()["metadata"]["annotations"]
    deleted = client.delete("/api/v1/models/m")
    assert deleted.status_code == 200 and deleted.json()["metadata"]["deletionTimestamp"]
    assert [t["phase"] for t in client.get("/api/v1/models/m2/history").json()] == ["Pending"]


def test_auth_outside_loopback(services: Services, data_root: Path) -> None:
    remote = ("10.1.2.3", 5555)
    app = create_app(services=services, run_reconciler=False)
    with TestClient(app, client=remote) as c:
        r = c.get("/api/v1/datasets")
        assert r.status_code == 401 and "KDIGITS_TOKEN" in r.json()["reason"]
        assert c.get("/healthz").status_code == 200
    services.settings.token = "s3cret"
    with TestClient(app, client=remote) as c:
        assert c.get("/api/v1/datasets").status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert c.get("/api/v1/datasets", headers=bad).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/v1/datasets", headers=good).status_code == 200
    app = create_app(services=services, bind_host="0.0.0.0", run_reconciler=False)
    with TestClient(app, client=LOCAL) as c:
        assert c.get("/api/v1/datasets").status_code == 401
        assert c.get("/api/v1/datasets", headers=good).status_code == 200


def test_serve_refuses_public_bind_without_token(tmp_path: Path) -> None:
    from controller.serve import ServeError, serve

    with pytest.raises(ServeError, match="KDIGITS_TOKEN"):
        serve("0.0.0.0", 5999, Settings(home=tmp_path))


def test_openapi_and_metrics(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/api/v1/datasets/{name}/stats",
        "/api/v1/datasets/{name}/mean",
        "/api/v1/models/{name}/metrics",
        "/api/v1/models/{name}/clone",
        "/api/v1/info",
    ):
        assert path in spec["paths"]
    text = client.get("/metrics").text
    assert 'kdigits_jobs{kind="model",phase="Running"} 0.0' in text
    assert "kdigits_http_requests_total" in text


def _pretrained(services: Services, name: str) -> None:
    """A published PretrainedModel straight in the store (its files play no part here)."""
    meta = ObjectMeta(name=name)
    obj = services.store.create(PretrainedModel(metadata=meta, spec=PretrainedModelSpec()))
    obj.status.phase = Phase.SUCCEEDED  # type: ignore[attr-defined]
    services.store.update_status(obj)


def _set_phase(services: Services, kind: str, name: str, phase: Phase) -> None:
    obj = services.store.get(kind, name, "default")
    obj.status.phase = phase  # type: ignore[attr-defined]
    services.store.update_status(obj)


def test_delete_pretrained_in_use_409(
    client: TestClient, services: Services, data_root: Path
) -> None:
    assert client.post("/api/v1/datasets", json=ds_body("d", data_root)).status_code == 201
    for name in ("pre", "other"):
        _pretrained(services, name)
    for model, source in (("m1", "pre"), ("m2", "pre"), ("m3", "other")):
        body = model_body(model, network={"pretrained": {"name": source}})
        assert client.post("/api/v1/models", json=body).status_code == 201
    r = client.delete("/api/v1/pretrained-models/pre")
    assert r.status_code == 409, r.text
    reason = (
        'pretrained model "pre" is used by model(s) m1, m2: wait until they finish, or abort them'
    )
    assert r.json() == {"detail": reason, "reason": reason}
    _set_phase(services, "Model", "m1", Phase.RUNNING)  # running counts, finished does not
    _set_phase(services, "Model", "m2", Phase.ABORTED)
    r = client.delete("/api/v1/pretrained-models/pre")
    assert r.status_code == 409 and "model(s) m1:" in r.json()["reason"], r.text
    _set_phase(services, "Model", "m1", Phase.FAILED)
    deleted = client.delete("/api/v1/pretrained-models/pre")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["metadata"]["deletionTimestamp"]
    late = client.post(
        "/api/v1/models", json=model_body("m4", network={"pretrained": {"name": "pre"}})
    )
    assert_422(late, "spec.network.pretrained.name")
    assert "being deleted" in late.json()["reason"]
    # a model whose own deletion was asked for holds nothing either
    assert client.delete("/api/v1/models/m3").status_code == 200
    assert client.delete("/api/v1/pretrained-models/other").status_code == 200
    assert client.delete("/api/v1/pretrained-models/none-such").status_code == 404


def test_reconciler_holds_a_pretrained_model_deleted_behind_rest(
    client: TestClient, services: Services, data_root: Path
) -> None:
    """kubectl delete (or a race with a new model) gets past the 409: the reconciler keeps the
    files and the object until the models that start from it have finished."""
    assert client.post("/api/v1/datasets", json=ds_body("d", data_root)).status_code == 201
    _pretrained(services, "pre")
    body = model_body("m", network={"pretrained": {"name": "pre"}})
    assert client.post("/api/v1/models", json=body).status_code == 201
    _set_phase(services, "Dataset", "d", Phase.FAILED)  # the next pass fails m: nothing runs
    services.store.mark_deleted("PretrainedModel", "pre", "default")
    services.reconciler.run_once()  # deletion first (m still Pending: held), then m fails
    held = client.get("/api/v1/pretrained-models/pre")
    assert held.status_code == 200, held.text
    assert held.json()["status"]["message"] == "deletion waits for model(s) m to finish"
    assert client.get("/api/v1/models/m").json()["status"]["phase"] == "Failed"
    services.reconciler.run_once()
    assert client.get("/api/v1/pretrained-models/pre").status_code == 404
