"""The market simulation recipe (pydantic, extra="forbid": a typo names the field)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from procure.errors import UserError, format_validation_error


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BuyerConfig(_M):
    """A buyer whose per-period budget is a uniform share of the total utility of the listed datasets."""

    name: str
    budget_share: tuple[float, float] = Field(description="[low, high] share of the listed datasets' total utility")

    @model_validator(mode="after")
    def _check(self) -> BuyerConfig:
        lo, hi = self.budget_share
        if not (0 <= lo <= hi):
            raise ValueError("budget_share must be [low, high] with 0 <= low <= high")
        return self


class StrategyConfig(_M):
    """How the price actually paid relates to the fairshare price p*:
    fairshare p*; reduced fraction * p*; random uniform in [low, 1) * p*; current a flat market price."""

    name: str
    kind: Literal["fairshare", "reduced", "random", "current"]
    fraction: float = Field(0.8, ge=0.0, le=1.0)
    low: float = Field(0.5, ge=0.0, le=1.0)
    price: float = Field(0.3, ge=0.0)


class ParticipationConfig(_M):
    family: Literal["power", "exp", "linear", "step"] = "power"
    k: float = Field(1.0, gt=0.0)
    q: float = Field(0.9, ge=0.0, lt=1.0)


class UtilityConfig(_M):
    """Per-period utility (money) of each listed dataset: uniform on [low, high]."""

    low: float = 0.0
    high: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> UtilityConfig:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class SimulateRecipe(_M):
    kind: Literal["market-simulate"] = "market-simulate"
    seed: int = 0
    periods: int = Field(100, ge=1)
    n_sellers: int = Field(10, ge=1, le=16)
    n_runs: int = Field(10, ge=1)
    deltas: list[float] = Field(default_factory=lambda: [0.98, 0.99, 0.999], min_length=1)
    utility: UtilityConfig = UtilityConfig()
    seller_cost: float = Field(0.0, ge=0.0)
    buyers: list[BuyerConfig] = Field(min_length=1)
    strategies: list[StrategyConfig] = Field(min_length=1)
    participation: ParticipationConfig = ParticipationConfig()
    price_grid: list[float] | None = Field(
        None, description="seller prices over this grid (Algorithm 2) instead of the exact MWP breakpoints"
    )
    metric: Literal["utility", "net"] = Field(
        "utility", description="buyer quantity compared for t*: gross utility u or net utility u - p"
    )

    @model_validator(mode="after")
    def _check(self) -> SimulateRecipe:
        if any(not (0 < d <= 1) for d in self.deltas):
            raise ValueError("deltas must be in (0, 1]")
        if not any(s.kind == "fairshare" for s in self.strategies):
            raise ValueError("strategies need one of kind 'fairshare' (the reference for t*)")
        if self.price_grid is not None and len(self.price_grid) == 0:
            raise ValueError("price_grid is empty; give prices or remove the field")
        return self


def load_recipe(path: str | Path) -> SimulateRecipe:
    """Load and validate a YAML recipe; errors are one-line UserErrors naming the field."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe: file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"recipe: {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe: {p} must be a mapping of fields")
    try:
        return SimulateRecipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(p), SimulateRecipe)) from None
