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


def _reference(candidates, reference):
    bm = BM25Okapi([_tok(c) for c in candidates], k1=1.5, b=0.75, epsilon=0.25)
    return np.array([bm.get_scores(_tok(q)) for q in reference])


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


def test_bm25_tokenizer_and_errors():
    assert tokenize("Hello, WORLD_1 x-y") == ["hello", "world_1", "x", "y"]
    with pytest.raises(UserError, match="candidate"):
        bm25_values([], ["q"])
    with pytest.raises(UserError, match="reference"):
        bm25_values(["a"], [])
    assert bm25_values(["", "!!"], ["a"]).tolist() == [0.0, 0.0]  # no term anywhere: 0, not NaN
