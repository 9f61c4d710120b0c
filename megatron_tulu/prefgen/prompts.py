"""Prompts of a prefgen run: read with the training loaders, decontaminated, numbered; and the models' tokenizers,
checked before any engine starts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from megatron_tulu.data import chat
from megatron_tulu.data.loaders import mix, mixture_from_dict
from megatron_tulu.prefgen.config import PoolModel, PromptsConfig


def prompt_of(row: dict, kind: str) -> dict:
    """``{"messages", "source"[, "ground_truth", "dataset"]}``: the prompt turns of a validated loader row."""
    if kind == "preference":
        msgs = chat.prompt_messages(row["chosen"])
    else:
        msgs = chat.prompt_messages(row["messages"]) or row["messages"]
    out = {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs],
           "source": row.get("source") or Path(row["_source"]).name, "origin": f"{row['_source']}:{row['_line']}"}
    if kind == "rlvr":
        out["ground_truth"], out["dataset"] = row["ground_truth"], row["dataset"]
    return out


def _eval_files(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        name, path = (name, path) if sep else (Path(it).stem, it)
        if not Path(path).is_file():
            raise FileNotFoundError(f"prompts.decontaminate: eval file {path!r} not found")
        out[name] = path
    return out


def build_prompts(cfg: PromptsConfig) -> tuple[list[dict], dict]:
    """The run's prompts (each with an ``id``) and counts: ``mixed``, ``decontaminated`` (dropped), ``used``."""
    rows, report = mix(mixture_from_dict(cfg.mixture), cfg.kind)
    prompts = [prompt_of(r, cfg.kind) for r in rows]
    counts = {"mixed": len(prompts), "decontaminated": 0}
    if cfg.decontaminate:
        from megatron_tulu.data.decontaminate import contaminated_rows

        texts = ["\n".join(m["content"] for m in p["messages"]) for p in prompts]
        bad = contaminated_rows(texts, _eval_files(cfg.decontaminate), n=cfg.ngram, threshold=cfg.threshold)
        prompts = [p for i, p in enumerate(prompts) if i not in bad]
        counts["decontaminated"] = len(bad)
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    for i, p in enumerate(prompts):
        p["id"] = f"prefgen-{i:07d}"
    counts["used"] = len(prompts)
    counts["by_source"] = {s.name: s.rows_taken for s in report.sources}
    return prompts, counts


def load_model_tokenizer(model: PoolModel | None, where: str, path: str = "", tokenizer: str = ""):
    """The tokenizer of a pool model (or of the judge: ``path``/``tokenizer``), checked against its model.

    Raises (before any engine starts), naming ``where``: FileNotFoundError when the model directory has no config.json
    or no tokenizer is found; ValueError when the tokenizer has more tokens than the model's vocabulary (it belongs to
    another model: its ids would index wrong embeddings) or no EOS token.
    """
    from megatron_tulu.data.tokenizer import load_tokenizer

    path = model.path if model is not None else path
    tok_dir = (model.tokenizer if model is not None else tokenizer) or path
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{where}: {cfg_file} not found (expected an HF model directory)")
    try:
        tok = load_tokenizer(tok_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where}: {e}; set its tokenizer to the model's tokenizer directory") from None
    vocab = json.loads(cfg_file.read_text()).get("vocab_size")
    if vocab is not None and len(tok) > int(vocab):
        raise ValueError(f"{where}: tokenizer {tok_dir} has {len(tok)} tokens but the model's vocab_size is {vocab}: "
                         "it is not this model's tokenizer")
    if tok.eos_token_id is None:
        raise ValueError(f"{where}: tokenizer {tok_dir} has no EOS token (completions could not stop)")
    return tok


def stop_ids(tok) -> list[int]:
    """EOS, and Llama 3's end-of-turn token where the vocabulary has it (its chat template ends turns with it)."""
    ids = {int(tok.eos_token_id)}
    eot = tok.convert_tokens_to_ids("<|eot_id|>") if "<|eot_id|>" in tok.get_vocab() else None
    if eot is not None:
        ids.add(int(eot))
    return sorted(ids)


def encode_prompt(messages: list[dict], tok, template: str) -> list[int]:
    return chat.encode_text(chat.render(messages, tok, template, add_generation_prompt=True), tok)
