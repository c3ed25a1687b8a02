"""The rule bookkeeping both fault engines share (EWS: ``faults.FaultEngine``; Graph:
``graph.faults.GraphFaults``): rules scoped by operation and mailbox that fire ``count`` times or
with a seeded ``probability``, and counters by kind. What a firing rule does is the engine's.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["RuleBook"]


class _Rule(Protocol):
    @property
    def rule_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def count(self) -> int | None: ...
    @property
    def probability(self) -> float | None: ...

    # EWS names every operation; a Graph request may have none (an unknown path).
    def matches(self, operation: Any, mailbox: str | None) -> bool: ...


R = TypeVar("R", bound=_Rule)


class RuleBook(Generic[R]):
    """Thread-safe rules of type ``R`` (a frozen dataclass) and counters by kind."""

    def __init__(
        self,
        make_rule: Callable[..., R],
        *,
        kinds: Collection[str],
        parameters: Collection[str],
        seed: int = 0,
    ) -> None:
        self._make_rule = make_rule
        self._kinds = tuple(kinds)
        self._parameters = frozenset(parameters)
        self._lock = threading.Lock()
        self._seed = seed
        self._random = random.Random(seed)
        self._rules: list[R] = []
        self._ids = itertools.count(1)
        self._counters: Counter[str] = Counter()

    def add(
        self,
        kind: str,
        *,
        operation: str = "*",
        mailbox: str = "*",
        count: int | None = None,
        probability: float | None = None,
        **params: Any,
    ) -> R:
        """Add a rule; without ``count`` or ``probability`` it fires once."""
        self._check_kind(kind)
        if count is not None and probability is not None:
            raise ValueError("give a count or a probability, not both")
        if probability is not None and not 0.0 < probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {probability}")
        if probability is None and count is None:
            count = 1
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        unknown = set(params) - self._parameters
        if unknown:
            raise ValueError(
                f"unknown fault parameters: {', '.join(sorted(unknown))}; "
                f"expected {', '.join(sorted(self._parameters))}"
            )
        with self._lock:
            rule = self._make_rule(
                rule_id=f"r{next(self._ids)}",
                kind=kind,
                operation=operation,
                mailbox=mailbox,
                count=count,
                probability=probability,
                **params,
            )
            self._rules.append(rule)
            return rule

    def rules(self) -> list[R]:
        """The active rules (``count`` is what remains)."""
        with self._lock:
            return list(self._rules)

    def remove(self, rule_id: str) -> bool:
        """Remove one rule; False when there is none with that id."""
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.rule_id != rule_id]
            return len(self._rules) != before

    def clear(self) -> None:
        """Remove every rule (counters stay)."""
        with self._lock:
            self._rules.clear()

    def reset(self) -> None:
        """No rules, zero counters, the random sequence restarted from the seed."""
        with self._lock:
            self._rules.clear()
            self._counters.clear()
            self._random = random.Random(self._seed)

    def counters(self) -> dict[str, int]:
        """Injected faults by kind."""
        with self._lock:
            return dict(self._counters)

    def _check_kind(self, kind: str) -> None:
        if kind not in self._kinds:
            raise ValueError(
                f"unknown fault kind {kind!r}; expected one of {', '.join(self._kinds)}"
            )

    def _fires(self, index: int, rule: R, operation: str | None, mailbox: str | None) -> bool:
        # Under self._lock. A count is spent by replacing the rule in place, which keeps the
        # caller's enumeration valid; spent rules go in _drop_spent.
        if not rule.matches(operation, mailbox):
            return False
        if rule.probability is not None:
            if self._random.random() >= rule.probability:
                return False
        elif rule.count is not None:
            self._rules[index] = dataclasses.replace(rule, count=rule.count - 1)  # type: ignore[type-var]
        self._counters[rule.kind] += 1
        return True

    def _drop_spent(self) -> None:
        self._rules = [r for r in self._rules if r.count is None or r.count > 0]
