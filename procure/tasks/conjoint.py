"""Conjoint product ratings: the synthetic world, candidate datasets and the AvgErr metric of seeds/000 section 6.3
(appendix C.3; notes/000_ads.md section 4.3).

World. Three attributes with four levels each (color, size, material; 4^3 = 64 profiles). Part-worths
u_ij ~ U(0, 95/3) i.i.d. (so sum_i u_{i,a_i} <= 95), drawn three times from one seed: ``true`` (the "true
dataset"), ``noisy`` (u' != u, the "noisy dataset") and ``biased`` (the phase-0 warm-up data that teaches an
initially wrong behaviour; the paper does not say how it was generated, a third independent draw is our choice).
A rating is y = sum_i u_{i,a_i} + eps, eps ~ N(0, noise_sd^2) with noise_sd = 5 (the paper's "N(0, 5)" is
ambiguous between variance and standard deviation; we read it as sd), clipped to [0, 100]; training answers are
rounded to integers because the prompt asks for an integer.

Metric (DESIGN.md). Part-worths are fitted by least squares of the ratings on the 12 attribute-level dummies
(no intercept: rank 10, min-norm solution), then both the fit and the true part-worths are centred per
attribute, since the design identifies them only up to a per-attribute shift; AvgErr = (1/12) sum_ij
|u_hat_ij - u_ij| in rating points (0-100 scale), lower is better; the task utility is -AvgErr.

Parsing. The first "Rating: X" (case-insensitive, optional ``**`` and spaces, X an integer or decimal, a leading
minus kept) is the rating, clipped to [0, 100]. An answer without it is *unparseable*: by default it is
imputed with 50 (the middle of the scale) and counted, so a model that never answers in the format scores like
the constant predictor instead of being dropped (dropping would reward refusing hard profiles and can leave a
level unidentified); ``unparseable="drop"`` removes such answers instead.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from procure.errors import UserError
from procure.tasks.base import load_template

ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("color", ("red", "blue", "green", "black")),
    ("size", ("small", "medium", "large", "extra-large")),
    ("material", ("cotton", "wool", "polyester", "leather")),
)
N_LEVELS = 4
PROFILES: tuple[tuple[int, int, int], ...] = tuple(itertools.product(range(N_LEVELS), repeat=len(ATTRIBUTES)))
_RATING = re.compile(r"rating\s*:\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)

RngLike = np.random.Generator | int | None


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def parse_rating(text: str) -> float | None:
    """The first "Rating: X" in ``text`` as a float clipped to [0, 100], or None when there is none."""
    m = _RATING.search(text or "")
    return None if m is None else float(np.clip(float(m.group(1)), 0.0, 100.0))


def render_profile(profile: Sequence[int]) -> str:
    """The user text describing a profile (levels as indices 0..3), from ``prompts/conjoint.txt``."""
    fields = {name: levels[a] for (name, levels), a in zip(ATTRIBUTES, profile)}
    return load_template("conjoint")["user"].format(**fields)


def instruction() -> str:
    """The paper's instruction prompt (used as the system message for training and inference)."""
    return load_template("conjoint")["system"]


def design_matrix(profiles: np.ndarray) -> np.ndarray:
    """(N, 12) attribute-level dummies; column 4 i + j is attribute i at level j."""
    p = np.asarray(profiles, dtype=np.int64).reshape(-1, len(ATTRIBUTES))
    x = np.zeros((p.shape[0], len(ATTRIBUTES) * N_LEVELS))
    for i in range(len(ATTRIBUTES)):
        x[np.arange(p.shape[0]), i * N_LEVELS + p[:, i]] = 1.0
    return x


def centre(partworths: np.ndarray) -> np.ndarray:
    """Subtract each attribute's mean level part-worth (rows = attributes)."""
    u = np.asarray(partworths, dtype=np.float64).reshape(len(ATTRIBUTES), N_LEVELS)
    return u - u.mean(axis=1, keepdims=True)


def fit_partworths(profiles: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """Least-squares part-worths (3, 4), centred per attribute: argmin |X u - y|^2 (min-norm), then centred."""
    sol, *_ = np.linalg.lstsq(design_matrix(profiles), np.asarray(ratings, dtype=np.float64), rcond=None)
    return centre(sol)


def avg_err(profiles: np.ndarray, ratings: np.ndarray, true_partworths: np.ndarray) -> float:
    """AvgErr = (1/12) sum_ij |u_hat_ij - u_ij| with both sides centred per attribute (rating points)."""
    return float(np.abs(fit_partworths(profiles, ratings) - centre(true_partworths)).mean())


class ConjointWorld:
    """True, noisy and biased part-worths (3, 4) from one seed, and noisy ratings of profiles.

    ``noise_sd``: standard deviation of eps in rating points; ``max_partworth``: upper end of U(0, .).
    """

    def __init__(self, seed: int = 0, *, noise_sd: float = 5.0, max_partworth: float = 95.0 / 3.0):
        if noise_sd < 0:
            raise UserError("conjoint: noise_sd must be >= 0")
        self.seed = seed
        self.noise_sd = float(noise_sd)
        rng = np.random.default_rng(seed)
        shape = (len(ATTRIBUTES), N_LEVELS)
        self.true = rng.uniform(0.0, max_partworth, shape)
        self.noisy = rng.uniform(0.0, max_partworth, shape)
        self.biased = rng.uniform(0.0, max_partworth, shape)

    def partworths(self, source: str) -> np.ndarray:
        if source not in ("true", "noisy", "biased"):
            raise UserError(f"conjoint: unknown source '{source}'; use true, noisy or biased")
        return getattr(self, source)

    def mean_rating(self, profiles: np.ndarray, source: str = "true") -> np.ndarray:
        """Noise-free ratings sum_i u_{i,a_i} of profiles (N, 3)."""
        return design_matrix(profiles) @ self.partworths(source).reshape(-1)

    def rate(self, profiles: np.ndarray, source: str, rng: RngLike) -> np.ndarray:
        """Noisy ratings clip(sum_i u_{i,a_i} + eps, 0, 100), eps ~ N(0, noise_sd^2)."""
        mu = self.mean_rating(profiles, source)
        return np.clip(mu + _rng(rng).normal(0.0, self.noise_sd, mu.shape), 0.0, 100.0)

    def rows(self, profiles: np.ndarray, source: str, rng: RngLike) -> list[dict[str, Any]]:
        """Training rows {"prompt", "answer", "noisy", "profile", "system", "source", "rating"} (integer ratings)."""
        profiles = np.asarray(profiles, dtype=np.int64).reshape(-1, len(ATTRIBUTES))
        ratings = np.rint(self.rate(profiles, source, rng)).astype(int)
        tmpl, system = load_template("conjoint"), instruction()
        return [
            {
                "prompt": render_profile(p),
                "answer": tmpl["answer"].format(rating=int(r)),
                "noisy": source != "true",
                "profile": tuple(int(a) for a in p),
                "system": system,
                "source": source,
                "rating": int(r),
            }
            for p, r in zip(profiles, ratings)
        ]


def sample_profiles(n: int, rng: RngLike) -> np.ndarray:
    """n profiles drawn uniformly with replacement from the 64 (the paper does not say; this is our choice)."""
    return np.asarray(PROFILES)[_rng(rng).integers(0, len(PROFILES), n)]


def make_candidates(
    world: ConjointWorld,
    n_sellers: int,
    rows_per_seller: int,
    noise_shares: Sequence[float] = (0.3, 0.6, 0.9),
    rng: RngLike = None,
) -> list[list[dict[str, Any]]]:
    """One round's candidate datasets: seller j gets round(share_j * rows_per_seller) rows from the noisy
    part-worths and the rest from the true ones, in random order; share_j = noise_shares[j % len(noise_shares)]
    (the paper: 3 sellers x 50 rows with 30/60/90 % noisy rows)."""
    if n_sellers < 1 or rows_per_seller < 1:
        raise UserError("conjoint: n_sellers and rows_per_seller must be >= 1")
    if not noise_shares or any(not 0.0 <= s <= 1.0 for s in noise_shares):
        raise UserError("conjoint: noise_shares must be a non-empty list of fractions in [0, 1]")
    g = _rng(rng)
    out = []
    for j in range(n_sellers):
        n_noisy = int(round(noise_shares[j % len(noise_shares)] * rows_per_seller))
        rows = world.rows(sample_profiles(n_noisy, g), "noisy", g) + world.rows(
            sample_profiles(rows_per_seller - n_noisy, g), "true", g
        )
        out.append([rows[k] for k in g.permutation(len(rows))])
    return out


def warmup_rows(world: ConjointWorld, n: int, rng: RngLike = None) -> list[dict[str, Any]]:
    """Phase-0 rows from the biased part-worths (the paper's 500-sample "biased dataset")."""
    g = _rng(rng)
    return world.rows(sample_profiles(n, g), "biased", g)


@dataclass
class ConjointScore:
    avg_err: float
    partworths: np.ndarray  # fitted, centred (3, 4)
    n_answers: int  # all sampled answers, parseable or not
    n_unparseable: int
    ratings: np.ndarray = field(repr=False)


def expected_ratings(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The probability-weighted rating of each prompt from two next-token steps after "Rating: ".

    ``first`` (n, 11): log p of the symbols 0-9 and "." as the first answer token; ``second`` (n, 11, 11): log p
    of the same symbols after each of them. With q(d) = p(first digit d) over the digits and, given d,
    r(e) = p(second digit e) and r(.) = p(the number ends) over digits and ".",
    ``E = sum_d q(d) [r(.) d + sum_e r(e) (10 d + e)]``, clipped to [0, 100]. Three-digit answers (100) are
    read as their first two digits: one forward pass, no decoding."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    q = np.exp(first[:, :10] - first[:, :10].max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    r = np.exp(second[:, :10, :] - second[:, :10, :].max(axis=2, keepdims=True))
    r /= r.sum(axis=2, keepdims=True)
    d = np.arange(10.0)
    given = r[:, :, 10] * d + (r[:, :, :10] * (10.0 * d[:, None] + d[None, :])).sum(axis=2)  # (n, 10)
    return np.clip((q * given).sum(axis=1), 0.0, 100.0)


def profile_half(split: Literal["validation", "test"]) -> np.ndarray:
    """The 32 profiles of a split: validation = even ``a + b + c``, test = odd (two halves of the 4^3 design).

    Each half is an orthogonal array of strength 2 (every level 8 times, every pair of levels of two attributes
    twice), so the 12 part-worths are identified from either half (design rank 10, as for all 64), and the two
    halves share no prompt: with greedy decoding the validation score (what the buyer selects on) and the test
    score (what is reported) come from different model outputs."""
    p = np.asarray(PROFILES)
    return p[(p.sum(axis=1) % 2) == (0 if split == "validation" else 1)]


class ConjointEval:
    """Rate the split's profiles, ``samples_per_profile`` sampled answers each (paper: 5, temperature 0.7), and
    score AvgErr against the world's true part-worths.

    ``profiles="halves"`` (default): validation and test rate disjoint halves of the design (:func:`profile_half`),
    so selecting on validation never sees a test answer. ``profiles="all"``: both rate all 64 profiles in
    different orders with different ``sampling_seed`` (fresh samples only when sampling, temperature > 0; under
    greedy decoding the two splits then give identical answers, i.e. validation would be the test set).

    ``readout="generate"``: parse generated "Rating: X" answers (:meth:`score`); ``"expected"``: the learner
    scores the next-token distributions instead (:meth:`score_lookahead`, :func:`expected_ratings`).
    """

    name = "conjoint"
    metric_name = "avg_err"
    higher_is_better = False
    temperature = 0.7
    max_new_tokens = 8

    def __init__(
        self,
        world: ConjointWorld,
        samples_per_profile: int = 5,
        seed: int = 0,
        split: Literal["validation", "test"] = "validation",
        *,
        unparseable: Literal["impute", "drop"] = "impute",
        impute_value: float = 50.0,
        profiles: Literal["halves", "all"] = "halves",
        readout: Literal["generate", "expected"] = "generate",
    ):
        if split not in ("validation", "test"):
            raise UserError(f"conjoint: split must be 'validation' or 'test', not '{split}'")
        if samples_per_profile < 1:
            raise UserError("conjoint: samples_per_profile must be >= 1")
        if unparseable not in ("impute", "drop"):
            raise UserError("conjoint: unparseable must be 'impute' or 'drop'")
        self.world = world
        self.samples_per_prompt = samples_per_profile
        self.split = split
        self.sampling_seed = int(np.random.SeedSequence([seed, 0 if split == "validation" else 1]).generate_state(1)[0])
        if readout not in ("generate", "expected"):
            raise UserError(f"conjoint: readout must be 'generate' or 'expected', not '{readout}'")
        self.readout = readout
        if profiles not in ("halves", "all"):
            raise UserError(f"conjoint: profiles must be 'halves' or 'all', not '{profiles}'")
        pool = profile_half(split) if profiles == "halves" else np.asarray(PROFILES)
        self.profiles = pool[np.random.default_rng(self.sampling_seed).permutation(len(pool))]
        self.system = instruction()
        self.unparseable = unparseable
        self.impute_value = float(impute_value)
        self.last: ConjointScore | None = None

    def eval_prompts(self) -> list[str]:
        return [render_profile(p) for p in self.profiles]

    def evaluate(self, generations: list[list[str]]) -> ConjointScore:
        """Parse every sampled answer, fit part-worths, return AvgErr with the parse counts."""
        if len(generations) != len(self.profiles):
            raise UserError(f"conjoint: got answers for {len(generations)} prompts, expected {len(self.profiles)}")
        profiles, ratings, bad, total = [], [], 0, 0
        for p, answers in zip(self.profiles, generations):
            for a in [answers] if isinstance(answers, str) else answers:
                total += 1
                r = parse_rating(a)
                if r is None:
                    bad += 1
                    if self.unparseable == "drop":
                        continue
                    r = self.impute_value
                profiles.append(p)
                ratings.append(r)
        if not ratings:
            raise UserError("conjoint: no parseable 'Rating: X' answer at all; use unparseable='impute'")
        prof, y = np.asarray(profiles), np.asarray(ratings)
        fitted = fit_partworths(prof, y)
        err = float(np.abs(fitted - centre(self.world.true)).mean())
        self.last = ConjointScore(err, fitted, total, bad, y)
        return self.last

    def score(self, generations: list[list[str]]) -> float:
        """AvgErr (rating points, lower = better) of the sampled answers; see :meth:`evaluate`."""
        return self.evaluate(generations).avg_err

    #: the expected-rating readout: the model's answer is forced to start with this prefix ...
    lookahead_prefix = "Rating: "
    #: ... and these single tokens are scored after it and after each of them (``Generator.lookahead``)
    lookahead_symbols = [str(d) for d in range(10)] + ["."]

    def score_lookahead(self, first: np.ndarray, second: np.ndarray) -> float:
        """AvgErr of the expected ratings (:func:`expected_ratings`) of this split's profiles, one per profile."""
        y = expected_ratings(first, second)
        if len(y) != len(self.profiles):
            raise UserError(f"conjoint: got {len(y)} expected ratings, expected {len(self.profiles)}")
        fitted = fit_partworths(self.profiles, y)
        err = float(np.abs(fitted - centre(self.world.true)).mean())
        self.last = ConjointScore(err, fitted, len(y), 0, y)
        return err

    def utility(self, metric: float) -> float:
        return -float(metric)
