"""BM25 similarity values (seeds/004 appendix section 6.1: "average similarity to the representative set").

The candidate texts are the corpus and every reference item is a query. A candidate's value is its mean
Okapi BM25 score over the reference queries, with exactly the statistics of rank-bm25's ``BM25Okapi``
(k1 = 1.5, b = 0.75, epsilon = 0.25; Trotman et al. 2014) and the tokenizer ``re.findall(r"\\w+", t.lower())``:

    idf(w)   = ln(N - n_w + 0.5) - ln(n_w + 0.5)        (floored to epsilon * mean_w idf(w) where negative)
    s(d, q)  = sum_{w in q, with multiplicity} idf(w) * f_dw (k1 + 1) / (f_dw + k1 (1 - b + b |d| / avgdl))
    value(d) = (1/|R|) sum_{q in R} s(d, q)

Hand-written instead of calling ``BM25Okapi.get_scores`` in a loop: the per-(document, term) weights form
one sparse matrix W (docs x vocabulary), so all queries are scored at once as W @ mean_q(counts_q), which is
the same number (BM25 is linear in the query's term counts) at a tiny fraction of the cost.

``idf="clamp"`` sets a negative idf to 0 instead (the clamp-at-zero BM25 of bm25s and Lucene-style engines;
rank-bm25's ``BM25Okapi(epsilon=0)``). With the Okapi floor, terms in more than half of the candidates (template
words: "Rating", "profile") get a positive idf of about 0.25 x the mean, comparable to the rare content words
when most terms are common; clamped, they score nothing. rank-bm25's floor stays the default: seeds/004 used it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import scipy.sparse as sp

from procure.errors import UserError

_TOKEN = re.compile(r"\w+")

#: how a negative idf (a term in more than half of the candidates) is treated: rank-bm25's floor or 0
Idf = Literal["okapi", "clamp"]
IDF_MODES = get_args(Idf)


def tokenize(text: str) -> list[str]:
    """The BM25 tokenizer of DESIGN.md: lower-cased ``\\w+`` runs."""
    return _TOKEN.findall(text.lower())


def _count_matrix(token_lists: Sequence[list[str]], vocab: dict[str, int], grow: bool) -> sp.csr_matrix:
    """Sparse term-count matrix (len(token_lists) x len(vocab)); unseen terms are added (grow) or dropped."""
    indptr = [0]
    indices: list[int] = []
    for toks in token_lists:
        for t in toks:
            j = vocab.get(t)
            if j is None:
                if not grow:
                    continue
                j = vocab[t] = len(vocab)
            indices.append(j)
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    m = sp.csr_matrix(
        (data, np.asarray(indices, dtype=np.int64), np.asarray(indptr)), shape=(len(token_lists), len(vocab))
    )
    m.sum_duplicates()  # repeated terms -> counts
    return m


def bm25_weights(candidates: Sequence[str], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
    """Sparse BM25Okapi weight matrix W (len(candidates) x vocabulary) and the vocabulary {term: column}.

    ``W[d, w] = idf(w) * f_dw (k1+1) / (f_dw + k1 (1 - b + b |d|/avgdl))``, so the BM25 score of document d for a
    query with term counts c is ``(W @ c)[d]``.
    """
    if len(candidates) == 0:
        raise UserError("bm25: no candidate texts; pass at least one candidate")
    vocab: dict[str, int] = {}
    tf = _count_matrix([tokenize(t) for t in candidates], vocab, grow=True)
    n_docs = tf.shape[0]
    doc_len = np.asarray(tf.sum(axis=1)).ravel()
    avgdl = doc_len.sum() / n_docs
    if not vocab or avgdl == 0:  # no term anywhere: every score is 0 (rank-bm25 divides by zero here)
        return sp.csr_matrix((n_docs, len(vocab))), vocab
    df = np.bincount(tf.indices, minlength=len(vocab)).astype(np.float64)
    idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
    idf = np.where(idf < 0, epsilon * idf.mean(), idf)
    norm = k1 * (1 - b + b * doc_len / avgdl)  # per document
    w = tf.copy()
    row = np.repeat(np.arange(n_docs), np.diff(tf.indptr))
    w.data = idf[tf.indices] * tf.data * (k1 + 1) / (tf.data + norm[row])
    return w, vocab


def bm25_scores(candidates: Sequence[str], reference: Sequence[str], **params: float) -> np.ndarray:
    """All BM25 scores at once: (len(reference), len(candidates)); row q equals ``BM25Okapi.get_scores(q)``."""
    w, vocab = bm25_weights(candidates, **params)
    q = _count_matrix([tokenize(t) for t in reference], vocab, grow=False)
    return np.asarray((q @ w.T).todense())


def bm25_values(candidates: list[str], reference: list[str], idf: Idf = "okapi") -> np.ndarray:
    """Mean BM25Okapi score of each candidate over the reference queries; shape (len(candidates),).

    Units: BM25 score (non-negative unless a term's floored idf is negative); higher = more similar to the
    reference set = more valuable. ``idf``: ``"okapi"`` (rank-bm25's floor, epsilon = 0.25) or ``"clamp"``
    (negative idf -> 0). See the module docstring for the formula.
    """
    if len(reference) == 0:
        raise UserError("bm25: the reference set is empty; pass at least one reference text")
    if idf not in IDF_MODES:
        raise UserError(f"bm25: idf {idf!r} is not one of {', '.join(IDF_MODES)}")
    w, vocab = bm25_weights(candidates, epsilon=0.25 if idf == "okapi" else 0.0)
    q = _count_matrix([tokenize(t) for t in reference], vocab, grow=False)
    q_mean = np.asarray(q.sum(axis=0)).ravel() / len(reference)
    return np.asarray(w @ q_mean, dtype=np.float64).ravel()
