"""The RLVR driver loop (see ``trainers.rlvr`` for the step outline and the tasks)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu import platform
from megatron_tulu.parallel import broadcast_object
from megatron_tulu.preemption import REQUEUE_EXIT_CODE, PreemptionWatcher
from megatron_tulu.trainers import checkpointing
from megatron_tulu.trainers.fit import Trainer, lr_at
from megatron_tulu.trainers.rlvr import PolicyTask, RLVRConfig, ValueHead, ValueTask, response_rows
from megatron_tulu.trainers.sft import split_microbatches


class RLVRDriver:
    def __init__(self, cfg: RLVRConfig):
        self.cfg = cfg
        self.o = cfg.rlvr
        cfg.validate()  # load_config did already; a config built in code is checked here
        check_local_engine_fits(cfg)
        if self.o.algorithm == "ppo" and self.o.value_init_hf:  # before minutes of policy loading
            _check_hf_dir(self.o.value_init_hf)
        self.policy = Trainer(cfg, PolicyTask(cfg))
        self.engine = None
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")

    # ---- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        from megatron_tulu.trainers.model_setup import build_reference

        tr = self.policy
        tr.setup()
        self.task: PolicyTask = tr.task
        self.ref = build_reference(tr, self.cfg.model, tr.preset)
        self.value = self._build_value_model() if self.o.algorithm == "ppo" else None
        self._start_engine()

    def _build_value_model(self) -> Trainer:
        """The PPO value model on the policy's ranks: its shape from ``rlvr.value_model`` / ``value_init_hf`` /
        the policy (:func:`value_model_shape`), its layers over the policy's pipeline stages (uneven first/last
        stages when they do not divide), its weights from ``value_init_hf``, else from the policy's initial weights
        when it has the policy's shape, else random; a scalar head on the last stage."""
        from megatron_tulu.trainers.model_setup import build_model_chunks, build_optimizer, trainer_pipeline_split

        tr = self.policy
        reader, preset = value_model_shape(self.o, self.cfg.model, tr.preset, getattr(self.task, "vocab_size", None))
        try:
            split = trainer_pipeline_split(tr).fit(preset.num_layers)
        except ValueError as e:
            raise ValueError(f"value model {preset.name!r} (rlvr.value_model / rlvr.value_init_hf) on the policy's "
                             f"pipeline stages (parallel.pp / parallel.vpp): {e}") from None
        v = Trainer(self.cfg, ValueTask(self.cfg), preset=preset)
        for k in ("dims", "dp_rank", "is_last_stage", "tp_rank", "reports_results", "num_microbatches"):
            setattr(v, k, getattr(tr, k))
        v.ckpt_root = Path(self.cfg.run_dir) / "checkpoints_value"
        same_shape = not _shape_diff(preset, tr.preset)  # the policy's tensors fit it
        if dist.get_rank() == 0:
            init = (f"from {self.o.value_init_hf}" if reader else "from the policy's initial weights" if same_shape
                    else "RANDOM (no rlvr.value_init_hf; Tülu 3 starts it from a reward model)")
            print(f"[megatron-tulu] value model: {preset.name} ({preset.param_count() / 1e9:.3g}B params, "
                  f"{preset.num_layers} layers over pp={split.pp} x vpp={split.vpp}"
                  f"{'' if split.is_even else f', {split.first_layers}/{split.last_layers} on the first/last rank'}), "
                  f"initialised {init}", file=sys.stderr, flush=True)

        def head(model):
            if reader is not None:  # the checkpoint's backbone (TP/PP-sharded like any HF load)
                from megatron_tulu.checkpoint.model_io import load_hf_into_model

                load_hf_into_model(model, reader, preset, backbone_only=True)
            if model.post_process:
                model.output_layer = ValueHead(model.config)
                if reader is not None and "score.weight" in reader.weight_map:
                    with torch.no_grad():
                        model.output_layer.weight.copy_(reader.get("score.weight").reshape(1, -1))

        model_cfg = self.cfg.model
        if reader is not None or not same_shape:
            model_cfg = dataclasses.replace(model_cfg, init_hf=None, init_mcore=None)
        v.model = build_model_chunks(v, model_cfg, preset, customize=head, split=split)
        v.optimizer = build_optimizer(v, v.model)
        if tr.step > 0:
            checkpointing.load(v.ckpt_root / checkpointing.step_dir_name(tr.step), v.model, v.optimizer,
                               self.cfg.checkpoint.optimizer_sharding)
        return v

    def _start_engine(self) -> None:
        """Export the policy's current weights (initial or resumed) and start the engine(s) from trainer rank 0."""
        init_dir = Path(self.cfg.run_dir) / "engine_init"
        self.policy.export_hf(init_dir)
        if dist.get_rank() != 0:
            return
        o = self.o
        bucket_bytes = int(o.sync_bucket_mb * 2**20)
        kwargs = {}
        if o.engine == "vllm":
            kwargs = dict(tensor_parallel_size=o.engine_tp, dtype=o.engine_dtype, seed=self.cfg.train.seed,
                          sync_bucket_bytes=bucket_bytes, gpu_memory_utilization=o.engine_memory_fraction,
                          sleep_level=o.engine_sleep_level)
        if o.engine_placement == "ray":
            from megatron_tulu.trainers.ray_engines import start_ray_engines

            self.engine = start_ray_engines(o.engine, init_dir, o.num_engines, o.engine_tp, kwargs,
                                            timeout_s=o.engine_timeout_s, sync_bucket_bytes=bucket_bytes)
            print(f"[megatron-tulu] rollout engines: {o.num_engines} x {o.engine} TP={o.engine_tp} as Ray actors "
                  f"(placement group {self.engine.pg.id.hex()})", file=sys.stderr, flush=True)
        elif o.engine == "vllm":
            from megatron_tulu.rollout.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(init_dir, **kwargs)
        else:
            from megatron_tulu.rollout.torch_engine import TorchEngine

            self.engine = TorchEngine(init_dir)

    # ---- rollouts ----------------------------------------------------------------------------------
    def _generate(self, indices: list[int], step: int) -> dict:
        """Rank 0: sample, decode and verify. Returns plain Python data (broadcast to all ranks)."""
        from megatron_tulu.rewards.batch import verify_batch
        from megatron_tulu.rollout.base import SamplingConfig

        t0 = time.time()
        rows = [self.task.prompts[i] for i in indices]
        k = self.o.samples_per_prompt
        sampling = SamplingConfig(temperature=self.o.temperature, max_new_tokens=self.o.max_new_tokens, n=k,
                                  seed=self.cfg.train.seed + step, stop_token_ids=[self.task.tokenizer.eos_token_id])
        version = self.engine_version  # the weights these samples come from (no sync runs during a generation)
        gens = self.engine.generate([list(r["prompt_ids"]) for r in rows], sampling)
        prompts, responses, logps, eos, records = [], [], [], [], []
        for r, g in zip(rows, gens):
            for s in range(k):
                prompts.append(list(r["prompt_ids"]))
                responses.append(g.token_ids[s])
                logps.append(g.logprobs[s])
                eos.append(g.finish_reasons[s] == "stop")
                records.append({"dataset": r["dataset"], "ground_truth": r["ground_truth"],
                                "response": self.task.tokenizer.decode(g.token_ids[s], skip_special_tokens=True)})
        verdicts, vm = verify_batch(records, workers=self.o.verifier_workers)
        return {"prompts": prompts, "responses": responses, "rollout_logp": logps, "eos": eos,
                "correct": verdicts, "timeouts": vm.get("timeouts", 0), "gen_s": time.time() - t0, "version": version,
                "by_dataset": {d: v["correct"] / max(v["n"], 1) for d, v in vm.get("by_dataset", {}).items()}}

    def _forward_logps(self, chunks, mbs, values: bool = False, temperature: float | None = None) -> torch.Tensor | None:
        from megatron_tulu.models.context_parallel import gather_tokens
        from megatron_tulu.models.forward import forward_only_map
        from megatron_tulu.models.logprobs import token_logprobs

        vocab, temp = self.policy.preset.vocab_size, self.o.temperature if temperature is None else temperature
        if values:
            red = lambda b, out: gather_tokens(out.squeeze(-1).float(), b["targets"].shape[1])  # noqa: E731
        else:
            red = lambda b, out: token_logprobs(out, b["targets"].to(out.device).clamp(min=0), chunks, vocab, temperature=temp)  # noqa: E731
        res = forward_only_map(chunks, mbs, self.task.forward, red)
        return torch.cat([r.cpu() for r in res]) if res else None

    # ---- one RL step -------------------------------------------------------------------------------
    def step(self, ro: dict, lr: float) -> dict:
        from megatron.core import parallel_state as ps

        from megatron_tulu.algorithms import gae, grpo_advantages, shape_rewards, whiten
        from megatron_tulu.losses.kl import logprob_mismatch

        tr, o = self.policy, self.o
        ids, targets, mask = response_rows(ro["prompts"], ro["responses"], self.task.pad_id)
        n = ids.shape[0]
        scores = torch.tensor(ro["correct"], dtype=torch.float32) * o.alpha
        eos = torch.tensor(ro["eos"])
        per = n // tr.dims.dp
        sl = slice(tr.dp_rank * per, (tr.dp_rank + 1) * per)
        rollout_logp = torch.zeros(n, ids.shape[1])
        for i, (p, lp) in enumerate(zip(ro["prompts"], ro["rollout_logp"])):
            if lp:
                rollout_logp[i, len(p) - 1: len(p) - 1 + len(lp)] = torch.tensor(lp)
        local = {"input_ids": ids[sl], "targets": targets[sl], "mask": mask[sl]}
        mb = self.cfg.train.micro_batch_size
        mbs = [{k: v[i:i + mb] for k, v in local.items()} for i in range(0, per, mb)]
        old_logp = self._forward_logps(tr.model, mbs)
        ref_logp = self._forward_logps(self.ref, mbs)
        old_values = self._forward_logps(self.value.model, mbs, values=True) if self.value else None
        metrics = {}
        if tr.is_last_stage:
            m = mask[sl]
            dp_sum = (lambda t: (dist.all_reduce(t, group=ps.get_data_parallel_group()), t)[1]) if tr.dims.dp > 1 else None
            if o.algorithm == "ppo":
                rewards, rm = shape_rewards(scores[sl], old_logp, ref_logp, m, kl_coef=o.kl_coef, kl_kind=o.kl_kind,
                                            eos_found=eos[sl], non_eos_penalty=o.non_eos_penalty)
                adv, returns = gae(rewards, old_values * m, m, gamma=o.gamma, lam=o.lam)
                if o.whiten_advantages:
                    adv = whiten(adv, m, all_reduce=dp_sum)
                local.update(old_values=old_values, returns=returns)
                metrics.update({f"reward/{k}": float(v) for k, v in rm.items()})
            else:
                s = torch.where(eos, scores, torch.full_like(scores, o.non_eos_penalty))
                adv = grpo_advantages(s, o.samples_per_prompt)[sl].unsqueeze(1) * m
            local.update(old_logp=old_logp, ref_logp=ref_logp, adv=adv)
            mm = logprob_mismatch(rollout_logp[sl], old_logp, m)
            metrics.update({f"mismatch/{k}": float(v) for k, v in mm.items()})
            if o.tis_cap > 0:
                from megatron_tulu.losses.ppo import truncated_is_weights

                w = truncated_is_weights(old_logp, rollout_logp[sl], m, o.tis_cap)
                local["is_w"] = w
                valid = m.bool()
                metrics.update({"tis/weight_mean": float(w[valid].mean()) if valid.any() else 1.0,
                                "tis/capped_frac": float((w[valid] >= o.tis_cap).float().mean()) if valid.any() else 0.0})
        # PPO epochs x minibatches; every rank walks the same schedule (the tensors exist on the last stage)
        t_train = time.time()
        rows = list(range(per))
        stats = {}
        for _ in range(o.ppo_epochs):
            for chunk in split_microbatches(rows, per // o.num_minibatches):
                mbs = [{k: v[i:i + mb] for k, v in local.items()} for i in range(chunk[0], chunk[-1] + 1, mb)]
                denom = tr.all_reduce_dp(float(sum(b["mask"].sum() for b in mbs)))
                stats = tr.train_step(mbs, denom, lr)
                if self.value is not None:
                    vlr = o.value_lr or lr
                    stats.update(self.value.train_step(mbs, denom, vlr))
        metrics.update(stats)
        metrics["time/train_s"] = time.time() - t_train
        metrics.update({"reward/accuracy": float(torch.tensor(ro["correct"], dtype=torch.float32).mean()),
                        "reward/score": float(scores.mean()), "reward/eos_frac": float(eos.float().mean()),
                        "reward/verifier_timeouts": ro["timeouts"], "response_len": float(mask.sum(1).mean()),
                        "time/generate_s": ro["gen_s"]})
        metrics.update({f"accuracy/{d}": v for d, v in ro["by_dataset"].items()})
        return self._mean_over_dp(metrics)

    def _mean_over_dp(self, metrics: dict) -> dict:
        """Per-DP-rank metrics from the last stage -> mean on every rank (keys are rank-independent)."""
        keys = sorted(metrics)
        keys = broadcast_object(keys, src=dist.get_world_size() - 1)
        vec = torch.tensor([float(metrics.get(k, 0.0)) if self.policy.reports_results else 0.0
                            for k in keys], dtype=torch.float64, device=platform.device())
        if dist.get_world_size() > 1:
            dist.all_reduce(vec)
        return {k: v / self.policy.dims.dp for k, v in zip(keys, vec.tolist())}

    def sync_weights(self) -> float:
        """Collective: trainer -> engine(s). Every rank walks the TP/PP gather (``iter_hf_tensors``); rank 0
        streams the HF-named full tensors into the engines' bucketed broadcast as they arrive, with the
        metadata computed from the preset, so it never holds the whole model."""
        from megatron_tulu.checkpoint.model_io import hf_tensor_metas, iter_hf_tensors, pipeline_split

        t0 = time.time()
        tr = self.policy
        named = iter_hf_tensors(tr.model, tr.preset, lazy=True)  # shard pieces go straight into the buckets
        if dist.get_rank() == 0:
            dtype = next(tr.model[0].parameters()).dtype
            self.engine.update_weights(named, metas=hf_tensor_metas(tr.preset, pipeline_split(tr.model), dtype))
        left = sum(1 for _ in named)  # other ranks: run their collectives; rank 0: the stream must be used up
        if dist.get_rank() == 0 and left:
            from megatron_tulu.rollout.weight_sync import WeightSyncValidationError

            raise WeightSyncValidationError(f"weight sync: {left} gathered tensors were not in the metadata")
        return time.time() - t0

    def post_sync_check(self) -> float:
        """Collective: the engine's greedy logprobs on fixed probe prompts against the trainer's (the issue's
        post-sync check). Returns the max |difference|; every rank raises ``WeightSyncMismatch`` above the
        tolerance, so a broken sync stops the run instead of training on rollouts from other weights."""
        from megatron_tulu.rollout.weight_sync import WeightSyncMismatch, check_probe_logprobs

        n = min(self.o.probe_prompts, len(self.task.prompts))
        if n <= 0:
            return 0.0
        probe = [list(self.task.prompts[i]["prompt_ids"]) for i in range(n)]

        def trainer_logps(prompts, responses):  # every rank runs this forward (TP/PP collectives)
            responses = broadcast_object(responses)
            ids, targets, mask = response_rows(prompts, responses, self.task.pad_id)
            lp = self._forward_logps(self.policy.model, [{"input_ids": ids, "targets": targets, "mask": mask}],
                                     temperature=1.0)  # greedy convention: plain log_softmax
            lp = broadcast_object(lp if self.policy.is_last_stage else None,
                                  src=dist.get_world_size() - 1)
            return [lp[i, len(p) - 1: len(p) - 1 + len(r)].tolist() for i, (p, r) in enumerate(zip(prompts, responses))]

        verdict = (0.0, None)
        if dist.get_rank() == 0:
            try:
                verdict = (check_probe_logprobs(self.engine, trainer_logps, probe, atol=self.cfg_tol()), None)
            except WeightSyncMismatch as e:
                verdict = (float("nan"), str(e))
        else:
            trainer_logps(probe, None)
        worst, error = broadcast_object(verdict)
        if error is not None:
            raise WeightSyncMismatch(f"post-sync check: {error}")
        return worst

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        self.setup()
        tr, cfg = self.policy, self.cfg
        self.engine_version = tr.step  # optimizer steps in the engine's weights (the engine starts from tr.step)
        watcher = PreemptionWatcher()
        # Batches drawn but not trained yet, oldest first: (sampler state before the batch, generation future
        # on rank 0). At most async_steps of them wait while a step trains: the bounded queue.
        ahead: collections.deque = collections.deque()
        rank0 = dist.get_rank() == 0

        def draw(step: int) -> None:  # step: the optimizer step this batch will train (seeds its sampling)
            state = tr.sampler.state_dict()
            indices = tr.sampler.next_batch()
            ahead.append((state, self.pool.submit(self._generate, indices, step) if rank0 else None))

        last = {}
        t_start = time.time()
        try:
            while tr.step < tr.total_steps:
                if not ahead:
                    draw(tr.step)
                t0 = time.time()
                _, fut = ahead.popleft()
                ro = broadcast_object(fut.result() if rank0 else None)
                idle = time.time() - t0
                while len(ahead) < self.o.async_steps and tr.step + 1 + len(ahead) < tr.total_steps:
                    draw(tr.step + 1 + len(ahead))  # generated in the background while this batch trains
                metrics = self.train_and_sync(ro, lr_at(tr.step, tr.total_steps, cfg.optim), ahead)
                self.engine_version = tr.step + 1
                metrics["time/idle_s"] = idle + metrics.pop("time/wait_ahead_s")
                metrics["rollout/queue_depth"] = len(ahead)
                # Steps the rollout's weights lag the trainer's (<= async_steps). Only an on-policy batch measures
                # the weight sync; a lagged one measures the policy's drift, reported but not fatal.
                metrics["mismatch/policy_lag"] = lag = tr.step - ro["version"]
                if lag == 0 and metrics.get("mismatch/mean_abs_diff", 0.0) > self.cfg_tol():
                    from megatron_tulu.rollout.weight_sync import WeightSyncMismatch

                    raise WeightSyncMismatch(f"rollout vs trainer logprobs differ by {metrics['mismatch/mean_abs_diff']:.3g} "
                                             f"(> {self.cfg_tol()}): weight sync or kernels are broken")
                tr.step += 1
                tr.metrics.log(tr.step, metrics)
                last = metrics
                stop = watcher.requested()
                # the checkpoint's prompt position is the oldest batch not trained yet (those drawn ahead are redone)
                live = tr.sampler.state_dict()
                if ahead:
                    tr.sampler.load_state_dict(ahead[0][0])
                interval = cfg.checkpoint.interval
                if stop or (interval and tr.step % interval == 0) or tr.step == tr.total_steps:
                    self.save()
                tr.sampler.load_state_dict(live)
                if stop:  # every generation in flight already finished before this step's sync
                    tr.metrics.close()
                    print(f"[megatron-tulu] {watcher.signal_name}: checkpointed RLVR step {tr.step}", file=sys.stderr)
                    raise SystemExit(REQUEUE_EXIT_CODE)
            if cfg.checkpoint.export_hf:
                tr.export_hf(Path(cfg.run_dir) / "hf")
        finally:
            watcher.restore()
            for _, f in ahead:  # never shut an engine down under a running generation
                if f is not None:
                    f.cancel() or f.exception()
            if self.engine is not None:
                self.engine.shutdown()
        summary = {"steps": tr.step, "final": last, "wall_s": time.time() - t_start}
        tr.metrics.summary(summary)
        tr.metrics.close()
        return summary

    def train_and_sync(self, ro: dict, lr: float, ahead) -> dict:
        """One optimizer step on the rollout batch ``ro``, then the weight sync and its probe check.

        With ``rlvr.engine_sleep_level`` the engine sleeps while the trainer steps (its GPU memory is the trainer's
        then) and wakes right before the sync refills its weights. The engine may not change weights mid-batch:
        batches generated ahead (``ahead``: (sampler state, future) pairs) are waited for before the sync, so each
        came from exactly this step's weights, a batch trains at a fixed lag of ``async_steps`` and a run is
        reproducible, not timing-dependent."""
        asleep = bool(self.o.engine_sleep_level) and self.engine is not None  # rank 0 holds the engine
        if asleep:
            self.engine.sleep()
        metrics = self.step(ro, lr)
        t_wait = time.time()
        for _, f in ahead:
            if f is not None:
                f.result()
        metrics["time/wait_ahead_s"] = time.time() - t_wait
        if asleep:
            self.engine.wake()
        metrics["time/sync_s"] = self.sync_weights()
        metrics["sync/probe_max_abs_diff"] = self.post_sync_check()
        return metrics

    def cfg_tol(self) -> float:
        return 0.05 if not platform.has_gpu() or self.o.engine_dtype == "float32" else 0.2

    def save(self) -> None:
        self.policy.save()
        if self.value is not None:
            checkpointing.save(self.value.ckpt_root, self.policy.step, self.value.model, self.value.optimizer,
                               {"sampler": {}}, sharding=self.cfg.checkpoint.optimizer_sharding,
                               keep_last=self.cfg.checkpoint.keep_last)


def check_local_engine_fits(cfg: RLVRConfig) -> None:
    """For a local vLLM engine on a GPU: the engine fits beside trainer rank 0 by the planner's numbers
    (``plan.colocation``), else a ``ValueError`` naming the fields; before any model loads."""
    o = cfg.rlvr
    if o.engine_placement != "local" or o.engine != "vllm" or not platform.has_gpu():
        return
    from megatron_tulu.plan.colocation import local_engine_problems
    from megatron_tulu.plan.hardware import gpu_from_device_name

    spec = gpu_from_device_name(torch.cuda.get_device_name())
    if spec is None:  # a GPU the planner has no numbers for: vLLM's own start-up check is all there is
        return
    spec = dataclasses.replace(spec, memory_bytes=float(torch.cuda.get_device_properties(0).total_memory))
    problems = local_engine_problems(cfg, spec, int(os.environ.get("WORLD_SIZE", "1")))
    if problems:
        raise ValueError("rlvr.engine_placement=local: the vLLM engine does not fit on trainer rank 0's GPU: "
                         + "; ".join(problems))


def _check_hf_dir(path: str) -> str:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"rlvr.value_init_hf={path}: no config.json (expected an HF model dir: a reward "
                                "model or a causal LM)")
    return path


def _shape_diff(a, b) -> dict:
    """``{field: (a's, b's)}`` for the preset fields that decide tensor shapes (rope and norm settings do not)."""
    shape = ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads", "num_query_groups", "vocab_size")
    return {k: (getattr(a, k), getattr(b, k)) for k in shape if getattr(a, k) != getattr(b, k)}


def value_model_shape(o, model_cfg, policy, tokenizer_vocab: int | None = None):
    """``(reader of rlvr.value_init_hf or None, value-model preset)``.

    The shape is ``rlvr.value_model`` (a preset name) when set, else that of ``value_init_hf`` when given, else
    the policy's; when both are set they must agree. ``value_init_hf`` is a reward model
    (``LlamaForSequenceClassification``, num_labels=1: backbone and ``score`` head) or a causal LM (backbone under
    a zero head). The value model reads the policy's token ids, so its vocab must be the policy's."""
    from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
    from megatron_tulu.trainers.model_setup import resolve_preset

    reader = preset = None
    if o.value_model:
        preset = resolve_preset(dataclasses.replace(model_cfg, preset=o.value_model, init_hf=None), tokenizer_vocab)
    path = o.value_init_hf
    if path:
        reader = HFReader(_check_hf_dir(path))
        ckpt = preset_from_hf_config(reader.config, name=Path(path).name)
        if preset is not None and (diff := _shape_diff(ckpt, preset)):
            raise ValueError(f"rlvr.value_init_hf={path}: shape differs from rlvr.value_model={o.value_model!r} "
                             f"{diff} (checkpoint, preset)")
        preset = preset or ckpt
        if "score.weight" in reader.weight_map:
            score_shape = tuple(reader.get("score.weight").shape)
            if score_shape != (1, preset.hidden_size):
                raise ValueError(f"rlvr.value_init_hf={path}: score.weight has shape {score_shape}, "
                                 f"expected (1, {preset.hidden_size}) (num_labels=1)")
    preset = preset or policy
    if preset.vocab_size != policy.vocab_size:
        what = f"rlvr.value_init_hf={path}" if path and not o.value_model else f"rlvr.value_model={o.value_model!r}"
        raise ValueError(f"{what}: vocab_size {preset.vocab_size} != the policy's {policy.vocab_size} (the value "
                         "model reads the policy's token ids: it needs the policy's tokenizer)")
    return reader, preset


def run_rlvr(cfg: RLVRConfig) -> dict:
    from megatron_tulu.parallel import destroy_distributed

    try:
        return RLVRDriver(cfg).fit()
    finally:
        destroy_distributed()
