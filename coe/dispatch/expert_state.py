"""Per-expert state a long-lived client keeps (replica health, the concurrency semaphore),
bounded: experts come and go through the admin API, and their state must go with them.

Entries are kept least recently used first; beyond `max_experts` the oldest idle ones are
dropped (an entry with calls in flight is never dropped: its semaphore is in use). `retain`
drops the state of experts no longer registered at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from coe.dispatch.replicas import ReplicaSet
from coe.experts.schema import ExpertSpec

MAX_EXPERTS = 1024


@dataclass
class ExpertState:
    urls: tuple[str, ...]
    limit: int
    replicas: ReplicaSet
    semaphore: asyncio.Semaphore
    busy: int = field(default=0)  # calls holding or waiting for the semaphore


class ExpertStates:
    def __init__(self, max_experts: int = MAX_EXPERTS):
        self.max_experts = max_experts
        self._states: OrderedDict[str, ExpertState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, name: object) -> bool:
        return name in self._states

    def of(self, expert: ExpertSpec) -> ExpertState:
        """The expert's state, made afresh when its endpoints or its limit changed."""
        urls = tuple(expert.base_urls())
        limit = expert.limits.max_concurrency
        state = self._states.get(expert.name)
        if state is None or state.urls != urls or state.limit != limit:
            replicas = state.replicas if state is not None and state.urls == urls else None
            state = ExpertState(
                urls=urls,
                limit=limit,
                replicas=replicas or ReplicaSet(list(urls)),
                semaphore=asyncio.Semaphore(limit),
            )
            self._states[expert.name] = state
        self._states.move_to_end(expert.name)
        self._evict()
        return state

    def retain(self, names: Iterable[str]) -> None:
        """Forget every idle expert not in `names` (the registry's experts now)."""
        keep = set(names)
        for name in [n for n, s in self._states.items() if n not in keep and s.busy == 0]:
            del self._states[name]

    def _evict(self) -> None:
        excess = len(self._states) - self.max_experts
        if excess <= 0:
            return
        idle = [n for n, s in self._states.items() if s.busy == 0][:excess]
        for name in idle:
            del self._states[name]
