"""REST in the cluster shares kubectl's RBAC: the controller POSTs real TokenReview and
SubjectAccessReview objects to the API server (kmock, with the two review endpoints served by
this test through kmock's routing) and acts on the answers: 401, 403, or the CRs themselves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from fastapi.testclient import TestClient
from kubernetes.client import ApiClient

from controller.api.main import create_app
from controller.operator.cluster import build_services
from controller.ray_local import free_port
from controller.settings import Settings
from tests.operator.apiserver import RunningApiServer
from tests.operator.conftest import client_for
from tests.operator.helpers import apply, get

USERS = {
    "alice-token": {"username": "alice", "uid": "u-alice", "groups": ["system:authenticated"]},
    "bob-token": {"username": "bob", "uid": "u-bob", "groups": ["viewers"]},
}
# What the cluster's RBAC grants (who, namespace, resource) -> verbs; "" = every namespace.
GRANTS: dict[tuple[str, str, str], set[str]] = {
    ("alice", "team-a", "datasets"): {"get", "list", "create", "delete"},
    ("alice", "team-a", "models"): {"get", "list"},
    ("bob", "team-b", "datasets"): {"get", "list"},
    ("admin", "", "datasets"): {"get", "list", "create", "delete"},
}
STATIC_TOKEN = "static-cli-token"
USERS["admin-token"] = {"username": "admin", "uid": "u-admin", "groups": ["system:masters"]}


def token_review(request: kmock.Request) -> dict[str, Any]:
    spec = request.data["spec"]
    user = USERS.get(spec.get("token", ""))
    status = {"authenticated": True, "user": user} if user else {"authenticated": False}
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": spec,
        "status": status,
    }


def access_review(request: kmock.Request) -> dict[str, Any]:
    spec = request.data["spec"]
    attrs = spec["resourceAttributes"]
    assert attrs["group"] == "kdigits.io"
    namespace = attrs.get("namespace", "")
    verbs = GRANTS.get((spec["user"], namespace, attrs["resource"]), set()) | GRANTS.get(
        (spec["user"], "", attrs["resource"]), set()
    )
    allowed = attrs["verb"] in verbs
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": spec,
        "status": {"allowed": allowed, **({} if allowed else {"reason": "no RBAC rule"})},
    }


@pytest.fixture(scope="module")
def client(
    apiserver: RunningApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    def serve_reviews() -> None:
        api = apiserver.api
        api[kmock.resource("authentication.k8s.io/v1/tokenreviews")] << token_review
        api[kmock.resource("authorization.k8s.io/v1/subjectaccessreviews")] << access_review

    apiserver.call(serve_reviews)
    home = tmp_path_factory.mktemp("home")
    (home / "data" / "train" / "a").mkdir(parents=True)
    settings = Settings(
        home=home,
        ray_address=f"http://127.0.0.1:{free_port()}",
        data_roots=str(home / "data"),
        token=STATIC_TOKEN,  # the chart's optional static token for the CLI
    )
    services = build_services(settings, client_for(apiserver.url))
    app = create_app(services=services, run_reconciler=False)  # REST only: nothing runs here
    with TestClient(app) as test_client:
        yield test_client


def as_user(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def dataset_body(name: str, home: Path) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"source": {"folder": {"train": str(home / "data" / "train")}}},
    }


def reviews(apiserver: RunningApiServer, plural: str) -> list[dict[str, Any]]:
    group = "authentication.k8s.io" if plural == "tokenreviews" else "authorization.k8s.io"
    requests = apiserver.call(lambda: list(apiserver.api[kmock.resource(f"{group}/v1/{plural}")]))
    return [r.data["spec"] for r in requests]


def test_unauthenticated_requests_get_401(client: TestClient) -> None:
    assert client.get("/api/v1/datasets").status_code == 401
    assert client.get("/api/v1/datasets", headers={"Authorization": "Basic x"}).status_code == 401
    wrong = client.get("/api/v1/datasets", headers=as_user("stolen-token"))
    assert wrong.status_code == 401 and "TokenReview" in wrong.json()["reason"]
    # probes and Prometheus need no token
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_allowed_requests_act_on_the_custom_resources(
    client: TestClient, apiserver: RunningApiServer, kube: ApiClient
) -> None:
    home = client.app.state.services.settings.home_dir  # type: ignore[attr-defined]
    created = client.post(
        "/api/v1/datasets",
        params={"namespace": "team-a"},
        json=dataset_body("digits", home),
        headers=as_user("alice-token"),
    )
    assert created.status_code == 201, created.text
    raw = get(kube, "Dataset", "digits", "team-a")  # what `kubectl get dataset` shows
    assert raw is not None and raw["metadata"]["uid"] == created.json()["metadata"]["uid"]
    assert raw["metadata"]["finalizers"] == ["kdigits.io/finalizer"]
    # and what kubectl creates, REST shows
    apply(kube, {**dataset_body("from-kubectl", home), "kind": "Dataset"}, "team-a")
    listed = client.get(
        "/api/v1/datasets", params={"namespace": "team-a"}, headers=as_user("alice-token")
    )
    assert listed.status_code == 200
    assert [d["metadata"]["name"] for d in listed.json()["items"]] == ["digits", "from-kubectl"]
    token_specs = reviews(apiserver, "tokenreviews")
    assert {"token": "alice-token"} in token_specs
    access_specs = reviews(apiserver, "subjectaccessreviews")
    assert {
        "user": "alice",
        "uid": "u-alice",
        "groups": ["system:authenticated"],
        "resourceAttributes": {
            "group": "kdigits.io",
            "resource": "datasets",
            "verb": "create",
            "namespace": "team-a",
        },
    } in access_specs
    for name in ("digits", "from-kubectl"):
        answer = client.delete(
            f"/api/v1/datasets/{name}",
            params={"namespace": "team-a"},
            headers=as_user("alice-token"),
        )
        assert answer.status_code == 200, answer.text
    # REST's object has the finalizer: it waits for the reconciler (not running here);
    # kubectl's got none (no operator runs here to add it): the API server dropped it
    marked = get(kube, "Dataset", "digits", "team-a")
    assert marked is not None and marked["metadata"]["deletionTimestamp"]
    assert get(kube, "Dataset", "from-kubectl", "team-a") is None


def test_forbidden_requests_get_403(client: TestClient) -> None:
    home = client.app.state.services.settings.home_dir  # type: ignore[attr-defined]
    denied = client.get(
        "/api/v1/datasets", params={"namespace": "team-a"}, headers=as_user("bob-token")
    )
    assert denied.status_code == 403
    reason = denied.json()["reason"]
    assert '"bob"' in reason and "list datasets" in reason and '"team-a"' in reason
    create = client.post(
        "/api/v1/datasets",
        json={**dataset_body("x", home), "metadata": {"name": "x", "namespace": "team-b"}},
        headers=as_user("bob-token"),
    )
    assert create.status_code == 403 and "create datasets" in create.json()["reason"]
    get_one = client.get(
        "/api/v1/models/anything", params={"namespace": "team-a"}, headers=as_user("bob-token")
    )
    assert get_one.status_code == 403
    delete_model = client.delete(
        "/api/v1/models/anything", params={"namespace": "team-a"}, headers=as_user("alice-token")
    )
    assert delete_model.status_code == 403  # alice may read models there, not delete them


def test_listing_all_namespaces_shows_only_readable_ones(
    client: TestClient, kube: ApiClient
) -> None:
    home = client.app.state.services.settings.home_dir  # type: ignore[attr-defined]
    apply(kube, {**dataset_body("b-data", home), "kind": "Dataset"}, "team-b")
    apply(kube, {**dataset_body("c-data", home), "kind": "Dataset"}, "team-c")

    def visible(token: str) -> set[tuple[str, str]]:
        answer = client.get(
            "/api/v1/datasets", params={"allNamespaces": "true"}, headers=as_user(token)
        )
        assert answer.status_code == 200, answer.text
        return {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in answer.json()["items"]}

    assert {ns for ns, _ in visible("alice-token")} == {"team-a"}
    assert visible("bob-token") == {("team-b", "b-data")}
    assert {("team-a", "digits"), ("team-b", "b-data"), ("team-c", "c-data")} <= visible(
        "admin-token"
    )


def test_the_static_token_is_accepted_without_a_review(
    client: TestClient, apiserver: RunningApiServer
) -> None:
    answer = client.get(
        "/api/v1/datasets", params={"namespace": "team-b"}, headers=as_user(STATIC_TOKEN)
    )
    assert answer.status_code == 200
    assert {"token": STATIC_TOKEN} not in reviews(apiserver, "tokenreviews")
