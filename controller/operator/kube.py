"""How the controller reaches the Kubernetes API, for its own client and for kopf alike.

In a pod it is the service account (in-cluster config); elsewhere the current kubeconfig
context. kopf gets its connection from the same `Configuration` the `kubernetes` client uses, so
the store, the Events, the access reviews and the operator always talk to the same server with
the same credentials (tokens that rotate are re-read through the client's refresh hook).
"""

from __future__ import annotations

import json
from typing import Any

import kopf
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException


def load_api_client() -> ApiClient:
    """A client for this pod's cluster, or for the kubeconfig's current context."""
    configuration = Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        kube_config.load_kube_config(client_configuration=configuration)
    return ApiClient(configuration)


def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
    """kopf's view of a `kubernetes` client configuration (server, TLS, token or certificate)."""
    header = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    scheme, _, token = header.partition(" ")
    if not token:  # a bare token, without a scheme
        scheme, token = ("Bearer", scheme) if scheme else ("", "")
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )


def post_json(api_client: ApiClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a JSON object to the API server, answer its JSON (ApiException on an error).

    For the objects kdigits creates as plain JSON (Events, TokenReviews,
    SubjectAccessReviews): no model classes in the way of what the server answers.
    """
    request = api_client.param_serialize(
        method="POST",
        resource_path=path,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*request)
    response.read()
    if not 200 <= response.status <= 299:
        text = (response.data or b"").decode(errors="replace")
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    answer: dict[str, Any] = json.loads(response.data or b"{}")
    return answer
