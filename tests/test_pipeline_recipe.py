"""Recipe validation and the CLI's one-line errors (exit 2, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from procure.errors import UserError
from procure.pipeline.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).parent.parent
RECIPES = [ROOT / "recipes" / f"{n}.yaml" for n in ("quickstart-tiny", "conjoint-ads", "qa-market")]
BASE = {
    "name": "t",
    "rounds": 2,
    "methods": ["ads"],
    "task": {"kind": "plugin", "target": "test_pipeline_fakes:factory"},
}


def with_(path: str, value) -> dict:
    d = yaml.safe_load(yaml.safe_dump(BASE))
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return d


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    r = load_recipe(path)
    assert r.rounds >= 1 and r.arms()


@pytest.mark.parametrize(
    "data, field",
    [
        (with_("roundz", 3), "roundz"),
        (with_("market.contrat", "royalty"), "market.contrat"),
        (with_("market.contract", "auction"), "market.contract"),
        (with_("methods", ["ads", "shapley"]), "methods.1"),
        (with_("methods", ["ads", "ads"]), "methods"),
        (with_("rounds", 0), "rounds"),
        (with_("task.kind", "poetry"), "task"),
        (with_("market.utility.gamma", -1), "market.utility.gamma"),
        (with_("task", {"kind": "conjoint", "noise_shares": [0.3, 1.5]}), "task.conjoint.noise_shares.1"),
        (with_("task", {"kind": "qa", "data_file": "/no/such/file.json"}), "task.qa.data_file"),
    ],
)
def test_malformed_recipe_names_the_field(data, field):
    with pytest.raises(UserError) as exc:
        parse_recipe(data, "r.yaml")
    msg = str(exc.value)
    assert f"field '{field}'" in msg and "\n" not in msg


def test_missing_data_file_message_says_how_to_fix():
    with pytest.raises(UserError, match="file not found: /no/such/file.json"):
        parse_recipe(with_("task", {"kind": "qa", "data_file": "/no/such/file.json"}))


def test_qa_source_may_be_a_bigbench_task():
    spec = parse_recipe(with_("task", {"kind": "qa", "data_file": "bigbench:multiemo/hotels_sentence_en"}))
    assert spec.task.data_file == "bigbench:multiemo/hotels_sentence_en"


def test_both_budgets_is_an_error():
    with pytest.raises(UserError, match="market"):
        parse_recipe(with_("market", {"budget": 1.0, "budget_fraction": 0.5}))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run(
        [sys.executable, "-m", "procure.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "content, needle",
    [
        ("name: t\nrounds: 2\nmethods: [ads]\ntask: {kind: plugin, target: 'a:b'}\nbudgett: 3\n", "budgett"),
        ("name: t\nrounds: [oops\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a YAML mapping"),
        ("name: t\nrounds: 1\nmethods: [ads]\ntask: {kind: plugin, target: 'no_such_mod:f'}\n", "task.target"),
    ],
)
def test_cli_bad_recipe_is_one_line_exit_2(tmp_path, content, needle):
    p = tmp_path / "r.yaml"
    p.write_text(content)
    proc = _cli("run", str(p), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_missing_recipe_and_missing_run_dir(tmp_path):
    proc = _cli("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "recipe file not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("report", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 2 and "ledger.sqlite" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_run_and_report_on_the_stand_in(tmp_path):
    p = tmp_path / "r.yaml"
    rec = {**BASE, "rounds": 1, "progress": False, "market": {"max_purchases": 1}}
    p.write_text(yaml.safe_dump(rec))
    proc = _cli("run", str(p), "--out", str(tmp_path / "out"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "out" / "report.md").unlink()
    proc = _cli("report", str(tmp_path / "out"), cwd=ROOT)
    assert proc.returncode == 0 and (tmp_path / "out" / "report.md").is_file()
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Purchases per seller" in text and "plots/metric_per_round.png" in text
    assert (tmp_path / "out" / "plots" / "metric_per_round.png").stat().st_size > 1000


def test_exact_max_candidates_above_the_enumeration_limit_is_a_recipe_error():
    base = {"name": "x", "rounds": 1, "methods": ["ads"], "task": {"kind": "conjoint"}}
    with pytest.raises(UserError, match="valuation.exact_max_candidates"):
        parse_recipe({**base, "valuation": {"exact_max_candidates": 21}})
    assert parse_recipe({**base, "valuation": {"exact_max_candidates": 20}}).valuation.exact_max_candidates == 20
