"""Under torchrun rank 0 prints and the other ranks stay quiet; SIGTERM from torchrun ends a worker like Ctrl-C."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib.util, logging, os, signal, sys, warnings
    # the module alone (it imports no torch), so each subprocess starts in well under a second
    spec = importlib.util.spec_from_file_location("console", sys.argv[1])
    console = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(console)
    error, setup = console.error, console.setup
    setup()
    print("to stdout")
    warnings.warn("a warning")
    logging.getLogger("stitchkit").info("a log line")
    error("error: an error")
    if os.environ.get("SEND_TERM"):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        except KeyboardInterrupt:
            error("interrupted")
    """
)


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")}
    import stitchkit.cli.console

    return subprocess.run([sys.executable, "-c", SCRIPT, stitchkit.cli.console.__file__], env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_rank_zero_prints_and_other_ranks_are_quiet():
    zero = _run({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"})
    assert zero.returncode == 0 and zero.stdout == "to stdout\n"
    assert "a warning" in zero.stderr and "a log line\n" in zero.stderr and "stitchkit: error: an error\n" in zero.stderr
    one = _run({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"})
    assert one.returncode == 0 and one.stdout == "" and one.stderr == ""


def test_sigterm_under_torchrun_ends_like_ctrl_c_with_one_line():
    zero = _run({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x", "SEND_TERM": "1"})
    assert zero.returncode == 0 and zero.stderr.endswith("stitchkit: interrupted\n") and "Traceback" not in zero.stderr
    one = _run({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x", "SEND_TERM": "1"})
    assert one.stderr == ""


@pytest.mark.slow  # two torchrun processes build a tiny SN-Net: ~15 s of CPU
def test_a_torchrun_build_prints_its_result_once(tmp_path):
    (tmp_path / "sn.toml").write_text(textwrap.dedent("""
        method = "snnet"
        [data]
        source = "digits"
        img_size = 8
        in_chans = 1
        [train]
        max_steps = 2
        batch_size = 32
        progress = false
        device = "cpu"
        [snnet]
        init_images = 40
        finetune = { max_steps = 2 }
        [[snnet.anchors]]
        shape = "2x16:2"
        patch_size = 4
        train = true
        [[snnet.anchors]]
        shape = "2x32:4"
        patch_size = 4
        train = true
    """))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "stitchkit.cli", "build", str(tmp_path / "sn.toml"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    # rank 0 alone prints: the pool's table once, then where the pool and its card are
    assert proc.stdout.endswith(f"\npool written to {out / 'pool.safetensors'}\nmodel card written to {out / 'pool.md'}\n")
    assert proc.stdout.count("pool written to") == 1 and proc.stdout.count(f"pool {out / 'pool.safetensors'}  (") == 1
    assert (out / "pool.md").read_text().startswith("---\nlibrary_name: stitchkit\n")
    assert "Traceback" not in proc.stderr and "stitchkit" not in proc.stderr
    assert "[rank1]" not in proc.stderr  # rank 1's C++ warnings too (torch's DDP reducer warns on rank 0)
