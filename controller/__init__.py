"""kdigits control plane: settings, store, reconciler, Ray backend, REST API, operator, CLI."""
