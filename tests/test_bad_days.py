"""First run and bad days (issue 15): every user mistake or interruption ends as one clear line (exit 2, or 130
for Ctrl-C), no user file is lost, finished results survive a failed write, a live run directory is locked.
CLI-level: through ``procure.cli.main`` or a subprocess, on the cheap plugin stand-in (test_pipeline_fakes)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from procure.cli import main
from procure.errors import UserError

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))


# -- a plugin whose learner fails or is interrupted on demand ------------------------------------------------------
class _Learner:
    def __init__(self, opts: dict) -> None:
        from test_pipeline_fakes import FakeLearner

        self.inner = FakeLearner(opts)
        self.opts = opts
        self.n = 0

    def train(self, *a, **kw):
        if self.opts.get("fail_train"):
            raise UserError("model: weights missing (stand-in for a model that cannot load)")
        self.n += 1
        if self.n > self.opts.get("interrupt_after", 10**9):
            raise KeyboardInterrupt
        return self.inner.train(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def factory(spec, seed: int):
    from test_pipeline_fakes import FakeScenario

    return FakeScenario(spec.options, seed, spec.n_sellers), _Learner(spec.options)


def recipe(**over) -> dict:
    d = {
        "name": "bad",
        "seeds": [0],
        "rounds": 2,
        "methods": ["ads", "random"],
        "task": {"kind": "plugin", "target": "test_bad_days:factory", "n_sellers": 2, "options": {}},
        "market": {"max_purchases": 1},
        "progress": False,
    }
    d.update(over)
    return d


def write(path: Path, data: dict, comment: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comment + yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "procure.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(proc: subprocess.CompletedProcess, needle: str, rc: int = 2) -> str:
    assert proc.returncode == rc, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    return lines[0]


# -- procure run ----------------------------------------------------------------------------------------------------
def test_run_never_overwrites_the_users_recipe_in_the_run_directory(tmp_path):
    d = tmp_path / "exp"
    mine = write(d / "recipe.yaml", recipe(rounds=1), comment="# my notes: keep these comments\n")
    before = mine.read_text()
    proc = cli("run", str(mine), "--out", str(d))
    assert proc.returncode == 0, proc.stderr
    assert mine.read_text() == before  # comments kept
    copy = yaml.safe_load((d / "recipe.run.yaml").read_text())
    assert copy["name"] == "bad" and "recipe.run.yaml" in proc.stdout
    # resuming the finished run with the user's file works and still leaves it alone
    assert cli("run", str(mine), "--out", str(d), "--resume").returncode == 0
    assert mine.read_text() == before


def test_a_run_that_failed_at_start_reruns_with_the_fixed_recipe(tmp_path):
    out = tmp_path / "out"
    bad = write(tmp_path / "r.yaml", recipe(task={**recipe()["task"], "options": {"fail_train": True}}))
    one_line_error(cli("run", str(bad), "--out", str(out)), "weights missing")
    assert (out / "ledger.sqlite").is_file()  # the failed start left its directory
    fixed = write(tmp_path / "r.yaml", recipe())
    proc = cli("run", str(fixed), "--out", str(out))  # no --resume needed, no "already holds a run"
    assert proc.returncode == 0, proc.stderr
    assert "starting it over" in proc.stdout
    assert (out / "report.md").is_file()


def test_a_finished_run_with_another_recipe_names_the_field_and_the_fix(tmp_path):
    out = tmp_path / "out"
    assert cli("run", str(write(tmp_path / "a.yaml", recipe(rounds=1))), "--out", str(out)).returncode == 0
    line = one_line_error(
        cli("run", str(write(tmp_path / "b.yaml", recipe(rounds=2))), "--out", str(out), "--resume"),
        "field 'rounds'",
    )
    assert f"delete {out}" in line and "another --out" in line


def test_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = write(tmp_path / "r.yaml", recipe(rounds=1))
    one_line_error(cli("run", str(r), "--out", str(blocker / "run")), "--out")


def test_corrupt_or_truncated_ledger_is_one_line_naming_the_file(tmp_path):
    out = tmp_path / "out"
    r = write(tmp_path / "r.yaml", recipe(rounds=1))
    assert cli("run", str(r), "--out", str(out)).returncode == 0
    ledger = out / "ledger.sqlite"
    for f in out.glob("ledger.sqlite-*"):
        f.unlink()
    data = ledger.read_bytes()
    for broken in (data[: len(data) // 2], b"garbage" * 100):
        ledger.write_bytes(broken)
        for args in (["report", str(out)], ["run", str(r), "--out", str(out), "--resume"]):
            line = one_line_error(cli(*args), str(ledger))
            assert "damaged" in line and "fresh run directory" in line


def test_interrupted_run_says_how_to_resume_and_its_report_says_incomplete(tmp_path):
    out = tmp_path / "out"
    r = write(tmp_path / "r.yaml", recipe(task={**recipe()["task"], "options": {"interrupt_after": 4}}))
    proc = cli("run", str(r), "--out", str(out))
    line = one_line_error(proc, "--resume", rc=130)
    assert f"--out {out} --resume" in line and "ledger" in line
    proc = cli("report", str(out))
    assert proc.returncode == 0
    assert "incomplete" in proc.stderr and "--resume" in proc.stderr
    head = (out / "report.md").read_text().splitlines()[:4]
    assert any("Incomplete run" in h for h in head)


def test_recipe_typo_names_the_unknown_key_with_a_suggestion(tmp_path):
    data = recipe()
    data["roundz"] = data.pop("rounds")
    proc = cli("run", str(write(tmp_path / "r.yaml", data)), "--out", str(tmp_path / "out"))
    line = one_line_error(proc, "field 'roundz'")
    assert "did you mean 'rounds'" in line


def test_run_name_cannot_escape_runs_and_default_out_is_runs_name(tmp_path):
    one_line_error(cli("run", str(write(tmp_path / "r.yaml", recipe(name=".."))), cwd=tmp_path), "field 'name'")
    assert not (tmp_path / "ledger.sqlite").exists()
    proc = cli("run", str(write(tmp_path / "r.yaml", recipe(name="mine", rounds=1))), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "mine" / "ledger.sqlite").is_file()


def test_second_process_on_a_live_run_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "out"
    slow = write(tmp_path / "r.yaml", recipe(rounds=3, task={**recipe()["task"], "options": {"sleep": 0.5}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "procure.cli", "run", str(slow), "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "run.lock").is_file():
            time.sleep(0.2)
        time.sleep(1.0)
        line = one_line_error(cli("run", str(slow), "--out", str(out), "--resume"), "in use by process")
        assert str(first.pid) in line
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        # the kernel dropped the dead holder's lock: resuming works
        proc = cli("run", str(slow), "--out", str(out), "--resume")
        assert proc.returncode == 0, proc.stderr
    finally:
        if first.poll() is None:
            first.kill()


def test_dry_run_plans_without_a_run_directory_or_the_model(tmp_path, monkeypatch, capsys):
    import procure.llm.models as models

    def no(*a, **k):
        raise AssertionError("a dry run resolved the model")

    monkeypatch.setattr(models, "resolve_model", no)
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "recipes" / "conjoint-ads.yaml"), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "exact ADS over 3 candidates: 2^3 - 1 = 7 coalitions" in text
    assert "| ads |" in text and "| loo |" in text and "| random |" in text
    assert "estimated wall time" in text and "assumptions:" in text
    assert not out.exists()


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "gpu").glob("*.yaml")), ids=lambda p: p.name)
def test_gpu_recipes_validate_and_plan(path, tmp_path, capsys):
    data = yaml.safe_load(path.read_text())
    assert "/" in data["model"]  # a hub id, launchable as is on a GPU node
    assert main(["run", str(path), "--out", str(tmp_path / "x"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"model: {data['model']}" in text and "estimated wall time" in text
    if data["task"]["kind"] == "conjoint":  # seeds/000 section 6.3: 30 rounds, 15 runs, 3 x 50 rows, 5 samples
        assert data["rounds"] == 30 and len(data["seeds"]) == 15 and data["task"]["rows_per_seller"] == 50
        assert data["generation"]["temperature"] == 0.7 and data["task"]["test_samples_per_profile"] == 5
        assert "2^3 - 1 = 7 coalitions" in text
    else:  # seeds/004 appendix A: 200 reference rows, 5-shot, LoRA 3 epochs at 2e-5, batch 32
        assert data["task"]["reference_size"] == 200 and data["task"]["n_shot"] == 5
        assert data["training"]["epochs"] == 3 and data["training"]["batch_size"] == 32
    assert not (tmp_path / "x").exists()


def test_plugin_task_is_documented_as_code_execution():
    from procure.pipeline.recipe import PluginSpec

    assert "runs that code" in PluginSpec.model_fields["target"].description
    readme = (ROOT / "README.md").read_text()
    assert "plugin" in readme and "runs code" in readme


# -- procure value ----------------------------------------------------------------------------------------------------
@pytest.fixture
def table(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    n = 24
    df = pd.DataFrame(
        {"f0": rng.normal(size=n), "f1": rng.normal(size=n), "label": rng.integers(0, 2, n), "round": [1, 2] * 12}
    )
    p = tmp_path / "train.csv"
    df.to_csv(p, index=False)
    return p


def test_value_keeps_its_results_when_out_is_unwritable(table, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = cli("value", "--method", "ds", "--data", str(table), "--out", str(blocker / "v.csv"))
    line = one_line_error(proc, "--out")
    kept = Path(line.split("the results are in ")[1].strip())
    got = pd.read_csv(kept / "v.csv")
    assert len(got) > 0 and list(got.columns) == ["id", "group", "value", "stderr"]


def test_value_names_a_numeric_column_with_a_bad_cell(table, tmp_path):
    df = pd.read_csv(table)
    df["f1"] = df["f1"].astype(object)
    df.loc[3, "f1"] = "n/a?"
    df.to_csv(table, index=False)
    proc = cli("value", "--method", "knn-shapley", "--data", str(table), "--out", str(tmp_path / "v.csv"))
    line = one_line_error(proc, "column 'f1'")
    assert "'n/a?'" in line and "--features" in line
    assert not (tmp_path / "v.csv").exists()


def test_ctrl_c_in_value_and_simulate_does_not_talk_of_a_ledger(table, tmp_path, monkeypatch, capsys):
    import procure.market.dynamics as dynamics
    import procure.valuation.cli as vcli

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(vcli, "estimate", interrupt)
    assert main(["value", "--method", "ds", "--data", str(table), "--out", str(tmp_path / "v.csv")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "ledger" not in err and "--resume" not in err
    monkeypatch.setattr(dynamics, "simulate", interrupt)
    rec = ROOT / "recipes" / "market-fairshare.yaml"
    assert main(["market", "simulate", str(rec), "--out", str(tmp_path / "m")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "ledger" not in err and "--resume" not in err


# -- procure market -------------------------------------------------------------------------------------------------
def test_market_simulate_and_allocate_keep_results_when_out_is_unwritable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rec = ROOT / "recipes" / "market-fairshare.yaml"
    line = one_line_error(
        cli("market", "simulate", str(rec), "--runs", "2", "--quiet", "--out", str(blocker / "m")), "--out"
    )
    kept = Path(line.split("the results are in ")[1].strip())
    assert (kept / "summary.md").is_file() and (kept / "periods.csv").is_file()
    values = tmp_path / "v.json"
    values.write_text(json.dumps([0, 1, 1, 3]))
    line = one_line_error(
        cli("market", "allocate", "--values", str(values), "--budgets", "1", "--out", str(blocker / "a")), "--out"
    )
    kept = Path(line.split("the results are in ")[1].strip())
    assert json.loads((kept / "allocation.json").read_text())["parties"] == ["party0", "party1"]


def test_market_allocate_caps_of_the_wrong_length_is_one_line(tmp_path):
    values = tmp_path / "v.json"
    values.write_text(json.dumps([0, 1, 1, 3]))
    base = ["market", "allocate", "--values", str(values), "--out", str(tmp_path / "a")]
    one_line_error(cli(*base, "--budgets", "1", "--caps", "1,2,3"), "--caps: need 2 numbers")
    one_line_error(cli(*base, "--budgets", "1,2,3"), "--budgets: need 2 numbers")


def test_market_clear_help_explains_budget_and_max_rate():
    proc = cli("market", "clear", "--help")
    text = " ".join(proc.stdout.split())
    assert "the buyer's money for this round" in text and "largest total rate" in text


# -- library pieces behind the rows ---------------------------------------------------------------------------------
def test_ledger_quick_check_catches_a_damaged_page(tmp_path):
    from procure.pipeline.ledger import Ledger

    p = tmp_path / "ledger.sqlite"
    with Ledger.open(p) as led:
        for k in range(300):
            led.record(f"k{k}", kind="x", payload={"v": "y" * 200})
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(p.read_bytes())
    data[8192:12288] = b"\0" * 4096  # one zeroed b-tree page: opens, but reads would fail later
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        Ledger.open(p)
