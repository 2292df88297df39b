"""procure.valuation: cooperative games over data sources and data-value estimators (no LLMs).

Public API (shared/DESIGN.md)::

    exact_ads(utility, groups) -> np.ndarray (n,)            # exact ADS, Eq. 9; DS when len(groups) == 1
    mc_ads(utility, groups, n_permutations, seed=0) -> MCResult  # .values (n,), .stderr (n,)
    leave_one_out(utility, n) -> np.ndarray                  # v(N) - v(N \\ {i})
    knn_shapley(x_train, y_train, x_test, y_test, k) -> np.ndarray
    knn_ads(x_train, y_train, groups, x_test, y_test, k) -> np.ndarray

One entry point for all of them: ``estimate(method, utility_or_data, groups, Budget(...)) -> Valuation``.

A utility is ``Callable[[frozenset[int]], float]`` over players ``0..n-1``; groups are an ordered list of lists
of player ids (sigma = (D_1..D_T)). Estimators memoise the utility: no coalition is evaluated twice.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from procure.valuation.estimate import Budget, Valuation, estimate, plan  # noqa: E402
from procure.valuation.exact import exact_ads, exact_shapley  # noqa: E402
from procure.valuation.games import CachedUtility, InvalidGroupsError, validate_groups  # noqa: E402
from procure.valuation.knn import knn_ads, knn_shapley, knn_utility  # noqa: E402
from procure.valuation.loo import leave_one_out, within_group_loo  # noqa: E402
from procure.valuation.montecarlo import (  # noqa: E402
    MaxPermutations,
    MCResult,
    StandardErrorBelow,
    TimeLimit,
    mc_ads,
    permutation_budget,
)

__all__ = [
    "Budget",
    "Valuation",
    "estimate",
    "plan",
    "CachedUtility",
    "InvalidGroupsError",
    "MCResult",
    "MaxPermutations",
    "StandardErrorBelow",
    "TimeLimit",
    "exact_ads",
    "exact_shapley",
    "knn_ads",
    "knn_shapley",
    "knn_utility",
    "leave_one_out",
    "mc_ads",
    "permutation_budget",
    "validate_groups",
    "within_group_loo",
]
