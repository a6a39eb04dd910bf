"""The engine across processes: torchrun/DDP against one process, and kill -9 then resume.

Each test runs the same small worker script (a 2-row pool fine-tuned with the
core's sequential method and the uniform sampler) in subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent(
    '''
    import json, os, pathlib, sys, time
    import torch
    from safetensors.torch import save_file
    from stitchkit.engine import Callback, DataConfig, PoolTask, TrainConfig, build_data, fit
    from stitchkit.pool.pool import Pool
    from stitchkit.core.registry import Registry
    from stitchkit.families.vit import TimmViT

    torch.set_num_threads(1)
    out = pathlib.Path(sys.argv[1])
    drop_path = float(sys.argv[2])
    reg = Registry(load_entrypoints=False)
    data = build_data(DataConfig(source="synthetic", img_size=8, synthetic_samples=96, synthetic_classes=4,
                                 val_fraction=0.125, test_fraction=0.125))
    torch.manual_seed(0)
    rows = [TimmViT.from_arch({"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 4, "embed_dim": w,
                               "depth": 3, "num_heads": 2, "drop_path_rate": drop_path}) for w in (16, 32)]
    pool = Pool.from_method(reg.method("sequential"), rows)
    task = PoolTask(pool, reg.create("sampler", "uniform", pool.paths))
    train = TrainConfig(epochs=3, batch_size=16, lr=1e-3, weight_decay=0.05, warmup_epochs=0.5,
                        checkpoint_every=2, log_every=1, device="cpu")
    rank = int(os.environ.get("RANK", "0"))
    names = {id(p): n for n, p in pool.named_parameters()}
    log = open(out / f"paths-rank{rank}.jsonl", "a")

    class Watch(Callback):
        def after_backward(self, st):
            used = {names[id(p)] for p in task.descendant(pool, pool.path(st.paths[0])).parameters()}
            with_grad = {n for n, p in pool.named_parameters() if p.grad is not None}
            log.write(json.dumps({"step": st.step, "paths": st.paths, "grad_is_path": used == with_grad}) + "\\n")
            log.flush()

        def step_end(self, st):
            if os.environ.get("PAUSE_AT_STEP") == str(st.step):
                (out / "paused").write_text(str(st.step))
                time.sleep(600)  # the test kills us here

    fit(task, data, train, out_dir=out, phase="finetune", config={"worker": "pool"}, callbacks=[Watch()])
    if rank == 0:
        save_file({k: v.contiguous() for k, v in pool.state_dict().items()}, str(out / "final.safetensors"))
    '''
)

# 72 training images, global batch 16 -> 4 steps per epoch, 3 epochs -> 12 steps.
STEPS = 12


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PAUSE_AT_STEP", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(WORKER)
    return path


def _run(cmd, env=None, timeout=240):
    proc = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _paths(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def single_run(worker, tmp_path_factory):
    """One uninterrupted single-process run: the reference of both tests."""
    one = tmp_path_factory.mktemp("one")
    _run([sys.executable, str(worker), str(one), "0"])
    return one


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(worker, single_run, tmp_path):
    one, two = single_run, tmp_path / "two"
    two.mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
          "--master_port", str(_free_port()), str(worker), str(two), "0"])

    single, rank0, rank1 = _paths(one / "paths-rank0.jsonl"), _paths(two / "paths-rank0.jsonl"), _paths(two / "paths-rank1.jsonl")
    assert [r["step"] for r in rank0] == list(range(STEPS))
    # every rank trains the same sampled path each step, and the same as one process would
    assert [r["paths"] for r in rank0] == [r["paths"] for r in rank1] == [r["paths"] for r in single]
    assert len({r["paths"][0] for r in rank0}) > 1  # the sampler really varied the path
    # DDP(find_unused_parameters=True): params off the path keep grad None on every rank
    assert all(r["grad_is_path"] for r in rank0 + rank1 + single)

    # Only rank 0 writes: one metrics file with each step logged once.
    steps = [json.loads(line)["step"] for line in (two / "finetune" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, STEPS + 1))

    # Same global batch (16 = 2 x 8), same data order, same paths: the same training run,
    # up to float32 rounding. Not bit-exact because DDP averages two per-rank mean
    # gradients with an all-reduce, which sums in a different order than one process
    # taking the mean over 16 images; AdamW then carries the ~1e-7 relative differences.
    a, b = load_file(str(one / "final.safetensors")), load_file(str(two / "final.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


@pytest.mark.slow
def test_kill_and_resume_is_bit_exact(worker, single_run, tmp_path):
    # (resume with dropout, where the torch RNG state must be restored too, is
    # tested in-process in test_engine_trainer.py)
    ref, run = single_run, tmp_path / "run"
    run.mkdir()
    cmd = [sys.executable, str(worker), str(run), "0"]
    proc = subprocess.Popen(cmd, env={**_env(), "PAUSE_AT_STEP": "7"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (run / "paused").exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "worker never reached step 7"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpts = sorted(p.name for p in (run / "finetune" / "checkpoints").glob("step-*.json"))
    # step 6 is mid-epoch (epoch 1, batch 2): the resumed run must skip two batches
    assert ckpts[-1] == "step-00000006.json"
    assert json.loads((run / "finetune" / "checkpoints" / ckpts[-1]).read_text())["batch"] == 2
    assert not (run / "final.safetensors").exists()

    _run(cmd)  # the same command again resumes
    a, b = load_file(str(ref / "final.safetensors")), load_file(str(run / "final.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    # killed after steps 0..6; the resumed run trained steps 6..11, on the reference's paths
    resumed = _paths(run / "paths-rank0.jsonl")
    assert [r["step"] for r in resumed] == list(range(7)) + list(range(6, STEPS))
    assert [r["paths"] for r in resumed[7:]] == [r["paths"] for r in _paths(ref / "paths-rank0.jsonl")[6:]]
    # metrics of the killed steps (7) were dropped on resume: each step once
    logged = [json.loads(line)["step"] for line in (run / "finetune" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == list(range(1, STEPS + 1))
