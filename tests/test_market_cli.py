"""`procure market ...` end to end through a subprocess: outputs written, user mistakes exit 2 with one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "procure.cli", "market", *args], capture_output=True, text=True, env=env, cwd=cwd or ROOT
    )


SMALL = """
seed: 1
periods: 12
n_sellers: 4
n_runs: 2
deltas: [0.9, 0.99]
buyers:
  - {name: high, budget_share: [0.95, 1.0]}
  - {name: low, budget_share: [0.90, 0.95]}
strategies:
  - {name: fairshare, kind: fairshare}
  - {name: reduced, kind: reduced, fraction: 0.5}
participation: {family: power, k: 1.0}
"""


def test_simulate_writes_csv_plots_summary(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(SMALL)
    out = tmp_path / "out"
    res = _run("simulate", str(rec), "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    for f in ("periods.csv", "thresholds.csv", "figure4.png", "figure6.png", "summary.md"):
        assert (out / f).stat().st_size > 0
    import pandas as pd

    per = pd.read_csv(out / "periods.csv")
    fair = per[per.strategy == "fairshare"]
    assert (fair.active_sellers == 4).all()  # nobody underpaid, nobody leaves
    red = per[per.strategy == "reduced"]
    assert red.active_sellers.iloc[-1] < 4  # paid half the fair price with pi = 0.5: sellers leave


def test_simulate_typo_in_recipe_names_the_field(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(SMALL.replace("n_runs", "n_rnus"))
    res = _run("simulate", str(rec), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "n_rnus" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_simulate_empty_price_grid(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(SMALL + "price_grid: []\n")
    res = _run("simulate", str(rec))
    assert res.returncode == 2 and "price_grid" in res.stderr and "Traceback" not in res.stderr


def test_allocate_writes_json_csv_heatmap(tmp_path):
    vals = tmp_path / "v.json"
    vals.write_text(json.dumps({"values": [0, 1, 1, 2, 3, 3, 3, 3], "names": ["a", "b", "c"]}))
    res = _run("allocate", "--values", str(vals), "--budgets", "inf", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "o" / "allocation.json").read_text())
    np.testing.assert_allclose(data["payoffs"], [-1.5, -1.5, 3.0])
    assert (tmp_path / "o" / "flows.png").stat().st_size > 0
    assert (tmp_path / "o" / "allocation.csv").read_text().startswith("party,")


@pytest.mark.parametrize(
    "values, budgets, field",
    [("[0, 1, 2]", "1", "values"), ("[0, 1, 1, 2]", "=-1,0", "budgets")],
)
def test_allocate_bad_input_exit_2(tmp_path, values, budgets, field):
    f = tmp_path / "v.json"
    f.write_text(values)
    res = _run(
        "allocate",
        "--values",
        str(f),
        "--budgets" + budgets if budgets.startswith("=") else "--budgets",
        *([] if budgets.startswith("=") else [budgets]),
        "--out",
        str(tmp_path / "o"),
    )
    assert res.returncode == 2
    assert field in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_clear_negative_budget_exit_2():
    res = _run("clear", "--values", "0.5,0.2", "--budget", "-1")
    assert res.returncode == 2 and "budget" in res.stderr
    ok = _run("clear", "--values", "0.5,0.2", "--budget", "1")
    assert ok.returncode == 0 and json.loads(ok.stdout)["bought"] == [0, 1]
