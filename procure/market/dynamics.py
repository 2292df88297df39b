"""Multi-period buyer/seller market (seeds/004 section 6.2, Algorithm 2, Lemmas 1, 4, 7).

Each period t: the active sellers each list a fresh dataset with utility u_{j,t} (money, the same for every
buyer); each buyer's budget is a uniform share of the listed total utility. Sellers arrive in random order;
seller j's fairshare price p*_j is its optimal price against all buyers' MWPs given the prices already posted
(Lemma 2; or over a grid). The strategy sets the price actually posted: fairshare p*, reduced (fraction p*),
random (uniform [low, 1) p*) or current (a flat market price). After all arrivals each buyer solves its exact
problem (Eq. 2) at the posted prices. A seller who sold at p < p* stays next period with probability
pi(p, p*) (procure.market.participation); departed sellers never return. All strategies share the same random
draws (utilities, budgets, arrival orders, departure uniforms) so differences are due to pricing only.

Reported per strategy and period (means over runs): buyer utility u(x), net u - x.p and datasets bought per
buyer; sellers' average cumulative profit; number of active sellers. Discounted cumulative sums
sum_{s<=t} delta^s (.) for every delta, and Lemma 4's threshold
t* = max{T : E[sum_{t<=T} delta^t (m_fair,t - m_s,t)] <= 0} (m = recipe.metric), per exploitative strategy s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from procure.market.buyer import max_willingness_to_pay, solve_buyer
from procure.market.participation import stay_probability
from procure.market.recipe import SimulateRecipe, StrategyConfig
from procure.market.seller import optimal_price


@dataclass
class PeriodResult:
    fair: np.ndarray  # (n,) fairshare prices p*
    posted: np.ndarray  # (n,) prices actually posted
    bundles: list[tuple[int, ...]]  # per buyer, indices into the listed datasets
    utility: np.ndarray  # (M,)
    net: np.ndarray  # (M,)
    sold_to: np.ndarray  # (n,) number of buyers that bought each dataset


def clear_period(
    utilities: np.ndarray,
    budgets: np.ndarray,
    order: np.ndarray,
    price_of,
    cost: float = 0.0,
    grid: list[float] | None = None,
) -> PeriodResult:
    """One period of Algorithm 2 with M buyers. ``price_of(j, p_star) -> posted price``."""
    n = utilities.size
    m = budgets.size
    fair = np.zeros(n)
    posted = np.zeros(n)
    prior: list[int] = []
    for j in order:
        j = int(j)
        mwps = [max_willingness_to_pay(j, utilities, posted, float(b), prior)[0] for b in budgets]
        p_star, _ = optimal_price(mwps, cost, grid)
        fair[j] = p_star
        posted[j] = price_of(j, p_star)
        prior.append(j)
    bundles, util, net = [], np.zeros(m), np.zeros(m)
    sold = np.zeros(n, dtype=int)
    for k, b in enumerate(budgets):
        c = solve_buyer(utilities, posted, float(b))
        bundles.append(c.bundle)
        util[k], net[k] = c.utility, c.net
        sold[list(c.bundle)] += 1
    return PeriodResult(fair, posted, bundles, util, net, sold)


@dataclass
class SimulationResult:
    recipe: SimulateRecipe
    strategies: list[str]
    buyers: list[str]
    # arrays (S, R, T, ...) over strategies, runs, periods
    utility: np.ndarray  # (S, R, T, M)
    net: np.ndarray  # (S, R, T, M)
    bought: np.ndarray  # (S, R, T, M)
    active: np.ndarray  # (S, R, T) sellers active at the start of period t
    seller_profit: np.ndarray  # (S, R, T) sellers' average cumulative profit after period t
    paid_ratio: np.ndarray  # (S, R, T) mean posted / fair price over sold datasets

    def discounted_cumulative(self, delta: float, metric: str = "utility") -> np.ndarray:
        """(S, R, T, M) sum_{s<=t} delta^s m_s."""
        x = self.utility if metric == "utility" else self.net
        w = delta ** np.arange(x.shape[2])
        return np.cumsum(x * w[None, None, :, None], axis=2)

    def threshold(self, delta: float, strategy: int, buyer: int, metric: str | None = None) -> int:
        """Lemma 4's t* for one exploitative strategy: the last T at which the expected discounted cumulative
        difference fair - strategy is <= 0; -1 if it never is (fairshare ahead from t = 0)."""
        metric = metric or self.recipe.metric
        c = self.discounted_cumulative(delta, metric).mean(axis=1)  # (S, T, M)
        fair = self.strategies.index(self._fair_name())
        d = c[fair, :, buyer] - c[strategy, :, buyer]
        idx = np.flatnonzero(d <= 1e-12)
        return int(idx[-1]) if idx.size else -1

    def _fair_name(self) -> str:
        return next(s.name for s in self.recipe.strategies if s.kind == "fairshare")


def _price_fn(s: StrategyConfig, rng_u: np.ndarray):
    if s.kind == "fairshare":
        return lambda j, p: p
    if s.kind == "reduced":
        return lambda j, p: s.fraction * p
    if s.kind == "random":
        return lambda j, p: (s.low + (1.0 - s.low) * rng_u[j]) * p
    return lambda j, p: s.price


def simulate(recipe: SimulateRecipe, progress: bool = True) -> SimulationResult:
    """Run every strategy on the same random draws (see module doc)."""
    S, R, T, N, M = len(recipe.strategies), recipe.n_runs, recipe.periods, recipe.n_sellers, len(recipe.buyers)
    rng = np.random.default_rng(recipe.seed)
    util_draw = rng.uniform(recipe.utility.low, recipe.utility.high, size=(R, T, N))
    shares = np.stack(
        [rng.uniform(b.budget_share[0], b.budget_share[1], size=(R, T)) for b in recipe.buyers], axis=-1
    )  # (R, T, M)
    orders = np.argsort(rng.random(size=(R, T, N)), axis=-1)
    price_u = rng.random(size=(R, T, N))
    stay_u = rng.random(size=(R, T, N))
    par = recipe.participation
    out_u = np.zeros((S, R, T, M))
    out_n = np.zeros((S, R, T, M))
    out_b = np.zeros((S, R, T, M))
    out_a = np.zeros((S, R, T))
    out_p = np.zeros((S, R, T))
    out_r = np.full((S, R, T), np.nan)
    bar = tqdm(total=S * R * T, desc="market simulate", disable=not progress, leave=False)
    for si, strat in enumerate(recipe.strategies):
        for r in range(R):
            active = np.ones(N, dtype=bool)
            profit = np.zeros(N)
            for t in range(T):
                ids = np.flatnonzero(active)
                out_a[si, r, t] = ids.size
                if ids.size:
                    u = util_draw[r, t, ids]
                    budgets = shares[r, t] * u.sum()
                    order = _local_order(orders[r, t], ids)
                    res = clear_period(
                        u, budgets, order, _price_fn(strat, price_u[r, t, ids]), recipe.seller_cost, recipe.price_grid
                    )
                    out_u[si, r, t] = res.utility
                    out_n[si, r, t] = res.net
                    out_b[si, r, t] = [len(b) for b in res.bundles]
                    profit[ids] += res.posted * res.sold_to - recipe.seller_cost
                    sold = res.sold_to > 0
                    if sold.any():
                        out_r[si, r, t] = float(np.mean(res.posted[sold] / np.maximum(res.fair[sold], 1e-12)))
                    for loc, j in enumerate(ids):
                        if sold[loc]:
                            pi = stay_probability(
                                float(res.posted[loc]), float(res.fair[loc]), par.family, k=par.k, q=par.q
                            )
                            if stay_u[r, t, j] >= pi:
                                active[j] = False
                out_p[si, r, t] = profit.mean()
                bar.update(1)
    bar.close()
    return SimulationResult(
        recipe,
        [s.name for s in recipe.strategies],
        [b.name for b in recipe.buyers],
        out_u,
        out_n,
        out_b,
        out_a,
        out_p,
        out_r,
    )


def _local_order(global_order: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Arrival order of the active sellers ``ids`` (positions 0..len(ids)-1) following ``global_order``."""
    pos = {int(j): k for k, j in enumerate(ids)}
    return np.array([pos[int(j)] for j in global_order if int(j) in pos], dtype=int)
