"""Conjoint task: AvgErr ground truths, the "Rating: X" parser, candidate datasets (seeds/000 section 6.3)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression

from procure.errors import UserError
from procure.tasks.base import Task
from procure.tasks.conjoint import (
    PROFILES,
    ConjointEval,
    ConjointWorld,
    avg_err,
    fit_partworths,
    make_candidates,
    parse_rating,
    render_profile,
    warmup_rows,
)


def _answers(values, k=1):
    return [[f"Rating: {float(v)!r}."] * k for v in values]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3))
def test_noise_free_true_ratings_have_zero_avg_err(seed, k):
    world = ConjointWorld(seed)
    ev = ConjointEval(world, samples_per_profile=k, seed=seed)
    assert isinstance(ev, Task)
    err = ev.score(_answers(world.mean_rating(ev.profiles), k))
    assert err < 1e-9 and ev.last.n_unparseable == 0 and ev.last.n_answers == 32 * k
    assert ev.utility(err) == -err and not ev.higher_is_better


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.floats(0, 100))
def test_constant_predictor_closed_form(seed, c):
    world = ConjointWorld(seed)
    ev = ConjointEval(world, 2, seed=1, split="test")
    u = world.true
    expected = np.abs(u - u.mean(axis=1, keepdims=True)).mean()  # fit is flat: |0 - centred u| averaged
    assert ev.score(_answers([c] * 32, 2)) == pytest.approx(expected, abs=1e-9)
    # never answering in the format = imputing the midpoint = a constant predictor
    assert ev.score([["I like it."]] * 32) == pytest.approx(expected, abs=1e-9)
    assert ev.last.n_unparseable == 32


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_other_partworths_closed_form_and_reference_coding_ols(seed):
    world = ConjointWorld(seed)
    prof = np.asarray(PROFILES)
    ratings = world.mean_rating(prof, "noisy")
    expected = np.abs(
        (world.noisy - world.noisy.mean(1, keepdims=True)) - (world.true - world.true.mean(1, keepdims=True))
    )
    assert avg_err(prof, ratings, world.true) == pytest.approx(expected.mean(), abs=1e-9)
    # least squares vs sklearn OLS with reference coding (intercept + 9 dummies), both centred per attribute
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 64, 150)
    y = world.rate(prof[idx], "true", rng)
    x = np.concatenate([(prof[idx][:, [i]] == np.arange(1, 4)).astype(float) for i in range(3)], axis=1)
    coef = LinearRegression().fit(x, y).coef_.reshape(3, 3)
    ref = np.concatenate([np.zeros((3, 1)), coef], axis=1)
    ref -= ref.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(fit_partworths(prof[idx], y), ref, atol=1e-8)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Rating: 85.", 85.0),
        ("Rating:85", 85.0),
        ("rating: 72.5 because", 72.5),
        ("**Rating:** 40.", 40.0),
        ("Sure! Rating: 12. Rating: 99.", 12.0),
        ("Rating: -5.", 0.0),
        ("Rating: 150", 100.0),
        ("Rating: X.", None),
        ("I would give it 70.", None),
        ("", None),
        ("Ratings are fun", None),
    ],
)
def test_parse_rating(text, value):
    assert parse_rating(text) == value


def test_drop_mode_and_errors():
    world = ConjointWorld(3)
    ev = ConjointEval(world, 1, unparseable="drop")
    gens = _answers(world.mean_rating(ev.profiles))
    gens[5] = ["no idea"]
    assert ev.score(gens) < 1e-9 and ev.last.n_unparseable == 1 and ev.last.n_answers == 32
    with pytest.raises(UserError, match="no parseable"):
        ev.score([["?"]] * 32)
    with pytest.raises(UserError, match="expected 32"):
        ev.score(gens[:3])
    with pytest.raises(UserError, match="split"):
        ConjointEval(world, split="train")


def test_validation_and_test_rate_disjoint_balanced_halves():
    world = ConjointWorld(0)
    val, test = ConjointEval(world, seed=4), ConjointEval(world, seed=4, split="test")
    v, t = set(map(tuple, val.profiles)), set(map(tuple, test.profiles))
    assert len(v) == len(t) == 32 and not v & t and v | t == set(PROFILES)
    assert not set(val.eval_prompts()) & set(test.eval_prompts())
    for half in (val.profiles, test.profiles):  # orthogonal array: every level 8x, every level pair 2x
        for i in range(3):
            assert np.bincount(half[:, i], minlength=4).tolist() == [8] * 4
        for i, j in ((0, 1), (0, 2), (1, 2)):
            assert np.bincount(half[:, i] * 4 + half[:, j], minlength=16).tolist() == [2] * 16
    assert ConjointEval(world, seed=4).eval_prompts() == val.eval_prompts()
    assert "Rating: X." in val.system and "Color:" in val.eval_prompts()[0]
    both = ConjointEval(world, seed=4, profiles="all"), ConjointEval(world, seed=4, split="test", profiles="all")
    assert sorted(map(tuple, both[0].profiles)) == sorted(PROFILES) == sorted(map(tuple, both[1].profiles))


def test_greedy_validation_and_test_scores_come_from_different_model_outputs():
    """A deterministic "model" (greedy decoding: one fixed answer per prompt) that answers the true rating on
    some profiles and garbage on others: with the halves, changing its answers on test prompts moves the test
    score and leaves the validation score alone (with profiles="all" the two scores were the same numbers)."""
    world = ConjointWorld(5)
    truth = {render_profile(p): float(world.mean_rating(np.array([p]))[0]) for p in PROFILES}

    def greedy(ev: ConjointEval, wrong: set[str]) -> float:
        return ev.score([[f"Rating: {0.0 if q in wrong else truth[q]}"] for q in ev.eval_prompts()])

    val, test = ConjointEval(world, seed=1), ConjointEval(world, seed=1, split="test")
    spoil = set(test.eval_prompts()[:8])
    assert greedy(val, set()) == greedy(val, spoil) < 1e-9
    assert greedy(test, set()) < 1e-9 < greedy(test, spoil)
    old_val, old_test = (
        ConjointEval(world, seed=1, profiles="all"),
        ConjointEval(world, seed=1, split="test", profiles="all"),
    )
    assert greedy(old_val, spoil) == pytest.approx(greedy(old_test, spoil))  # the leak the halves remove


def test_candidates_noise_shares_and_sources():
    world = ConjointWorld(7, noise_sd=0.0)
    cands = make_candidates(world, 3, 50, (0.3, 0.6, 0.9), rng=1)
    assert [len(c) for c in cands] == [50, 50, 50]
    assert [sum(r["noisy"] for r in c) for c in cands] == [15, 30, 45]
    for rows in cands:
        for r in rows:
            assert set(r) >= {"prompt", "answer", "noisy", "profile"}
            mu = world.mean_rating(np.asarray([r["profile"]]), r["source"])[0]
            assert r["rating"] == int(np.rint(mu)) and r["answer"] == f"Rating: {r['rating']}."
            assert r["noisy"] == (r["source"] == "noisy")
    again = make_candidates(world, 3, 50, (0.3, 0.6, 0.9), rng=1)
    assert again == cands
    assert [sum(r["noisy"] for r in c) for c in make_candidates(world, 4, 10, (0.0, 1.0), rng=2)] == [0, 10, 0, 10]
    warm = warmup_rows(world, 20, rng=3)
    assert len(warm) == 20 and {r["source"] for r in warm} == {"biased"}
    with pytest.raises(UserError, match="noise_shares"):
        make_candidates(world, 3, 5, (1.5,))


def test_noisy_ratings_are_clipped():
    world = ConjointWorld(0, noise_sd=500.0)
    y = world.rate(np.asarray(PROFILES), "true", 0)
    assert y.min() == 0.0 and y.max() == 100.0


def _lookahead_tables(dist: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """first/second log-prob tables of a distribution over answers like "57." and "8." (symbols 0-9 and ".")."""
    first, second = np.full((1, 11), -50.0), np.full((1, 11, 11), -50.0)
    for ans, p in dist.items():
        first[0, int(ans[0])] = np.logaddexp(first[0, int(ans[0])], np.log(p))
    for d in range(10):
        cont = {a: p for a, p in dist.items() if int(a[0]) == d}
        tot = sum(cont.values())
        for a, p in cont.items():
            nxt = 10 if a[1] == "." else int(a[1])
            second[0, d, nxt] = np.logaddexp(second[0, d, nxt], np.log(p / tot))
    return first, second


@pytest.mark.parametrize(
    ("dist", "expected"),
    [({"57.": 1.0}, 57.0), ({"57.": 0.5, "8.": 0.5}, 32.5), ({"20.": 0.25, "21.": 0.25, "90.": 0.5}, 55.25)],
)
def test_expected_rating_of_known_answer_distributions(dist, expected):
    from procure.tasks.conjoint import expected_ratings

    assert expected_ratings(*_lookahead_tables(dist))[0] == pytest.approx(expected, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_expected_rating_equals_enumeration_over_two_token_answers(seed):
    """E over all answers "d." and "de" (d, e digits) enumerated with their two-step probabilities, with the
    probability outside the symbols renormalised away."""
    from procure.tasks.conjoint import expected_ratings

    rng = np.random.default_rng(seed)
    first, second = rng.normal(0, 2, (3, 11)), rng.normal(0, 2, (3, 11, 11))
    got = expected_ratings(first, second)
    for i in range(3):
        q = np.exp(first[i, :10]) / np.exp(first[i, :10]).sum()
        total = 0.0
        for d in range(10):
            r = np.exp(second[i, d]) / np.exp(second[i, d]).sum()
            total += q[d] * (r[10] * d + sum(r[e] * (10 * d + e) for e in range(10)))
        assert got[i] == pytest.approx(total, rel=1e-10)


def test_lookahead_readout_scores_the_split_profiles():
    world = ConjointWorld(2)
    ev = ConjointEval(world, seed=0, split="test", readout="expected")
    tables = [_lookahead_tables({f"{int(v) // 10}{int(v) % 10}.": 1.0}) for v in world.mean_rating(ev.profiles)]
    first = np.concatenate([t[0] for t in tables])
    second = np.concatenate([t[1] for t in tables])
    truth_err = ev.score_lookahead(first, second)  # integer-truncated true ratings: small but not zero error
    assert 0 < truth_err < 1.0 and ev.last.n_answers == 32
    with pytest.raises(UserError, match="readout"):
        ConjointEval(world, readout="argmax")
