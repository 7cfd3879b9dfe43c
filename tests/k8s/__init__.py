"""Tests of the Kubernetes artefacts: CRDs, RBAC, examples, the Helm chart, rules, dashboards."""
