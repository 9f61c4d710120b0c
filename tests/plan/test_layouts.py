"""Layout verdicts: published layouts must come out feasible, known-impossible ones rejected with a reason."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.models.presets import get_preset
from megatron_tulu.plan import PlanRequest, enumerate_layouts, evaluate, plan_rlvr_layout
from megatron_tulu.plan.__main__ import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def test_megatron_llama3_405b_recipe_tp8_pp8_cp2_is_feasible():
    # Megatron's Llama 3 405B pretraining recipe: TP8 PP8 CP2, seq 8192, micro-batch 1 (here on 512 H100).
    req = PlanRequest(model="llama3.1-405b", gpus=512, stage="pretrain", seq=8192, global_batch=256)
    lay = evaluate(req, tp=8, pp=8, cp=2)
    assert lay.feasible, lay.reasons
    assert lay.dp == 4
    m = lay.memory_gib
    assert m[f"total_{lay.recompute}"] <= m["capacity"]
    # Without any recompute it does not fit in 80 GB: the planner must have picked recompute.
    assert m["total_none"] > m["capacity"] and lay.recompute == "full"
    assert 0 < lay.time_s["total_s"] < 600


def test_405b_unsharded_is_rejected_for_memory():
    req = PlanRequest(model="llama3.1-405b", gpus=8, stage="sft", global_batch=8)
    lay = evaluate(req, tp=1, pp=1, cp=1)
    assert not lay.feasible
    assert any("GiB/GPU even with full recompute" in r for r in lay.reasons)
    assert lay.memory_gib["weights"] > 700  # 405.9e9 params * 2 bytes


def test_70b_full_finetune_on_8_gpus_has_no_feasible_layout():
    layouts = enumerate_layouts(PlanRequest(model="llama3.1-70b", gpus=8, stage="sft"))
    assert layouts and not any(l.feasible for l in layouts)
    assert all(l.reasons for l in layouts)
    # ... while 64 GPUs (Tulu 3 70B SFT used 8 nodes) do have one.
    assert any(l.feasible for l in enumerate_layouts(PlanRequest(model="llama3.1-70b", gpus=64, stage="sft")))


def test_structural_rejections_name_the_cause():
    req = PlanRequest(model="llama3.1-8b", gpus=16, stage="sft")
    assert "crosses nodes" in " ".join(evaluate(req, tp=16, pp=1).reasons)
    assert "not divisible" in " ".join(evaluate(req, tp=4, pp=3).reasons)


def test_8b_sft_on_one_node_fits():
    layouts = enumerate_layouts(PlanRequest(model="llama3.1-8b", gpus=8, stage="sft", seq=4096))
    best = layouts[0]
    assert best.feasible and best.tokens_per_s_per_gpu > 0
    times = [l.time_s["total_s"] for l in layouts if l.feasible]
    assert times == sorted(times)


def test_tulu3_405b_rlvr_on_256_h100_with_vllm_tp16():
    # Tulu 3 405B RLVR: 256 H100, vLLM TP=16 engines on part of the GPUs, training on the rest (GRPO-style:
    # no value model, frozen reference for the KL term).
    out = plan_rlvr_layout("llama3.1-405b", gpus_total=256, gpus_per_node=8, engine_tp=16, num_engines=2,
                           trainer_tp=8, trainer_pp=14, seq=2048)
    assert out["feasible"], out["memory"]["reasons"]
    assert out["trainer"] == {"gpus": 224, "tp": 8, "pp": 14, "cp": 1, "dp": 2, "ranks": list(range(224))}
    roles = [n["role"] for n in out["nodes"]]
    assert roles == ["engine"] * 4 + ["trainer"] * 28
    assert [e["gpus"] for e in out["engines"]] == [list(range(16)), list(range(16, 32))]
    eng = out["memory"]["engine_gib"]
    assert eng["weights"] == pytest.approx(2 * 405.85e9 / 16 / 2**30, rel=1e-3) and eng["max_concurrent_seqs"] > 0
    assert out["memory"]["time_s"]["weight_sync_s"] > 0
    # The search with vLLM TP16 finds feasible splits too, and rejects TP8 engines (101 GB of weights/GPU).
    layouts = enumerate_layouts(PlanRequest(model="llama3.1-405b", gpus=256, stage="rlvr", engine_tp=16, seq=2048))
    assert any(l.feasible for l in layouts)
    tp8 = evaluate(PlanRequest(model="llama3.1-405b", gpus=256, stage="rlvr", seq=2048), 8, 14, 1, engine_tp=8,
                   num_engines=4)
    assert not tp8.feasible and any("no KV cache" in r for r in tp8.reasons)


def test_ppo_value_model_costs_memory():
    base = dict(model="llama3.1-8b", gpus=16, stage="rlvr", seq=2048, global_batch=64)
    grpo = evaluate(PlanRequest(**base), 4, 1, 1, engine_tp=2, num_engines=4)
    ppo = evaluate(PlanRequest(**base, algorithm="ppo"), 4, 1, 1, engine_tp=2, num_engines=4)
    policy_state = grpo.memory_gib["weights"] + grpo.memory_gib["grads"] + grpo.memory_gib["optimizer"]
    # the value model is the policy's shape with a scalar head instead of the [V/tp, d] output layer
    p8 = get_preset("llama3.1-8b")
    head_gib = (p8.vocab_size * p8.hidden_size / 4 - p8.hidden_size) * (2 + 4 + 12 / 2) / 2**30  # TP4 x DP2
    assert ppo.memory_gib["value_model"] == pytest.approx(policy_state - head_gib)
    assert grpo.feasible and ppo.feasible, (grpo.reasons, ppo.reasons)
    assert ppo.time_s["train_s"] > grpo.time_s["train_s"]


def test_405b_ppo_fits_with_tulu3s_8b_value_model():
    """A policy-sized value model does not fit the 405B layout (TP8 x PP14 x DP2); Tülu 3's 8B value model on the
    same ranks does. Its 32 layers split 4 + 12 x 2 + 4: the fullest rank is the first (4 layers + embedding)."""
    from megatron_tulu.models.pipeline_split import PipelineSplit
    from megatron_tulu.plan import memory as M

    base = dict(model="llama3.1-405b", gpus=256, stage="rlvr", seq=3072, global_batch=1856, algorithm="ppo")
    big = evaluate(PlanRequest(**base), 8, 14, 1, engine_tp=16, num_engines=2)
    small = evaluate(PlanRequest(**base, value_model="llama3.1-8b"), 8, 14, 1, engine_tp=16, num_engines=2)
    assert not big.feasible and small.feasible, (big.reasons, small.reasons)
    p8 = get_preset("llama3.1-8b")
    layer = (M.layer_params(p8) - 2 * p8.hidden_size) / 8 + 2 * p8.hidden_size
    first_rank = 4 * layer + p8.vocab_size * p8.hidden_size / 8
    assert M.params_per_gpu(p8, 8, 14, split=PipelineSplit(pp=14).fit(32), value_head=True) == int(first_rank)
    assert small.memory_gib["value_model"] == pytest.approx(first_rank * (2 + 4 + 12 / 2) / 2**30)


def test_plan_rlvr_layout_mixed_node_and_count_errors():
    out = plan_rlvr_layout("llama3.1-8b", 8, 8, engine_tp=2, num_engines=1, trainer_tp=2, trainer_pp=1, seq=2048,
                           global_batch=48)
    assert out["nodes"][0]["role"] == "mixed"
    assert out["nodes"][0]["local_gpus"] == {"engine": [0, 1], "trainer": [2, 3, 4, 5, 6, 7]}
    assert out["trainer"]["dp"] == 3
    with pytest.raises(ValueError, match="not divisible by trainer TP"):
        plan_rlvr_layout("llama3.1-8b", 8, 8, engine_tp=2, num_engines=1, trainer_tp=4, trainer_pp=1)
    with pytest.raises(ValueError, match="leaving 0 of 8"):
        plan_rlvr_layout("llama3.1-8b", 8, 8, engine_tp=8, num_engines=1, trainer_tp=1, trainer_pp=1)
    with pytest.raises(ValueError, match="multiple of gpus_per_node"):
        plan_rlvr_layout("llama3.1-8b", 12, 8, engine_tp=2, num_engines=1, trainer_tp=1, trainer_pp=1)
    with pytest.raises(ValueError, match="straddle"):
        plan_rlvr_layout("llama3.1-8b", 16, 8, engine_tp=1, num_engines=1, trainer_tp=3, trainer_pp=1)


def test_bad_request_fields_are_named():
    with pytest.raises(ValueError, match="stage must be"):
        enumerate_layouts(PlanRequest(stage="ppo"))
    with pytest.raises(ValueError, match="unknown model preset"):
        enumerate_layouts(PlanRequest(model="llama-9b"))


def test_cli_prints_feasible_and_rejected(capsys, tmp_path):
    assert cli_main(["--model", "llama3.1-405b", "--gpus", "256", "--stage", "rlvr", "--engine-tp", "16",
                     "--seq", "2048", "--top", "2", "--show-rejected", "2"]) == 0
    out = capsys.readouterr().out
    assert "vLLM TP16" in out and "rejected" in out and "weight sync" in out
    assert cli_main(["--model", "llama3.1-70b", "--gpus", "8", "--stage", "sft"]) == 1
    assert "0 feasible" in capsys.readouterr().out
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps([{"mfu": 0.2, "gpu": "h100-80gb", "precision": "bf16"}]))
    assert cli_main(["--gpus", "8", "--json", "--calibration", str(cal)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["request"]["mfu"] == pytest.approx(0.2) and data["feasible"]


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "megatron_tulu.plan", "--gpus", "8", "--top", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "feasible" in r.stdout


def test_cli_roles_for_slurm_dry_run(capsys):
    args = ["--model", "llama3.1-405b", "--gpus", "256", "--stage", "rlvr", "--seq", "2048", "--roles",
            "--engine-tp", "16", "--num-engines", "2", "--tp", "8", "--pp", "14"]
    assert cli_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainer"]["dp"] == 2 and out["nodes"][4]["role"] == "trainer"
    assert cli_main(args[:-2]) == 2  # --pp missing
    assert "--pp" in capsys.readouterr().err


_GRPO_8B = ["--model", "llama3.1-8b", "--stage", "rlvr", "--algorithm", "grpo", "--global-batch", "256",
            "--prompt-len", "127", "--response-len-dist", "exp:512:2048", "--max-tokens-per-microbatch", "4096",
            "--placement", "colocated", "--cp", "1", "--goal-s", "600"]


def test_cli_says_what_a_plan_needs_that_is_not_built(capsys):
    """A planner input that describes what this project's code does not run (offloading the trainer while the
    engine generates, as NeMo-RL does; TE's TP overlap, as Megatron-Bridge's recipes do) is still estimated, and the
    plan says so under its header and in its goal verdict; a plan of what the code runs (colocated over two nodes
    included) says nothing of the kind."""
    assert cli_main(["--gpus", "16", *_GRPO_8B]) == 0
    assert "not built" not in capsys.readouterr().out
    assert cli_main(["--gpus", "16", *_GRPO_8B, "--offload-trainer"]) == 0
    text = capsys.readouterr().out
    assert "not built in this project yet (estimated as the hardware would run it): trainer grads/optimizer offloaded" \
        in text
    goal = [line for line in text.splitlines() if line.startswith("goal")]
    assert goal and "with what is not built in this project yet" in goal[0]
    assert PlanRequest(stage="sft", tp_comm_overlap=True).unbuilt()[0].startswith("TP communication overlap")


def test_colocated_engine_never_spans_nodes():
    """A colocated engine's workers start on one node (its first rank starts them): the planner rejects engine TP16
    on two 8-GPU nodes, as the config check does, where a disaggregated (Ray) engine may span them."""
    base = dict(model="llama3.1-70b", gpus=16, stage="rlvr", global_batch=256, prompt_len=128, response_len=512,
                max_tokens_per_microbatch=4096, fixed={"tp": 8, "pp": 2, "cp": 1, "engine_tp": 16})
    colocated = enumerate_layouts(PlanRequest(placement="colocated", **base))
    assert colocated and all("would span nodes" in "; ".join(l.reasons) for l in colocated)
    assert not any("would span nodes" in "; ".join(l.reasons)
                   for l in enumerate_layouts(PlanRequest(**{**base, "gpus": 32, "fixed": {**base["fixed"], "num_engines": 1}})))
