"""Tests of cluster mode: the Kubernetes store, the kopf operator and RBAC-checked REST."""
