"""``accelerate launch --multi_gpu`` with 2 CPU processes (torchrun + gloo; StageTrainer asks for cpu=True
when there is no GPU): the data-parallel stage equals one process with the same global batch, and
process-local stages (the pipeline's coalition sharding) equal single-process stages."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from procure.llm.tiny import tiny_model_dir
from procure.llm.train import StageTrainer

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from stage_multiprocess import ROWS, cfg  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "stage_multiprocess.py"
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(mode: str, out: Path) -> None:
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    cmd += ["--main_process_port", str(_port())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([*cmd, str(SCRIPT), mode, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.glob(f"{mode}-rank-*")) == [f"{mode}-rank-0", f"{mode}-rank-1"]
    assert all(p.read_text() == "2" for p in out.glob(f"{mode}-rank-*"))


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "adapter_model.safetensors"))


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    try:
        tr = StageTrainer(tiny_model_dir(), cfg(4))
        tr.train(ROWS, out / "all")  # the DDP run's global batch: 2 processes x 2 rows
        for k in (0, 1):
            tr.train(ROWS[4 * k : 4 * k + 4], out / f"part-{k}")
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return out


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate CLI not installed")
def test_data_parallel_stage_equals_one_process_with_the_global_batch(single, tmp_path):
    _launch("ddp", tmp_path)
    _assert_same(tmp_path / "ddp", single / "all")
    start = load_file(str(single / "all" / "adapter_model.safetensors"))
    assert any(v.abs().max() > 0 for k, v in start.items() if "lora_B" in k)  # training moved the adapter


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate CLI not installed")
def test_process_local_stages_train_and_save_independently(single, tmp_path):
    _launch("local", tmp_path)
    for k in (0, 1):
        _assert_same(tmp_path / f"local-{k}", single / f"part-{k}")
    a, b = _weights(tmp_path / "local-0"), _weights(tmp_path / "local-1")
    assert any(not torch.allclose(a[k], b[k]) for k in a)  # different data, different adapters


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate CLI not installed")
def test_pipeline_under_accelerate_launch_gives_the_single_process_ledger(tmp_path):
    """`accelerate launch -m procure run` on the tiny recipe with 2 processes (coalitions sharded, each process
    training process-local stages and evaluating its own) writes the same ledger as one process."""
    from procure.pipeline.ledger import Ledger

    recipe = Path(__file__).parent.parent / "recipes" / "quickstart-tiny.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "procure", "run", str(recipe), "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    cmd += ["--main_process_port", str(_port()), "-m", "procure", "run", str(recipe), "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    dumps = []
    for d in ("one", "two"):
        with Ledger.open(tmp_path / d / "ledger.sqlite", create=False) as led:
            dumps.append(led.dump())
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["nodes"]) > 3 and (tmp_path / "two" / "report.md").is_file()
