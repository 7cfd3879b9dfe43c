"""kdigits control plane: settings, store, reconciler, Ray backend, REST API, operator, CLI."""

__version__ = "0.1.0"
