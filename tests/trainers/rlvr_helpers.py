"""Helpers for the RLVR driver tests: config overrides, metrics reading, and the per-rank bodies that
``megatron_tulu.testing.run_distributed`` runs (module-level so spawned processes can import them).

A process launch costs ~10-20 s on 2 shared cores, so one launch runs several driver runs one after another.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer_helpers import step_records  # noqa: F401 - shared with the SFT/DPO tests


def rlvr_overrides(data_root: str | Path, init_hf: str | Path, run_dir: str | Path, **extra) -> list[str]:
    """Small, quiet, fast RLVR overrides (TorchEngine, 4 prompts per step, 16-token responses, constant LR so a
    run stopped at step k and resumed sees the same LR as an uninterrupted one). ``extra``: dotted key -> value."""
    data_root = Path(data_root)
    o = {
        "data.root": str(data_root),
        "data.cache_dir": str(data_root.parent / "rlvr_data_cache"),
        "run_dir": str(run_dir),
        "model.init_hf": str(init_hf),
        "rlvr.engine": "torch",
        "rlvr.max_new_tokens": "16",
        "train.global_batch_size": "4",
        "train.micro_batch_size": "2",
        "train.max_steps": "2",
        "optim.lr": "1e-4",
        "optim.min_lr_ratio": "1.0",
        "logging.progress_bar": "false",
        "logging.tensorboard": "false",
        "checkpoint.export_hf": "false",
        "checkpoint.interval": "2",
    }
    o.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in o.items()]


# ----------------------------------------------------------------------------------------------- per-rank bodies


def rlvr_rank_jobs(jobs: list[tuple[str, list[str]]]) -> list:
    """Per-rank body: run ``jobs`` one after another in the same processes.

    ``("rlvr", overrides)`` runs ``RLVRDriver(load_config(RLVRConfig, "rlvr/tiny", overrides)).fit()`` and gives
    its summary, or ``{"error": "Type: text"}`` when it raised; ``("sft", overrides)`` runs the SFT loop with
    ``sft/tiny`` (e.g. to make a starting policy) and gives its summary.
    """
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.fit import Trainer
    from megatron_tulu.trainers.rlvr import RLVRConfig
    from megatron_tulu.trainers.rlvr.loop import RLVRDriver
    from megatron_tulu.trainers.sft import SFTConfig, SFTTask

    out = []
    for kind, overrides in jobs:
        if kind == "rlvr":
            cfg = load_config(RLVRConfig, "rlvr/tiny", overrides)
            try:
                out.append(RLVRDriver(cfg).fit())
            except Exception as e:  # noqa: BLE001 - the test reports the text
                import traceback

                out.append({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        elif kind == "sft":
            cfg = load_config(SFTConfig, "sft/tiny", overrides)
            out.append(Trainer(cfg, SFTTask(cfg)).fit())
        elif kind == "broken_sync":  # post-sync check passes, then fails once the engine holds other weights
            driver = RLVRDriver(load_config(RLVRConfig, "rlvr/tiny", overrides))
            driver.setup()
            res = {"ok": driver.post_sync_check()}
            if driver.engine is not None:  # rank 0: a sync that silently loaded one wrong tensor
                norm = dict(driver.engine.model.named_parameters())["model.norm.weight"]
                driver.engine.update_weights([("model.norm.weight", norm.detach() * 1.5)])
            try:
                driver.post_sync_check()
                res["error"] = None
            except Exception as e:  # noqa: BLE001 - the test checks type and text
                res["error"] = f"{type(e).__name__}: {e}"
            finally:
                if driver.engine is not None:
                    driver.engine.shutdown()
            out.append(res)
        elif kind == "value_init":  # the value model's per-token values on a few prompt rows, right after setup
            from megatron_tulu.trainers.rlvr.experience import response_rows

            try:
                driver = RLVRDriver(load_config(RLVRConfig, "rlvr/tiny", overrides))
                driver.setup()
            except Exception as e:  # noqa: BLE001 - the test checks type and text
                out.append({"error": f"{type(e).__name__}: {e}"})
                continue
            prompts = [list(driver.task.prompts[i]["prompt_ids"]) for i in range(3)]
            ids, targets, mask = response_rows(prompts, [[5, 6, 7]] * 3, driver.task.pad_id)
            values = driver._forward_logps(driver.value.model, [{"input_ids": ids, "targets": targets, "mask": mask}],
                                           values=True)
            out.append({"input_ids": ids, "values": values})
            if driver.engine is not None:
                driver.engine.shutdown()
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    return out


# ----------------------------------------------------------------------------------------- learning-test data


def run_rlvr_jobs(world: int, jobs: list[tuple[str, list[str]]], ranks_per_node: int | None = None,
                  timeout_s: float = 600) -> list:
    """``jobs`` (see :func:`rlvr_rank_jobs`) on ``world`` gloo ranks; rank 0's summaries, none of them an error."""
    from megatron_tulu.testing import run_distributed

    out = run_distributed(rlvr_rank_jobs, world, args=(jobs,), timeout_s=timeout_s, ranks_per_node=ranks_per_node)[0]
    for s in out:
        assert "error" not in s, s.get("traceback")
    return out


def make_arith_data(src_root: str | Path, out_root: str | Path, n_prompts: int = 8, correct_of_10: int = 3,
                    seed: int = 0) -> Path:
    """A small, controlled RLVR task on the synthetic tokenizer (copied from ``src_root``).

    ``n_prompts`` addition questions ("What is a + b?", gsm8k verifier: last number). The SFT file teaches the
    answer format and EOS with NOISY labels: per prompt 10 answers, ``correct_of_10`` of them right and the rest
    spread over 3 wrong numbers, so the SFT policy solves about that fraction of samples at temperature 1 and
    RL has room to raise it. ``rlvr_train.jsonl`` repeats each prompt 4 times (so a batch can exceed the number
    of distinct prompts). Returns ``out_root``.
    """
    import random
    import shutil

    src_root, out_root = Path(src_root), Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    if not (out_root / "tokenizer").exists():
        shutil.copytree(src_root / "tokenizer", out_root / "tokenizer")
    rng = random.Random(seed)
    pairs = set()
    while len(pairs) < n_prompts:
        pairs.add((rng.randint(1, 9), rng.randint(1, 9)))
    sft, rl = [], []
    for a, b in sorted(pairs):
        q, c = f"What is {a} + {b}?", a + b
        wrong = [c + d for d in (-2, -1, 1)]
        answers = [c] * correct_of_10 + [wrong[i % 3] for i in range(10 - correct_of_10)]
        for ans in answers:
            sft.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"The answer is {ans}."}],
                        "dataset": "gsm8k", "ground_truth": str(c)})
        rl += [{"messages": [{"role": "user", "content": q}], "dataset": "gsm8k", "ground_truth": str(c)}] * 4
    rng.shuffle(sft)
    rng.shuffle(rl)
    for name, rows in (("sft_train.jsonl", sft), ("rlvr_train.jsonl", rl)):
        with open(out_root / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    return out_root


def make_tiny_reward_model(out_dir: str | Path, like_hf: str | Path, seed: int = 1, hidden_size: int | None = None,
                           num_layers: int | None = None) -> Path:
    """A random ``LlamaForSequenceClassification`` (num_labels=1) with the config of ``like_hf`` (optionally
    another hidden size and depth), saved as an HF dir: the reward model a PPO value model starts from."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = json.loads((Path(like_hf) / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype", "dtype")}
    if hidden_size:
        cfg.update(hidden_size=hidden_size, head_dim=hidden_size // cfg["num_attention_heads"])
    if num_layers:
        cfg.update(num_hidden_layers=num_layers)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(LlamaConfig(**cfg, num_labels=1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05) if p.dim() == 2 else p.uniform_(0.8, 1.2)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)
