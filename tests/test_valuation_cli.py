"""``procure value``: results equal the library on the same data; user mistakes are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import KNeighborsClassifier

from procure.cli import main
from procure.valuation import exact_ads, knn_ads, knn_shapley, knn_utility, leave_one_out, mc_ads, permutation_budget
from procure.valuation.hcdv import hcdv_values
from procure.valuation.montecarlo import hoeffding_eps
from procure.valuation.tabular import ClassifierUtility, Sources

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _table(rng, n=12, n_test=10, groups=(1, 2, 3)):
    x = rng.normal(size=(n + n_test, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=n + n_test) > 0).astype(int)
    df = pd.DataFrame(x, columns=["f0", "f1", "f2"])
    df["label"] = y
    df["round"] = [groups[i % len(groups)] for i in range(n + n_test)]
    df["name"] = [f"r{i}" for i in range(n + n_test)]
    return df.iloc[:n].reset_index(drop=True), df.iloc[n:].reset_index(drop=True)


def _run(tmp_path, *argv):
    out = tmp_path / "values.csv"
    rc = main(["value", *argv, "--out", str(out)])
    assert rc == 0
    return pd.read_csv(out)


def test_knn_methods_match_library_on_bundled_example(tmp_path, capsys):
    train = pd.read_csv(EXAMPLES / "digits_train.csv")
    test = pd.read_csv(EXAMPLES / "digits_test.csv")
    pix = [f"p{j}" for j in range(64)]
    x, y, xt, yt = train[pix].to_numpy(float), train["label"], test[pix].to_numpy(float), test["label"]
    args = ["--data", str(EXAMPLES / "digits_train.csv"), "--test", str(EXAMPLES / "digits_test.csv")]
    got = _run(tmp_path, "--method", "knn-ads", *args, "--groups", "group", "--id", "id", "--k", "3")
    g = [list(np.flatnonzero(train["group"] == 1)), list(np.flatnonzero(train["group"] == 2))]
    np.testing.assert_allclose(got["value"], knn_ads(x, y, g, xt, yt, 3), atol=1e-12)
    assert list(got.columns) == ["id", "group", "value", "stderr"] and list(got["id"]) == list(train["id"])
    got = _run(
        tmp_path, "--method", "knn-shapley", *args, "--id", "id", "--owner", "owner", "--plot", f"{tmp_path}/v.png"
    )
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_allclose(got["value"], knn_shapley(x, y, xt, yt, 5), atol=1e-12)
    owners = pd.read_csv(tmp_path / "values_owners.csv").set_index("owner")["value"]
    np.testing.assert_allclose(owners["broker"], got["value"][train["owner"] == "broker"].sum())
    assert "top and bottom" in capsys.readouterr().out


def test_ads_and_loo_over_sources_match_library(tmp_path):
    rng = np.random.default_rng(0)
    train, test = _table(rng)
    train["src"] = [f"s{i // 2}" for i in range(len(train))]  # 6 sources of 2 rows, rounds 1,2,3 per row...
    train["round"] = [1, 1, 2, 2, 3, 3] * 2  # ...each source inside one round
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    common = ["--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--source", "src"]
    common += ["--features", "f0,f1,f2", "--k", "3"]
    src = Sources.build(train, "src", None, "round")
    v = ClassifierUtility(train[["f0", "f1", "f2"]], train["label"], test[["f0", "f1", "f2"]], test["label"], src, k=3)
    groups = [[i for i, g in enumerate(src.groups_of) if g == r] for r in (1, 2, 3)]
    got = _run(tmp_path, "--method", "ads", "--groups", "round", *common)
    np.testing.assert_allclose(got["value"], exact_ads(v, groups), atol=1e-12)
    assert list(got["id"]) == [f"s{i}" for i in range(6)]
    got = _run(tmp_path, "--method", "loo", *common)
    np.testing.assert_allclose(got["value"], leave_one_out(v, 6), atol=1e-12)
    # --group-order reverses sigma
    got = _run(tmp_path, "--method", "ads", "--groups", "round", "--group-order", "3,2,1", *common)
    np.testing.assert_allclose(got["value"], exact_ads(v, groups[::-1]), atol=1e-12)


def test_mc_path_parquet_and_embedding(tmp_path):
    rng = np.random.default_rng(1)
    train, test = _table(rng, n=14, groups=(1, 2))
    train["emb"] = list(train[["f0", "f1", "f2"]].to_numpy())
    train.drop(columns=["f0", "f1", "f2"]).to_parquet(tmp_path / "train.parquet")
    test["emb"] = list(test[["f0", "f1", "f2"]].to_numpy())
    test.to_parquet(tmp_path / "test.parquet")
    args = ["--data", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"), "--embedding", "emb"]
    got = _run(tmp_path, "--method", "ds", *args, "--exact-max", "4", "--permutations", "20", "--id", "name")
    assert (got["stderr"] > 0).any() and list(got["id"]) == list(train["name"])
    v = ClassifierUtility(
        np.stack(train["emb"]),
        train["label"],
        np.stack(test["emb"]),
        test["label"],
        Sources.build(train, None, None, None),
    )
    assert abs(got["value"].sum() - v(frozenset(range(14)))) < 1e-9  # MC efficiency (v(empty) = 0)


def test_hf_dataset_on_disk_and_test_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(2)
    train, test = _table(rng, n=30, n_test=0)
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(train)}).save_to_disk(str(tmp_path / "ds"))
    got = _run(tmp_path, "--method", "knn-shapley", "--data", str(tmp_path / "ds"), "--features", "f0,f1")
    assert len(got) == 21  # 30 rows minus a 30% test split


def test_knn_classifier_utility_matches_sklearn():
    rng = np.random.default_rng(3)
    x, xt = rng.normal(size=(25, 2)), rng.normal(size=(40, 2))
    y, yt = rng.integers(0, 3, 25), rng.integers(0, 3, 40)
    v = ClassifierUtility(x, y, xt, yt, Sources.build(pd.DataFrame({"a": y}), None, None, None), k=5)
    for size in (1, 3, 6, 25):
        s = sorted(rng.choice(25, size, replace=False).tolist())
        clf = KNeighborsClassifier(n_neighbors=min(5, size)).fit(x[s], y[s])
        assert v(frozenset(s)) == pytest.approx(np.mean(clf.predict(xt) == yt))
    assert v(frozenset()) == 0.0


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(4)
    train, test = _table(rng, n=10, groups=(1, 2))
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test.csv", index=False)
    (d / "broken.parquet").write_bytes(b"not a parquet file")
    return d


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--method", "ds", "--data", "{d}/nope.csv"], "file not found"),
        (["--method", "ds", "--data", "{d}/broken.parquet"], "cannot read"),
        (["--method", "ads", "--data", "{d}/train.csv", "--groups", "stage"], "no column 'stage'"),
        (["--method", "knn-shapley", "--data", "{d}/train.csv", "--k", "0"], "--k must be >= 1"),
        (["--method", "ads", "--data", "{d}/train.csv", "--groups", "round", "--group-order", "1,2,7"], "empty"),
    ],
)
def test_user_errors_are_one_line_exit_2(bad_inputs, argv, needle, tmp_path):
    argv = [a.format(d=bad_inputs) for a in argv] + ["--test", str(bad_inputs / "test.csv")]
    proc = subprocess.run(
        [sys.executable, "-m", "procure.cli", "value", *argv, "--out", str(tmp_path / "v.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("procure: error:") and needle in lines[0]


def test_more_user_errors_in_process(bad_inputs, tmp_path, capsys):
    d = bad_inputs
    cases = [
        (["--method", "ads", "--data", f"{d}/train.csv"], "needs --groups"),
        (["--method", "ds", "--data", f"{d}/train.csv", "--label", "y"], "no column 'y'"),
        (["--method", "ds", "--data", f"{d}/train.csv", "--test-size", "1.5"], "--test-size"),
        (["--method", "ds", "--data", f"{d}/train.csv", "--features", "f0,zz"], "no column 'zz'"),
    ]
    for argv, needle in cases:
        assert main(["value", *argv, "--out", str(tmp_path / "v.csv")]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_hcdv_through_the_cli_is_the_library_on_the_same_data(tmp_path):
    # the real HCDV (contrastive encoder, balanced tree, pooled level games, KNN leaves) behind --method hcdv
    train = pd.read_csv(EXAMPLES / "digits_train.csv")
    test = pd.read_csv(EXAMPLES / "digits_test.csv")
    pix = [f"p{j}" for j in range(64)]
    x, y, xt, yt = train[pix].to_numpy(float), train["label"], test[pix].to_numpy(float), test["label"]
    args = ["--data", str(EXAMPLES / "digits_train.csv"), "--test", str(EXAMPLES / "digits_test.csv")]
    args += ["--method", "hcdv", "--groups", "group", "--k", "3", "--seed", "2"]
    want = hcdv_values(x, y, xt, yt, k=3, seed=2)
    got = _run(tmp_path, *args, "--id", "id")
    assert list(got.columns) == ["id", "group", "value", "stderr"]
    assert list(got["id"]) == list(train["id"]) and len(got) == 240  # one row per player
    np.testing.assert_allclose(got["value"], want, atol=1e-12)
    assert (got["stderr"] == 0).all()
    # efficiency (Theorem 1 with an exact root surplus): the values sum to v(D) - v(empty) of the KNN utility
    assert got["value"].sum() == pytest.approx(knn_utility(x, y, xt, yt, 3)(frozenset(range(240))), abs=1e-9)
    # sources = contributors: one row per source, its rows' HCDV values summed
    by_owner = _run(tmp_path, *args, "--source", "owner")
    sums = pd.Series(want, index=train["owner"]).groupby(level=0, sort=False).sum()
    assert list(by_owner["id"]) == list(sums.index)
    np.testing.assert_allclose(by_owner["value"], sums.to_numpy(), atol=1e-12)


def test_mc_path_is_estimate_with_the_flags_budget(tmp_path, capsys):
    rng = np.random.default_rng(5)
    train, test = _table(rng, n=9, groups=(1, 2))
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    common = ["--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--features", "f0,f1,f2"]
    src = Sources.build(train, None, None, "round")
    v = ClassifierUtility(train[["f0", "f1", "f2"]], train["label"], test[["f0", "f1", "f2"]], test["label"], src)
    groups = [[i for i, g in enumerate(src.groups_of) if g == r] for r in (1, 2)]
    # --exact-max 0 forces Monte Carlo; --eps/--delta/--range give the Hoeffding budget of permutations
    got = _run(tmp_path, "--method", "ads", "--groups", "round", *common, "--exact-max", "0", "--eps", "0.5")
    m = permutation_budget(0.5, 0.05, 9, 2.0)
    want = mc_ads(v, groups, m, seed=0)
    np.testing.assert_allclose(got["value"], want.values, atol=1e-12)
    np.testing.assert_allclose(got["stderr"], want.stderr, atol=1e-12)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    bound = hoeffding_eps(m, 0.05, 9, 2.0)
    assert f"MC-ADS, {m} permutations" in out and f"Hoeffding sup error <= {bound:.3g} w.p. 0.95" in out
    # the same data under the default budget is exact (groups of <= 10 players)
    got = _run(tmp_path, "--method", "ads", "--groups", "round", *common)
    np.testing.assert_allclose(got["value"], exact_ads(v, groups), atol=1e-12)
    assert (got["stderr"] == 0).all() and "exact ADS" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--permutations", "0", "--permutations must be >= 1 (got 0)"),
        ("--eps", "0", "--eps must be a finite number > 0 (got 0.0)"),
        ("--eps", "inf", "--eps must be a finite number > 0"),
        ("--delta", "0", "--delta must be in (0, 1) (got 0.0)"),
        ("--delta", "1.5", "--delta must be in (0, 1)"),
        ("--range", "0", "--range must be a finite number > 0 (got 0.0)"),
        ("--max-seconds", "0", "--max-seconds must be > 0"),
        ("--exact-max", "-1", "--exact-max must be in [0, 20] (got -1)"),
        ("--exact-max", "21", "--exact-max must be in [0, 20] (got 21)"),
    ],
)
def test_bad_budget_flags_are_one_line_user_errors(bad_inputs, tmp_path, capsys, flag, value, needle):
    argv = ["value", "--method", "ds", "--data", f"{bad_inputs}/train.csv", "--test", f"{bad_inputs}/test.csv"]
    assert main([*argv, flag, value, "--out", str(tmp_path / "v.csv")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v.csv").exists()
