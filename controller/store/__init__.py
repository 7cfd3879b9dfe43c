"""The job store: one interface (base.Store), SQLite now, Kubernetes custom resources later."""

from controller.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    Page,
    Store,
    StoreError,
    Transition,
)
from controller.store.sqlite import SQLiteStore

__all__ = [
    "AlreadyExists",
    "Conflict",
    "NotFound",
    "Page",
    "SQLiteStore",
    "Store",
    "StoreError",
    "Transition",
]
