"""Permutation-sampling Data Shapley (Maleki et al.; seeds/002 section 4.1) with its l2 sample bound."""

from __future__ import annotations

import math

import numpy as np

from procure.valuation.games import Utility
from procure.valuation.montecarlo import MCResult, StoppingRule, mc_ads


def num_permutations(eps: float, delta: float, n: int, r: float) -> int:
    """seeds/002 section 4.1 (notes/002 section 1.1): ``m = ceil((2 r^2 n / eps^2) * log(2 n / delta))``
    permutations make permutation sampling an (eps, delta)-approximation of DS in the l2 norm,
    ``P(||s_hat - s||_2 <= eps) >= 1 - delta`` (Hoeffding per player at eps/sqrt(n) with failure delta/n, union
    bound). Here ``r`` is the range of the utility, ``U in [0, r]`` (marginals span a width of at most ``2r``).
    For the sup-norm MC-ADS budget see :func:`procure.valuation.montecarlo.permutation_budget`."""
    if not (eps > 0 and 0 < delta < 1 and n >= 1 and r > 0):
        raise ValueError("num_permutations: need eps > 0, 0 < delta < 1, n >= 1, r > 0")
    return math.ceil(2.0 * r * r * n / (eps * eps) * math.log(2.0 * n / delta))


def l2_eps(m: int, delta: float, n: int, r: float) -> float:
    """The l2 error guaranteed with probability ``1 - delta`` by ``m`` permutations (inverse of
    :func:`num_permutations`): ``eps = r * sqrt(2 n log(2 n / delta) / m)``."""
    return r * math.sqrt(2.0 * n * math.log(2.0 * n / delta) / m)


def permutation_sampling(
    utility: Utility,
    n: int,
    *,
    eps: float | None = None,
    delta: float | None = None,
    r: float | None = None,
    n_permutations: int | None = None,
    seed: int | np.random.Generator = 0,
    stopping: StoppingRule | None = None,
    **kwargs,
) -> MCResult:
    """Data Shapley by uniform permutation sampling: :func:`mc_ads` with the single group ``0..n-1``.

    Give either ``n_permutations`` (and/or ``stopping``) or all of ``eps, delta, r`` to draw
    :func:`num_permutations` permutations (the seeds/002 l2 guarantee). Other keywords go to :func:`mc_ads`."""
    if n_permutations is None and stopping is None:
        if None in (eps, delta, r):
            raise ValueError("permutation_sampling: give n_permutations, a stopping rule, or eps, delta and r")
        n_permutations = num_permutations(eps, delta, n, r)
    return mc_ads(utility, [list(range(n))], n_permutations, seed, stopping=stopping, **kwargs)
