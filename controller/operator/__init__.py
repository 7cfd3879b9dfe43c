"""The Kubernetes operator (kopf) and the rest of cluster mode.

- `handlers`: the kopf handlers (create, resume, spec update, delete, a progress timer) that
  feed the same reconciler the REST API uses; the spec-change policy is documented there
  (a started job refuses spec changes).
- `runner`: kopf in its own thread beside the API; `cluster`: the services of cluster mode;
  `events`: Kubernetes Events on transitions; `kube`: the API client and kopf's login.
"""
