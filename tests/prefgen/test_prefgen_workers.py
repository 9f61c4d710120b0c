"""Where prefgen workers run: each worker's GPUs when several share a node (the rule, on given environments: it only
takes effect on a GPU machine), and the job plan ``--validate-only`` prints."""

from __future__ import annotations

import pytest

from megatron_tulu.prefgen.run import narrow_visible_gpus

NODE = "0,1,2,3,4,5,6,7"


@pytest.mark.parametrize("env,tp,want", [
    ({"CUDA_VISIBLE_DEVICES": NODE, "SLURM_LOCALID": "1"}, 4, "4,5,6,7"),   # srun: 2 tasks per node, TP4 engines
    ({"CUDA_VISIBLE_DEVICES": NODE, "LOCAL_RANK": "3"}, 2, "6,7"),           # --nproc 4 on one 8-GPU machine
    ({"CUDA_VISIBLE_DEVICES": "4,5,6,7,0,1,2,3", "SLURM_LOCALID": "0"}, 4, "4,5,6,7"),  # SLURM's order is kept
    ({"CUDA_VISIBLE_DEVICES": NODE, "SLURM_LOCALID": "0"}, 8, None),         # one worker per node: all of them
    ({"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_LOCALID": "1"}, 2, None),       # srun --gpus-per-task gave its own
    ({"CUDA_VISIBLE_DEVICES": ""}, 1, None),                                  # CPU
])
def test_prefgen_workers_sharing_a_node_take_their_own_gpus(env, tp, want):
    before = dict(env)
    assert narrow_visible_gpus(tp, env) == want
    assert env == (before if want is None else {**before, "CUDA_VISIBLE_DEVICES": want})


def test_prefgen_worker_without_enough_gpus_fails_naming_them():
    with pytest.raises(ValueError, match=r"local index 2 needs GPUs 8..11 of its node for its engines \(4 GPUs each "
                                         r"worker\), but the node has 8"):
        narrow_visible_gpus(4, {"CUDA_VISIBLE_DEVICES": NODE, "SLURM_LOCALID": "2"})
    with pytest.raises(ValueError, match=r"this worker's engines take 8 GPUs, but it sees 4 \(0,1,2,3\)"):
        narrow_visible_gpus(8, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})


def test_prefgen_validate_only_prints_the_job_plan(capsys):
    from megatron_tulu.prefgen.cli import main

    assert main(["--config", "prefgen/8b", "--validate-only"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("plan: 4 nodes x 8 GPUs, 4 prefgen workers x 8 GPUs each)")
    assert main(["--config", "prefgen/8b", "--validate-only", "cluster.nodes=2", "cluster.tasks_per_node=2",
                 "engine.tp=4"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("plan: 2 nodes x 8 GPUs, 4 prefgen workers x 4 GPUs each)")
    assert main(["--config", "prefgen/8b", "--validate-only", "engine.tp=3"]) == 2  # no SLURM job plan for it
    assert "(engine.tp=3 x engine.num_engines=1), which do not tile a node of 8 GPUs" in capsys.readouterr().err
    assert main(["--config", "prefgen/8b", "--validate-only", "engine.tp=3", "--nproc", "1"]) == 0  # local: valid


def test_prefgen_preemption_exits_75_at_once_even_when_a_cleanup_would_fail(tmp_path):
    """SIGUSR1 while the main thread waits on an engine call in another thread: the process ends with 75 and the
    line, without running the cleanup (an engine shutdown under a running call) whose failure would replace 75."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(
        "import os, signal, threading, time\n"
        "from megatron_tulu.preemption import exit_on_preemption\n"
        "exit_on_preemption('[prefgen 0/1]', 'the finished shards are on disk')\n"
        "call = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
        "call.start()\n"
        "try:\n"
        "    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1)).start()\n"
        "    call.join(30)\n"
        "finally:\n"
        "    raise RuntimeError('engine shutdown under a running call')\n")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=root,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert r.returncode == 75, r.stderr
    assert r.stderr.strip() == "[prefgen 0/1] SIGUSR1: stopping; the finished shards are on disk; exiting with 75"
