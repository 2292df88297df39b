"""Leave-one-out values: classical LOO and within-group (within-round, "federated") LOO."""

from __future__ import annotations

import numpy as np

from procure.valuation.games import Groups, Utility, cached, validate_groups


def leave_one_out(utility: Utility, n: int) -> np.ndarray:
    """``LOO(i) = v(N) - v(N \\ {i})`` for players ``i = 0..n-1`` with ``N = {0..n-1}``, shape ``(n,)``.

    Utility units; positive = removing ``i`` hurts. Costs ``n + 1`` utility calls (memoised)."""
    return within_group_loo(utility, [list(range(int(n)))])


def within_group_loo(utility: Utility, groups: Groups) -> np.ndarray:
    """Within-group LOO (federated LOO, seeds/000 Sec. 2.6): for ``z`` in ``D_t``,
    ``v(U_t) - v(U_t \\ {z})`` with ``U_t = D_1 ∪ ... ∪ D_t``; earlier groups stay in. In sequential use pass
    one group (the round's candidates) and a utility anchored at the current state: this is
    ``v(D_t; A_{t-1}) - v(D_t \\ {z}; A_{t-1})``. Shape ``(n,)``; ``|D_t| + 1`` calls per group (memoised).
    """
    gs = validate_groups(groups)
    v = cached(utility)
    phi = np.zeros(sum(len(g) for g in gs))
    prefix: frozenset[int] = frozenset()
    for g in gs:
        full = prefix | frozenset(g)
        top = v(full)
        for z in g:
            phi[z] = top - v(full - {z})
        prefix = full
    return phi
