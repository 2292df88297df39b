"""Utility mappings u = m(v): from a data-valuation score v of a bundle to the buyer's utility (money).

seeds/004 appendix section 4: linear (Eq. 28), discrete (Eq. 29), zero-one (Eqs. 30-31) and multi-task (Eq. 32).
All are pydantic models (extra="forbid") so recipes can name them in YAML with a ``kind`` field.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from procure.errors import UserError


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def affine(self) -> tuple[float, float] | None:
        """(gamma, beta) when u = gamma * v + beta with gamma >= 0 (the exact knapsack solver applies), else None."""
        return None


class Linear(_Base):
    """u = gamma * v + beta (Eq. 28); gamma >= 0 money per unit of value, beta money."""

    kind: Literal["linear"] = "linear"
    gamma: float = Field(1.0, ge=0.0)
    beta: float = 0.0

    def __call__(self, v: float) -> float:
        return self.gamma * v + self.beta

    def affine(self) -> tuple[float, float]:
        return (self.gamma, self.beta)


class Discrete(_Base):
    """u = rewards[h] when thresholds[h] <= v < thresholds[h+1] (Eq. 29); below thresholds[0]: ``below``."""

    kind: Literal["discrete"] = "discrete"
    thresholds: list[float] = Field(min_length=1)
    rewards: list[float] = Field(min_length=1)
    below: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> Discrete:
        if len(self.thresholds) != len(self.rewards):
            raise ValueError("thresholds and rewards must have the same length")
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise ValueError("thresholds must be strictly increasing")
        return self

    def __call__(self, v: float) -> float:
        h = int(np.searchsorted(self.thresholds, v, side="right")) - 1
        return self.below if h < 0 else self.rewards[h]


class ZeroOne(_Base):
    """Expected utility of a small gain ``u_lo`` with probability v and a large loss ``u_hi`` otherwise:
    E[u] = v * (u_lo - u_hi) + u_hi (Eq. 31); v is a probability in [0, 1]."""

    kind: Literal["zero_one"] = "zero_one"
    u_lo: float = 1.0
    u_hi: float = -10.0

    def __call__(self, v: float) -> float:
        return v * (self.u_lo - self.u_hi) + self.u_hi

    def affine(self) -> tuple[float, float] | None:
        g = self.u_lo - self.u_hi
        return (g, self.u_hi) if g >= 0 else None


class MultiTask(_Base):
    """u = theta^T (m_1(v_1), ..., m_Q(v_Q)) + eps (Eq. 32). Applied to a scalar v, every task sees the same v;
    pass per-task values through ``bundle_utility`` for genuinely different task scores."""

    kind: Literal["multi_task"] = "multi_task"
    theta: list[float] = Field(min_length=1)
    tasks: list[Annotated[Linear | Discrete | ZeroOne, Field(discriminator="kind")]] = Field(min_length=1)
    eps: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> MultiTask:
        if len(self.theta) != len(self.tasks):
            raise ValueError("theta and tasks must have the same length")
        return self

    def __call__(self, v: float | np.ndarray) -> float:
        vv = np.broadcast_to(np.asarray(v, dtype=float), (len(self.tasks),))
        return float(sum(t * m(float(x)) for t, m, x in zip(self.theta, self.tasks, vv)) + self.eps)

    def affine(self) -> tuple[float, float] | None:
        parts = [m.affine() for m in self.tasks]
        if any(p is None for p in parts) or any(t < 0 for t in self.theta):
            return None
        g = sum(t * p[0] for t, p in zip(self.theta, parts))
        b = sum(t * p[1] for t, p in zip(self.theta, parts)) + self.eps
        return (g, b)


Mapping = Annotated[Linear | Discrete | ZeroOne | MultiTask, Field(discriminator="kind")]


def check_finite(name: str, x: np.ndarray | float) -> None:
    """UserError naming ``name`` when ``x`` holds NaN or infinity."""
    arr = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{name}: must be finite numbers (got NaN or inf); fix the valuation that produced it")


def check_utility(u: float, where: str = "bundle_utility") -> float:
    if not isinstance(u, int | float | np.floating | np.integer) or math.isnan(float(u)) or math.isinf(float(u)):
        raise UserError(f"{where}: returned {u!r}; a utility must be a finite number")
    return float(u)
