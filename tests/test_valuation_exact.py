"""Exact ADS / DS / LOO against brute force and the papers' axioms (notes/000_ads.md section 3, P1-P13)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.errors import UserError
from procure.valuation import CachedUtility, exact_ads, exact_shapley, leave_one_out, within_group_loo
from procure.valuation.games import (
    InvalidGroupsError,
    additive_game,
    airport_game,
    airport_shapley,
    glove_game,
    mask_of,
    table_game,
    unanimity_game,
    validate_groups,
    vote_game,
)

TOL = 1e-9
SETTINGS = settings(max_examples=25, deadline=None)


# --- brute-force oracles (independent of the library's subset form) --------------------------------------------


def perm_form_ordered(v, groups):
    """Eq. 7 summed over the prod |D_t|! ordered permutations."""
    n = sum(len(g) for g in groups)
    phi = np.zeros(n)
    count = 0
    for parts in itertools.product(*[itertools.permutations(g) for g in groups]):
        seq = [z for p in parts for z in p]
        prev = v(frozenset())
        for j, z in enumerate(seq):
            cur = v(frozenset(seq[: j + 1]))
            phi[z] += cur - prev
            prev = cur
        count += 1
    return phi / count


def perm_form_weighted_all(v, groups):
    """Eq. 7 over all n! permutations with the weights of Eq. 8 (0 off Pi_sigma)."""
    n = sum(len(g) for g in groups)
    kappa = {z: t for t, g in enumerate(groups) for z in g}
    p = 1.0 / math.prod(math.factorial(len(g)) for g in groups)
    phi = np.zeros(n)
    for seq in itertools.permutations(range(n)):
        if any(kappa[a] > kappa[b] for a, b in itertools.pairwise(seq)):
            continue
        prev = v(frozenset())
        for j, z in enumerate(seq):
            cur = v(frozenset(seq[: j + 1]))
            phi[z] += p * (cur - prev)
            prev = cur
    return phi


def harsanyi_ads(table, groups):
    """ADS from the Harsanyi dividends: each dividend d_T goes in equal shares to the members of T in the latest
    group meeting T (Kalai-Samet weighted Shapley, equal weights). An oracle independent of Eq. 9."""
    n = sum(len(g) for g in groups)
    kappa = {z: t for t, g in enumerate(groups) for z in g}
    phi = np.zeros(n)
    for mask in range(1, 1 << n):
        members = [i for i in range(n) if mask >> i & 1]
        div = 0.0
        sub = mask
        while True:  # Moebius inversion over subsets of mask
            div += (-1) ** (bin(mask).count("1") - bin(sub).count("1")) * table[sub]
            if sub == 0:
                break
            sub = (sub - 1) & mask
        last = max(kappa[i] for i in members)
        carriers = [i for i in members if kappa[i] == last]
        for i in carriers:
            phi[i] += div / len(carriers)
    return phi


# --- strategies -----------------------------------------------------------------------------------------------


@st.composite
def games(draw, max_n=6, max_groups=4):
    n = draw(st.integers(1, max_n))
    table = np.array(draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1 << n, max_size=1 << n)))
    perm = draw(st.permutations(range(n)))
    n_groups = draw(st.integers(1, min(n, max_groups)))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=n_groups - 1, max_size=n_groups - 1))) if n > 1 else []
    groups = [list(perm[a:b]) for a, b in zip([0, *cuts], [*cuts, n])]
    return table, groups


def prefix_sets(groups):
    out, acc = [frozenset()], frozenset()
    for g in groups:
        acc = acc | frozenset(g)
        out.append(acc)
    return out


# --- P1, P2, P8 + Harsanyi oracle ------------------------------------------------------------------------------


@SETTINGS
@given(games())
def test_efficiency_group_efficiency_and_permutation_forms(game):
    table, groups = game
    v = table_game(table)
    n = len(table).bit_length() - 1
    phi = exact_ads(v, groups)
    assert phi.shape == (n,)
    assert abs(phi.sum() - (v(frozenset(range(n))) - v(frozenset()))) < TOL  # P1
    u = prefix_sets(groups)
    for t, g in enumerate(groups):  # P2, Prop 4.2
        assert abs(phi[g].sum() - (v(u[t + 1]) - v(u[t]))) < TOL
    np.testing.assert_allclose(phi, perm_form_ordered(v, groups), atol=TOL)  # P8
    np.testing.assert_allclose(phi, harsanyi_ads(table, groups), atol=1e-8)


@settings(max_examples=10, deadline=None)
@given(games(max_n=5))
def test_weighted_sum_over_all_permutations_equals_subset_form(game):
    table, groups = game
    v = table_game(table)
    np.testing.assert_allclose(exact_ads(v, groups), perm_form_weighted_all(v, groups), atol=TOL)


# --- P3 linearity ---------------------------------------------------------------------------------------------


@SETTINGS
@given(games(), st.floats(-3, 3), st.floats(-3, 3), st.floats(-10, 10), st.data())
def test_linearity_and_constant_shift(game, a, b, c, data):
    table, groups = game
    other = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=len(table), max_size=len(table))))
    lhs = exact_ads(table_game(a * table + b * other + c), groups)
    rhs = a * exact_ads(table_game(table), groups) + b * exact_ads(table_game(other), groups)
    np.testing.assert_allclose(lhs, rhs, atol=1e-8)


# --- P4 null player (incl. the weaker ADS condition), P5 within-group symmetry ----------------------------------


@SETTINGS
@given(games(), st.data())
def test_null_player_ads_condition(game, data):
    table, groups = game
    n = len(table).bit_length() - 1
    t = data.draw(st.integers(0, len(groups) - 1))
    z = data.draw(st.sampled_from(groups[t]))
    prefix = mask_of(prefix_sets(groups)[t])
    table = table.copy()
    # only v(U_{t-1} ∪ S ∪ {z}) = v(U_{t-1} ∪ S) for S ⊆ D_t \ {z}: enough for ADS, not for DS
    others = [i for i in groups[t] if i != z]
    for r in range(len(others) + 1):
        for s in itertools.combinations(others, r):
            base = prefix | mask_of(s)
            table[base | (1 << z)] = table[base]
    phi = exact_ads(table_game(table), groups)
    assert abs(phi[z]) < TOL
    if n >= 1:
        # the full (DS) null condition: every S
        full = table.copy()
        for mask in range(1 << n):
            if not mask >> z & 1:
                full[mask | (1 << z)] = full[mask]
        assert abs(exact_shapley(table_game(full), n)[z]) < TOL


@SETTINGS
@given(games(), st.data())
def test_within_group_symmetry(game, data):
    table, groups = game
    candidates = [g for g in groups if len(g) >= 2]
    if not candidates:
        return
    g = data.draw(st.sampled_from(candidates))
    z, w = data.draw(st.permutations(g))[:2]
    t = groups.index(g)
    prefix = mask_of(prefix_sets(groups)[t])
    table = table.copy()
    others = [i for i in g if i not in (z, w)]
    for r in range(len(others) + 1):
        for s in itertools.combinations(others, r):
            base = prefix | mask_of(s)
            table[base | (1 << w)] = table[base | (1 << z)]
    phi = exact_ads(table_game(table), groups)
    assert abs(phi[z] - phi[w]) < TOL


# --- P6 one group = DS, relabelling ------------------------------------------------------------------------------


@SETTINGS
@given(games(max_n=5), st.data())
def test_one_group_is_data_shapley_and_relabelling(game, data):
    table, _ = game
    n = len(table).bit_length() - 1
    v = table_game(table)
    ds = exact_shapley(v, n)
    # Eq. 3 over all n! orders
    np.testing.assert_allclose(ds, perm_form_ordered(v, [list(range(n))]), atol=TOL)
    perm = data.draw(st.permutations(range(n)))  # player i is called perm[i] in the relabelled game
    inv = np.argsort(perm)
    relabelled = table_game([table[mask_of(inv[j] for j in range(n) if m >> j & 1)] for m in range(1 << n)])
    np.testing.assert_allclose(exact_shapley(relabelled, n)[list(perm)], ds, atol=TOL)
    # the order inside a single group does not matter
    np.testing.assert_allclose(exact_ads(v, [list(perm)]), ds, atol=TOL)


# --- P7 corrected Axiom 4.1 (Nowak-Radzik mutual dependence) and the counterexample to the paper's statement ------


@SETTINGS
@given(games(max_n=6), st.data())
def test_mutually_dependent_earlier_player_gets_zero(game, data):
    table, groups = game
    if len(groups) < 2:
        return
    k, l = sorted(data.draw(st.lists(st.integers(0, len(groups) - 1), min_size=2, max_size=2, unique=True)))
    z = data.draw(st.sampled_from(groups[k]))
    w = data.draw(st.sampled_from(groups[l]))
    n = len(table).bit_length() - 1
    table = table.copy()
    for mask in range(1 << n):  # v(S ∪ {z}) = v(S) = v(S ∪ {w}) for all S not containing z, w
        if not (mask >> z & 1) and not (mask >> w & 1):
            table[mask | (1 << z)] = table[mask]
            table[mask | (1 << w)] = table[mask]
    phi = exact_ads(table_game(table), groups)
    assert abs(phi[z]) < TOL


def test_axiom_4_1_as_stated_fails_earlier_symmetric_player_gets_the_credit():
    # v(S) = 1[z_i in S or z_j in S]: symmetric in the paper's sense, z_i in D_1, z_j in D_2
    v = lambda s: 1.0 if (0 in s or 1 in s) else 0.0  # noqa: E731
    phi = exact_ads(v, [[0], [1]])
    np.testing.assert_allclose(phi, [1.0, 0.0], atol=TOL)
    # mutual dependence (useful only together): the earlier one gets 0, the later one the joint gain
    np.testing.assert_allclose(exact_ads(unanimity_game([0, 1]), [[0], [1]]), [0.0, 1.0], atol=TOL)


# --- P9 locality, P10 singletons, P11 duplication, P12 Lemma 3.2, known games ------------------------------------


@SETTINGS
@given(games(max_n=6), st.data())
def test_locality(game, data):
    table, groups = game
    if len(groups) < 2:
        return
    v = table_game(table)
    phi = exact_ads(v, groups)
    t = data.draw(st.integers(1, len(groups) - 1))
    # (a) merge all later groups into one: earlier values unchanged
    merged = [*groups[:t], [z for g in groups[t:] for z in g]]
    head = [z for g in groups[:t] for z in g]
    np.testing.assert_allclose(exact_ads(v, merged)[head], phi[head], atol=TOL)
    # (b) re-partition U_{t-1} into singletons in another order: group t's values unchanged
    earlier = data.draw(st.permutations([z for g in groups[:t] for z in g]))
    split = [[z] for z in earlier] + groups[t:]
    np.testing.assert_allclose(exact_ads(v, split)[groups[t]], phi[groups[t]], atol=TOL)


@SETTINGS
@given(games(max_n=6))
def test_singleton_groups_give_ordered_increments(game):
    table, groups = game
    n = len(table).bit_length() - 1
    order = [z for g in groups for z in g]
    v = table_game(table)
    phi = exact_ads(v, [[z] for z in order])
    for j, z in enumerate(order):
        assert abs(phi[z] - (v(frozenset(order[: j + 1])) - v(frozenset(order[:j])))) < TOL
    assert phi.shape == (n,)


def test_duplication_lemma_3_1_vs_ads():
    # set utility on distinct instances: players 0..2 originals, 3..5 their copies (instance id = player % 3)
    w = np.array([0.3, -0.1, 0.5])
    v = lambda s: float(np.sqrt(1 + sum(w[i] for i in {p % 3 for p in s}) ** 2))  # noqa: E731
    ds = exact_shapley(v, 6)
    total = v(frozenset(range(3))) - v(frozenset())
    np.testing.assert_allclose(ds[:3], ds[3:], atol=TOL)
    assert abs(ds[:3].sum() - total / 2) < TOL
    ads = exact_ads(v, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_allclose(ads[:3], exact_shapley(v, 3), atol=TOL)
    np.testing.assert_allclose(ads[3:], 0.0, atol=TOL)


def test_lemma_3_2_counterexample_state_conditioned_rounds():
    # rounds D_1 = {z*}, D_2 = {w}, D_3 = {z*} (a copy), all labels +1; the state holds earlier rounds' labels
    y = [1]
    round1 = exact_ads(vote_game(y, state_labels=[]), [[0]])
    round2 = exact_ads(vote_game(y, state_labels=[1]), [[0]])
    round3 = exact_ads(vote_game(y, state_labels=[1, 1]), [[0]])
    assert round1[0] == 1.0 and round3[0] == 0.0 and round2[0] == 0.0
    # the same three rounds as one asymmetric game on sources (z*, w, z*copy)
    v = lambda s: vote_game([1, 1, 1])(s)  # noqa: E731
    np.testing.assert_allclose(exact_ads(v, [[0], [1], [2]]), [1.0, 0.0, 0.0])


def test_known_games():
    np.testing.assert_allclose(exact_shapley(glove_game([0], [1, 2]), 3), [2 / 3, 1 / 6, 1 / 6], atol=TOL)
    costs = [4.0, 1.0, 3.0, 3.0, 7.0]
    np.testing.assert_allclose(exact_shapley(airport_game(costs), 5), airport_shapley(costs), atol=TOL)
    w = [0.5, -1.0, 2.0, 0.25]
    np.testing.assert_allclose(exact_ads(additive_game(w, 3.0), [[3], [0, 2], [1]]), w, atol=TOL)
    # unanimity: 1/|T ∩ latest group| to the carriers in the latest group
    np.testing.assert_allclose(exact_ads(unanimity_game([0, 2, 3]), [[0, 3], [1, 2, 4]]), [0, 0, 1, 0, 0])
    np.testing.assert_allclose(exact_ads(unanimity_game([0, 2, 3]), [[2], [0, 1, 3]]), [0.5, 0, 0, 0.5])


# --- call counts (each coalition once) ------------------------------------------------------------------------


@SETTINGS
@given(games(max_n=7))
def test_exact_ads_evaluates_each_distinct_coalition_once(game):
    table, groups = game
    seen = []
    base = table_game(table)

    def v(s):
        seen.append(s)
        return base(s)

    exact_ads(v, groups)
    distinct = set()
    for pre, g in zip(prefix_sets(groups), groups):
        for r in range(len(g) + 1):
            for s in itertools.combinations(g, r):
                distinct.add(pre | frozenset(s))
    assert len(seen) == len(set(seen)) == len(distinct) == sum(2 ** len(g) for g in groups) - (len(groups) - 1)
    assert set(seen) == distinct


def test_one_group_of_three_costs_eight_calls_and_cache_is_shared():
    cu = CachedUtility(glove_game([0], [1, 2]))
    exact_ads(cu, [[0, 1, 2]])
    assert cu.calls == 8 and len(cu) == 8
    leave_one_out(cu, 3)  # all needed coalitions are cached already
    assert cu.calls == 8


# --- LOO -----------------------------------------------------------------------------------------------------


@SETTINGS
@given(games())
def test_leave_one_out_and_within_group(game):
    table, groups = game
    n = len(table).bit_length() - 1
    v = table_game(table)
    full = (1 << n) - 1
    np.testing.assert_allclose(leave_one_out(v, n), [table[full] - table[full ^ (1 << i)] for i in range(n)])
    wg = within_group_loo(v, groups)
    for pre, g in zip(prefix_sets(groups)[1:], groups):
        m = mask_of(pre)
        for z in g:
            assert wg[z] == table[m] - table[m ^ (1 << z)]


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "groups",
    [[], [[0], []], [[0, 1], [1]], [[0, 2]], [[0, 0]], "01", [[0], 1]],
)
def test_bad_groups_raise_user_error(groups):
    with pytest.raises(InvalidGroupsError):
        validate_groups(groups)
    assert issubclass(InvalidGroupsError, UserError) and issubclass(InvalidGroupsError, ValueError)


def test_exact_guard_on_large_groups():
    with pytest.raises(UserError, match="max_group_size"):
        exact_ads(additive_game([1.0] * 5), [list(range(5))], max_group_size=4)


@SETTINGS
@given(games(max_n=6), st.data())
def test_later_exact_duplicate_gets_zero(game, data):
    # w duplicates z (a set utility: v only sees the distinct instances), z in an earlier group than w
    table, groups = game
    if len(groups) < 2:
        return
    k, l = sorted(data.draw(st.lists(st.integers(0, len(groups) - 1), min_size=2, max_size=2, unique=True)))
    z, w = data.draw(st.sampled_from(groups[k])), data.draw(st.sampled_from(groups[l]))

    def v(s):
        seen = (s - {w}) | ({z} if w in s else set())
        return float(table[mask_of(seen)])

    phi = exact_ads(v, groups)
    assert abs(phi[w]) < TOL
    ds = exact_shapley(v, len(table).bit_length() - 1)
    assert abs(ds[z] - ds[w]) < TOL  # DS cannot tell them apart
