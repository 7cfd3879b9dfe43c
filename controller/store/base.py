"""The job store interface: Dataset, Model and PretrainedModel objects with spec, status and
the history of their status transitions.

Semantics follow the Kubernetes API so the operator's implementation (custom resources) can sit
behind the same interface: `metadata.uid` (uuid4) and `creationTimestamp` are set on create,
`generation` is bumped when the spec changes, and every write bumps `resourceVersion`; an update
carrying a stale `resourceVersion` raises Conflict (optimistic concurrency). Deletion is two
steps: `mark_deleted` sets `deletionTimestamp` (the reconciler then stops jobs and cleans storage)
and `remove` drops the object.
"""

from __future__ import annotations

import abc
import builtins
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from jobs.specs import Resource

R = TypeVar("R", bound=Resource)


class StoreError(Exception):
    """Base of the store's errors."""


class NotFound(StoreError):
    def __init__(self, kind: str, namespace: str, name: str) -> None:
        super().__init__(f'{kind} "{name}" not found in namespace "{namespace}"')
        self.kind, self.namespace, self.name = kind, namespace, name


class AlreadyExists(StoreError):
    def __init__(self, kind: str, namespace: str, name: str) -> None:
        super().__init__(f'{kind} "{name}" already exists in namespace "{namespace}"')
        self.kind, self.namespace, self.name = kind, namespace, name


class Conflict(StoreError):
    """The object changed since it was read (stale resourceVersion) or was replaced."""


@dataclass
class Page:
    items: list[Resource]
    continue_token: str | None = None


@dataclass
class Transition:
    """One status transition: a phase change or a new attempt."""

    time: datetime
    phase: str
    attempt: int = 0
    message: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Store(abc.ABC):
    @abc.abstractmethod
    def create(self, obj: R) -> R:
        """Insert a new object; sets uid, creationTimestamp, generation and resourceVersion."""

    @abc.abstractmethod
    def get(self, kind: str, name: str, namespace: str = "default") -> Resource:
        """The object, or NotFound."""

    @abc.abstractmethod
    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Page:
        """Objects ordered by namespace and name; `labels` must all match; paged by token."""

    @abc.abstractmethod
    def update(self, obj: R) -> R:
        """Write metadata labels/annotations and spec; bumps generation if the spec changed."""

    @abc.abstractmethod
    def update_status(self, obj: R) -> R:
        """Write status only; records a transition when the phase or the attempt changes."""

    @abc.abstractmethod
    def mark_deleted(self, kind: str, name: str, namespace: str = "default") -> Resource:
        """Set deletionTimestamp (idempotent); the object stays until `remove`."""

    @abc.abstractmethod
    def remove(self, kind: str, name: str, namespace: str, uid: str) -> None:
        """Drop the object with this uid (a re-created object of the same name stays)."""

    @abc.abstractmethod
    def history(
        self, kind: str, name: str, namespace: str = "default"
    ) -> builtins.list[Transition]:
        """Status transitions of the current object with this name, oldest first."""

    @abc.abstractmethod
    def count_by_phase(self) -> dict[tuple[str, str], int]:
        """(kind, phase) -> number of objects, for the jobs gauge."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
