"""bm25_values against rank-bm25's BM25Okapi.get_scores looped over the reference queries."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rank_bm25 import BM25Okapi

from procure.errors import UserError
from procure.valuation.bm25 import bm25_scores, bm25_values, tokenize

WORDS = ["the", "a", "Train", "speed", "km", "hr", "pole", "x1", "ñandú", "42", "rate", "product"]


def _tok(t: str) -> list[str]:
    return re.findall(r"\w+", t.lower())


def _reference(candidates, reference, epsilon=0.25):
    bm = BM25Okapi([_tok(c) for c in candidates], k1=1.5, b=0.75, epsilon=epsilon)
    return np.array([bm.get_scores(_tok(q)) for q in reference])


def _clamped_loop(candidates, reference, k1=1.5, b=0.75):
    """Clamp-at-zero BM25 written out term by term: max(0, ln((N - n_w + 0.5) / (n_w + 0.5))) as the idf."""
    docs = [_tok(c) for c in candidates]
    avgdl = sum(map(len, docs)) / len(docs)
    out = np.zeros(len(docs))
    for q in reference:
        for i, d in enumerate(docs):
            for w in _tok(q):
                n_w = sum(w in x for x in docs)
                idf = max(0.0, np.log((len(docs) - n_w + 0.5) / (n_w + 0.5)))
                f = d.count(w)
                out[i] += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl)) / len(reference)
    return out


text = st.lists(st.sampled_from(WORDS + ["!", "--", "Zz"]), min_size=0, max_size=9).map(" ".join)


@settings(max_examples=40, deadline=None)
@given(
    candidates=st.lists(text, min_size=1, max_size=15).filter(lambda c: any(_tok(x) for x in c)),
    reference=st.lists(text, min_size=1, max_size=6),
)
def test_bm25_equals_rank_bm25(candidates, reference):
    ref = _reference(candidates, reference)
    np.testing.assert_allclose(bm25_scores(candidates, reference), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bm25_values(candidates, reference), ref.mean(axis=0), rtol=1e-12, atol=1e-12)


def test_bm25_negative_idf_floor_and_repeated_query_terms():
    # "the" is in more than half of the documents: rank-bm25 floors its idf to epsilon * mean idf
    candidates = ["the train", "the pole the pole", "the speed", "rate of the product", "km"]
    reference = ["the the pole", "speed speed speed km", "nothing matches"]
    ref = _reference(candidates, reference)
    np.testing.assert_allclose(bm25_values(candidates, reference), ref.mean(axis=0), rtol=1e-12)
    assert bm25_values(candidates, ["unknown words only"]).tolist() == [0.0] * 5


@settings(max_examples=30, deadline=None)
@given(
    candidates=st.lists(text, min_size=1, max_size=12).filter(lambda c: any(_tok(x) for x in c)),
    reference=st.lists(text, min_size=1, max_size=5),
)
def test_bm25_clamp_equals_term_loop_and_rank_bm25_epsilon_0(candidates, reference):
    got = bm25_values(candidates, reference, idf="clamp")
    np.testing.assert_allclose(got, _clamped_loop(candidates, reference), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, _reference(candidates, reference, epsilon=0.0).mean(axis=0), rtol=1e-12)
    assert (got >= 0).all()


def test_bm25_clamp_drops_template_words_that_okapi_keeps():
    # every candidate shares the template; only the level words differ. Okapi's floor gives the template words
    # a positive idf (the mean idf is positive: most terms are rare levels); clamped, they score nothing
    prices = ["low", "high", "mid", "cheap", "dear", "fair", "steep", "free"]
    colours = ["red", "blue", "green", "grey", "pink", "teal", "gold", "jade"]
    candidates = [f"Rating of this profile: price {a}, colour {b}" for a, b in zip(prices, colours)]
    candidates.append("Rating of this profile: Rating of this profile")
    reference = ["Rating of this profile: price low, colour red"]
    okapi, clamp = bm25_values(candidates, reference), bm25_values(candidates, reference, idf="clamp")
    assert okapi[-1] > 0 and clamp[-1] == 0.0  # the template alone: worth something only under the floor
    assert clamp[0] > 0 and np.count_nonzero(clamp) < np.count_nonzero(okapi)
    with pytest.raises(UserError, match="idf"):
        bm25_values(candidates, reference, idf="lucene")


def test_bm25_tokenizer_and_errors():
    assert tokenize("Hello, WORLD_1 x-y") == ["hello", "world_1", "x", "y"]
    with pytest.raises(UserError, match="candidate"):
        bm25_values([], ["q"])
    with pytest.raises(UserError, match="reference"):
        bm25_values(["a"], [])
    assert bm25_values(["", "!!"], ["a"]).tolist() == [0.0, 0.0]  # no term anywhere: 0, not NaN
