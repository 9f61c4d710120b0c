"""The RLVR loop: one PPO/GRPO step (``RLVRDriver.step``) inside the shared ``Trainer.run_steps`` skeleton.

One step, readable top to bottom:

    prompts (deterministic sampler, same on every rank)
    -> engine.generate on rank 0 (``rollout.make_engine``: vLLM or TorchEngine, local or Ray) -> broadcast
    -> rewards.verify_batch (alpha * correct)                                                  -> broadcast
    [-> rlvr.dynamic_sampling: drop groups with equal rewards, generate for further prompts (dynamic_sampling.py)]
    -> old / reference logprobs and values (forward-only, megatron schedules)
    -> make_experience: rewards, registered advantage estimator, IS weights (flat response tokens)
    -> ppo_epochs x minibatches: policy step (registered policy loss) [+ value step]
    -> weight sync: megatron shards -> HF names (checkpoint.mapping) -> engine.update_weights -> probe check

With ``rlvr.async_steps=k`` > 0 a background thread generates up to k batches ahead while the trainer trains (at
most k steps off-policy, a bounded queue), so generation and training overlap; weight syncs happen between
generations.
"""

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
from megatron_tulu.data.sampler import split_microbatches
from megatron_tulu.data.token_budget import useful_fraction
from megatron_tulu.parallel import broadcast_object
from megatron_tulu.preemption import PreemptionWatcher
from megatron_tulu.rollout.factory import require_engine_here
from megatron_tulu.trainers.fit import Trainer, lr_at
from megatron_tulu.trainers.rlvr.config import RLVRConfig
from megatron_tulu.trainers.rlvr.experience import (
    Experience, make_experience, minibatch_totals, pack_rows, response_rows, rollout_logp_grid,
)
from megatron_tulu.trainers.rlvr.tasks import PolicyTask
from megatron_tulu.trainers.rlvr.value import _check_hf_dir, build_value_trainer


class RLVRDriver:
    def __init__(self, cfg: RLVRConfig):
        self.cfg = cfg
        self.o = cfg.rlvr
        cfg.validate()  # load_config did already; a config built in code is checked here
        check_engine_fits_beside_trainer(cfg)
        require_engine_here(self.o.engine, self.o.engine_placement)  # before minutes of policy loading, as below
        if self.o.preset.uses_value_model and self.o.value_init_hf:  # before minutes of policy loading
            _check_hf_dir(self.o.value_init_hf)
        self.policy = Trainer(cfg, PolicyTask(cfg))
        self.engine = None
        self.value = None
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
        # Batches drawn but not trained yet, oldest first: (sampler state before the batch, generation future on
        # rank 0). At most async_steps of them wait while a step trains: the bounded queue.
        self.ahead: collections.deque = collections.deque()

    # ---- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        from megatron_tulu.trainers.model_setup import build_reference

        tr = self.policy
        tr.setup()
        self.task: PolicyTask = tr.task
        self.ref = build_reference(tr, self.cfg.model, tr.preset) if self.o.needs_reference else None
        self.value = build_value_trainer(tr, self.cfg) if self.o.preset.uses_value_model else None
        self._start_engine()

    def _start_engine(self) -> None:
        """Export the policy's current weights (initial or resumed) and start the engine(s) from trainer rank 0 or,
        colocated on several nodes, each node's share from that node's first rank (``rollout.colocated_nodes``)."""
        from megatron_tulu.rollout.factory import make_engine

        o = self.o
        num_engines, extra, leaders = o.num_engines, {}, None
        if o.engine_placement == "colocated":  # every rank checks (and raises alike) before any collective
            from megatron_tulu.plan.layouts import colocated_engine_tp_problem
            from megatron_tulu.rollout.colocated import colocated_num_engines
            from megatron_tulu.rollout.colocated_nodes import NodeLeaders

            num_engines = colocated_num_engines(dist.get_world_size(), o.engine_tp, o.num_engines)
            leaders = NodeLeaders.connect(o.engine_timeout_s)  # None on one node: rank 0 hosts every engine
            problem = leaders and colocated_engine_tp_problem(o.engine_tp, leaders.local_world_size, leaders.nodes)
            if problem:
                raise ValueError(problem)
            extra["events_path"] = Path(self.cfg.run_dir) / "engine_events.jsonl"  # the engines' call log
        init_dir = Path(self.cfg.run_dir) / "engine_init"
        self.policy.export_hf(init_dir)
        if not (leaders.hosts_engines() if leaders else dist.get_rank() == 0):
            return
        here = num_engines
        if leaders is not None:  # this node's share of the engines (init_dir: on the shared run dir), its own call log
            node = leaders.ranks.index(dist.get_rank())
            here //= leaders.nodes
            if node:
                extra["events_path"] = Path(self.cfg.run_dir) / f"engine_events.node{node}.jsonl"
        self.engine = make_engine(o.engine, init_dir, tp=o.engine_tp, dtype=o.engine_dtype, seed=self.cfg.train.seed,
                                  memory_fraction=o.engine_memory_fraction, sleep_level=o.engine_sleep_level,
                                  sync_bucket_bytes=int(o.sync_bucket_mb * 2**20), placement=o.engine_placement,
                                  num_engines=here, timeout_s=o.engine_timeout_s, **extra)
        if leaders is not None:
            from megatron_tulu.rollout.colocated_nodes import NodeColocatedEngines

            self.engine = NodeColocatedEngines(self.engine, leaders)
        if dist.get_rank() != 0:
            return
        if o.engine_placement == "colocated":
            nodes = f" ({leaders.nodes} nodes)" if leaders is not None else ""
            print(f"[megatron-tulu] rollout engines: {num_engines} x {o.engine} TP={o.engine_tp} colocated on the "
                  f"trainer's {dist.get_world_size()} devices{nodes}", file=sys.stderr, flush=True)
        if o.engine_placement == "ray":
            print(f"[megatron-tulu] rollout engines: {o.num_engines} x {o.engine} TP={o.engine_tp} as Ray actors "
                  f"(placement group {self.engine.pg.id.hex()})", file=sys.stderr, flush=True)

    # ---- rollouts ----------------------------------------------------------------------------------
    @property
    def serves_rollouts(self) -> bool:
        """A node leader other than rank 0 hosting colocated engines: it answers each of rank 0's generate calls
        (``NodeColocatedEngines.serve``) and receives each weight sync."""
        return self.engine is not None and dist.get_rank() != 0

    def _serve(self, *_) -> None:
        self.engine.serve()

    def _generate(self, indices: list[int], step: int, round_: int = 0) -> dict:
        """Rank 0: sample, decode and verify. Returns plain Python data (broadcast to all ranks). ``round_`` > 0: a
        dynamic-sampling refill of ``step`` (its own sampling seed, so repeated prompts get fresh samples)."""
        from megatron_tulu.rewards.batch import verify_batch
        from megatron_tulu.rollout.base import SamplingConfig

        t0 = time.time()
        rows = [self.task.prompts[i] for i in indices]
        k = self.o.samples_per_prompt
        sampling = SamplingConfig(temperature=self.o.temperature, max_new_tokens=self.o.max_new_tokens, n=k,
                                  seed=self.cfg.train.seed + step + 1_000_003 * round_,
                                  stop_token_ids=[self.task.tokenizer.eos_token_id])
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
        r = self.cfg.rewards
        verdicts, vm = verify_batch(records, workers=self.o.verifier_workers, timeout_s=r.timeout_s,
                                    paper_compat=r.paper_compat, ifeval_partial_credit=r.ifeval_partial_credit)
        return {"prompts": prompts, "responses": responses, "rollout_logp": logps, "eos": eos,
                "correct": verdicts, "timeouts": vm.get("timeouts", 0), "gen_s": time.time() - t0, "version": version,
                "by_dataset": {d: [v["correct"], v["n"]] for d, v in vm.get("by_dataset", {}).items()}}

    def _forward_logps(self, chunks, mbs, values: bool = False, temperature: float | None = None,
                       flat: bool = False) -> torch.Tensor | None:
        """Forward-only pass of ``chunks`` over ``mbs``: logprobs (``values``: the value head's outputs) at every
        position, ``[B, S]`` over the micro-batches' rows; ``flat``: only at response targets, ``[n]`` in micro-batch
        order (packed rows). None off the last pipeline stage."""
        from megatron_tulu.models.context_parallel import gather_tokens
        from megatron_tulu.models.forward import forward_only_map
        from megatron_tulu.models.logprobs import token_logprobs

        vocab, temp = self.policy.preset.vocab_size, self.o.temperature if temperature is None else temperature
        if values:
            red = lambda b, out: gather_tokens(out.squeeze(-1).float(), b["targets"].shape[1])  # noqa: E731
        else:
            red = lambda b, out: token_logprobs(out, b["targets"].to(out.device).clamp(min=0), chunks, vocab, temperature=temp)  # noqa: E731
        if flat:
            rows = red
            red = lambda b, out: rows(b, out)[b["mask"].to(out.device).bool()]  # noqa: E731
        res = forward_only_map(chunks, mbs, self.task.forward, red)
        return torch.cat([r.cpu() for r in res]) if res else None

    def _experience_passes(self, mbs: list[dict], flat: bool = False) -> tuple:
        """The forward-only passes over this rank's rollout micro-batches: (old logprobs, reference logprobs,
        old values or None, number of passes run). Without a reference model (kl_coef 0 or a KL-free preset) the
        policy itself stands in: KL exactly 0."""
        old = self._forward_logps(self.policy.model, mbs, flat=flat)
        ref = self._forward_logps(self.ref, mbs, flat=flat) if self.ref is not None else old
        values = self._forward_logps(self.value.model, mbs, values=True, flat=flat) if self.value else None
        return old, ref, values, 1 + (self.ref is not None) + (self.value is not None)

    # ---- one RL step -------------------------------------------------------------------------------
    def step(self, ro: dict, lr: float) -> dict:
        """One RL step on the rollout batch ``ro``: experience (forward passes, rewards, advantages), then
        ``ppo_epochs`` x ``num_minibatches`` policy (and value) optimizer steps.

        Minibatch k is rows ``[a_k, b_k)`` of every DP rank's contiguous share of the batch (the padded layout's
        split); the token-budget layout trains each minibatch on the same sequences, only spread and packed
        differently, so both layouts take the same optimizer steps."""
        tr, o = self.policy, self.o
        rows = response_rows(ro["prompts"], ro["responses"], self.task.pad_id)
        scores = torch.tensor(ro["correct"], dtype=torch.float32) * o.alpha
        eos = torch.tensor(ro["eos"])
        per = rows[0].shape[0] // tr.dims.dp
        steps = [(c[0], c[-1] + 1) for c in split_microbatches(list(range(per)), per // o.num_minibatches)]
        build = self._packed_experience if self.cfg.train.max_tokens_per_microbatch else self._padded_experience
        _, metrics, fwd, passes, train = build(ro, rows, scores, eos, steps)
        tokens = [passes * sum(m["useful"] for m in fwd), passes * sum(m["computed"] for m in fwd)]
        # PPO epochs x minibatches; every rank walks the same schedule
        t_train = time.time()
        updates = []  # each optimizer step's numbers
        for _ in range(o.ppo_epochs):
            for mbs in train:
                # the policy loss is a weighted token sum normalised over the step's whole batch (agg_weights)
                stats = tr.train_step(mbs, self.task.denominator(mbs), lr)
                runs = 1
                if self.value is not None:  # token mean over the step's batch, all DP ranks
                    denom = tr.all_reduce_dp(float(sum(x["mask"].sum() for x in mbs)))
                    stats.update(self.value.train_step(mbs, denom, o.value_lr or lr))
                    runs = 2
                tokens[0] += runs * sum(m["useful"] for m in mbs)
                tokens[1] += runs * sum(m["computed"] for m in mbs)
                updates.append(stats)
        # loss, clipfrac, approx_kl, grad_norm, value_loss: the mean over the step's ppo_epochs x minibatches
        # optimizer steps (the last one alone would hide the others, e.g. the off-policy second minibatch)
        metrics.update({k: sum(u[k] for u in updates) / len(updates) for k in updates[0]})
        metrics["time/train_s"] = time.time() - t_train
        mask = rows[2]
        metrics.update({"reward/accuracy": float(torch.tensor(ro["correct"], dtype=torch.float32).mean()),
                        "reward/score": float(scores.mean()), "reward/eos_frac": float(eos.float().mean()),
                        "reward/verifier_timeouts": ro["timeouts"], "response_len": float(mask.sum(1).mean()),
                        "time/generate_s": ro["gen_s"]})
        metrics.update({f"accuracy/{d}": c / max(n, 1) for d, (c, n) in ro["by_dataset"].items()})
        # this rank's tokens fed to the model in every pass of the step: real (prompt + response) and computed
        # (padding included); their DP means give the step's useful-token fraction
        metrics["throughput/useful_tokens"], metrics["throughput/computed_tokens"] = map(float, tokens)
        metrics = self._mean_over_dp(metrics)
        metrics["throughput/useful_token_frac"] = useful_fraction(metrics["throughput/useful_tokens"],
                                                                  metrics["throughput/computed_tokens"])
        return metrics

    def _padded_experience(self, ro: dict, rows: tuple, scores, eos, steps: list[tuple[int, int]]) -> tuple:
        """``train.max_tokens_per_microbatch=0``: DP rank r takes rows ``[r·per, (r+1)·per)`` of the batch, padded to
        the batch's longest sequence, in micro-batches of ``micro_batch_size`` rows. Returns (this rank's experience,
        metrics, forward micro-batches, forward passes run, per minibatch its micro-batches)."""
        tr, o, dp = self.policy, self.o, self.policy.dims.dp
        ids, targets, mask = rows
        per = ids.shape[0] // dp
        sl = slice(tr.dp_rank * per, (tr.dp_rank + 1) * per)
        size = self.cfg.train.micro_batch_size
        lens = [len(p) + len(r) for p, r in zip(ro["prompts"], ro["responses"])][sl]

        def cut(e: Experience, a: int, b: int) -> list[dict]:
            mbs = e.microbatches(a, b, size)
            for k, mb in enumerate(mbs):
                mb["useful"], mb["computed"] = sum(lens[a + k * size: min(a + (k + 1) * size, b)]), mb["input_ids"].numel()
            return mbs

        exp = Experience.rows(ids[sl], targets[sl], mask[sl])
        fwd = cut(exp, 0, per)
        old_logp, ref_logp, old_values, passes = self._experience_passes(fwd)
        metrics = {}
        if tr.is_last_stage:  # the forward results exist on the last pipeline stage only
            rollout_logp = rollout_logp_grid(ro["prompts"], ro["rollout_logp"], tuple(ids.shape))[sl]
            dp_sum = lambda t: tr.dims.all_reduce_dp(t)  # noqa: E731 - whitening over the whole batch
            exp, metrics = make_experience(exp, o, scores[sl], eos[sl], old_logp, ref_logp, rollout_logp,
                                           old_values, dp_sum=dp_sum, minibatches=steps,
                                           totals=minibatch_totals(mask[: per * dp], dp, steps))
        return exp, metrics, fwd, passes, [cut(exp, a, b) for a, b in steps]

    def _packed_experience(self, ro: dict, rows: tuple, scores, eos, steps: list[tuple[int, int]]) -> tuple:
        """``train.max_tokens_per_microbatch > 0``: token-budget micro-batches, each one packed THD row.

        Forward passes: the whole batch split by ``data.token_budget.plan_microbatches`` (near-equal token sums per
        DP rank, bins of at most the budget); each rank scatters its results into the batch's flat ``[N]`` response
        tokens and a DP all-reduce completes them (each entry comes from one rank, the rest add zeros). Every
        last-stage rank then makes the WHOLE batch's experience, so GRPO groups, whitening and the minibatch
        normalisers are global whatever rank a sequence trained on. Training: each minibatch's sequences (the padded
        layout's, see :meth:`step`) planned again and packed. Under PP every row of one schedule call is padded to
        its longest (one p2p shape), counted as computed tokens. Returns as :meth:`_padded_experience`."""
        from megatron_tulu.data.token_budget import plan_microbatches

        tr, o, dp = self.policy, self.o, self.policy.dims.dp
        ids, targets, mask = rows
        budget = self.cfg.train.max_tokens_per_microbatch
        lens = [len(p) + len(r) for p, r in zip(ro["prompts"], ro["responses"])]
        per = len(lens) // dp
        groups = [[q * per + i for q in range(dp) for i in range(a, b)] for a, b in steps]
        exp = Experience.rows(ids, targets, mask)
        fwd = exp.packed_microbatches(self._pack(ro, plan_microbatches(lens, dp, budget)[tr.dp_rank]))
        old_logp, ref_logp, old_values, passes = self._experience_passes(fwd, flat=True)
        metrics = {}
        if tr.is_last_stage:
            index = torch.cat([mb["flat_index"] for mb in fwd]).to(platform.device())
            m = mask.bool()

            def grid(local: torch.Tensor | None) -> torch.Tensor | None:  # this rank's [n] -> the batch's [B, S]
                if local is None:
                    return None
                flat = torch.zeros(int(m.sum()), dtype=torch.float32, device=platform.device())
                flat[index] = local.to(flat.device, torch.float32)
                out = torch.zeros(m.shape)
                out[m] = tr.dims.all_reduce_dp(flat).cpu()
                return out

            old = grid(old_logp)
            ref = old if ref_logp is old_logp else grid(ref_logp)
            rollout_logp = rollout_logp_grid(ro["prompts"], ro["rollout_logp"], tuple(ids.shape))
            exp, metrics = make_experience(exp, o, scores, eos, old, ref, rollout_logp, grid(old_values),
                                           minibatches=groups)
        train = []
        for g in groups:
            bins = plan_microbatches([lens[i] for i in g], dp, budget)[tr.dp_rank]
            train.append(exp.packed_microbatches(self._pack(ro, [[g[j] for j in b] for b in bins])))
        return exp, metrics, fwd, passes, train

    def _pack(self, ro: dict, bins: list[list[int]]) -> list[dict]:
        """This rank's bins of sequences as packed rows for one schedule call (``experience.pack_rows``): lengths a
        multiple of 8 (x TP under sequence parallelism, x 2·cp under CP, which splits each row in 2·cp chunks); under
        PP all of the call's rows as long as its longest (megatron's p2p buffers have one shape per call); under the
        interleaved schedule at least ``pp`` rows (bins split if need be); under CP a dense block-causal mask instead
        of THD boundaries (as SFT: the CP split here cuts dense masks, the local spec's all-gather attention reads them)."""
        from megatron_tulu.data.packing import row_multiple

        d = self.policy.dims
        if d.vpp > 1:
            bins = _split_bins(bins, d.pp)
        lens = [len(p) + len(r) for p, r in zip(ro["prompts"], ro["responses"])]
        length = max(sum(lens[i] for i in b) for b in bins) if d.pp > 1 else None
        return pack_rows(ro["prompts"], ro["responses"], bins, self.task.pad_id,
                         row_multiple(d.tp, d.cp, self.cfg.model.sequence_parallel), length, dense_mask=d.cp > 1)

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
        # shard pieces go straight into the buckets; another node's engines take each tensor after its gather
        named = iter_hf_tensors(tr.model, tr.preset, lazy=True, names_elsewhere=self.serves_rollouts)
        metas = hf_tensor_metas(tr.preset, pipeline_split(tr.model), next(tr.model[0].parameters()).dtype)
        if dist.get_rank() == 0:
            self.engine.update_weights(named, metas=metas)
        elif self.serves_rollouts:
            self.engine.receive_weights(named, metas, device=platform.device())
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
            if self.serves_rollouts:
                self.engine.serve()  # this node's share of the probe prompts
            trainer_logps(probe, None)
        worst, error = broadcast_object(verdict)
        if error is not None:
            raise WeightSyncMismatch(f"post-sync check: {error}")
        return worst

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Set up, then ``run_steps`` with the rollout step; the engines are shut down however it ends."""
        watcher = PreemptionWatcher()  # before set-up, as ``Trainer.fit``
        self.setup()
        tr = self.policy
        self.engine_version = tr.step  # optimizer steps in the engine's weights (the engine starts from tr.step)
        try:
            return tr.run_steps(self.rollout_step, save=self.save, watcher=watcher)
        finally:
            for _, f in self.ahead:  # never shut an engine down under a running generation
                if f is not None:
                    f.cancel() or f.exception()
            if self.engine is not None:
                self.engine.shutdown()

    def _draw(self, step: int) -> None:
        """Queue the next batch: its sampler state and, on rank 0, its generation (``step`` seeds the sampling)."""
        tr = self.policy
        state = tr.sampler.state_dict()
        indices = tr.sampler.next_batch()
        job = self._generate if dist.get_rank() == 0 else self._serve if self.serves_rollouts else None
        self.ahead.append((state, self.pool.submit(job, indices, step) if job else None))

    def rollout_step(self) -> dict:
        """One optimizer step of the policy (and value model) on the oldest queued batch; keeps up to
        ``async_steps`` batches generating ahead; advances ``policy.step``."""
        tr = self.policy
        if not self.ahead:
            self._draw(tr.step)
        t0 = time.time()
        _, fut = self.ahead.popleft()
        ro = broadcast_object(fut.result() if fut is not None else None)  # a serving leader's result is None
        sampling = {"reward/gen_accuracy": sum(map(float, ro["correct"])) / len(ro["correct"])}
        if self.o.part("dynamic_sampling"):
            ro, sampling = self._refill(ro)
        idle = time.time() - t0
        while len(self.ahead) < self.o.async_steps and tr.step + 1 + len(self.ahead) < tr.total_steps:
            self._draw(tr.step + 1 + len(self.ahead))  # generated in the background while this batch trains
        metrics = self.train_and_sync(ro, lr_at(tr.step, tr.total_steps, self.cfg.optim), self.ahead)
        metrics.update(sampling)
        self.engine_version = tr.step + 1
        metrics["time/idle_s"] = idle + metrics.pop("time/wait_ahead_s")
        metrics["rollout/queue_depth"] = len(self.ahead)
        # Steps the rollout's weights lag the trainer's (<= async_steps). Only an on-policy batch measures the weight
        # sync; a lagged one measures the policy's drift, reported but not fatal.
        metrics["mismatch/policy_lag"] = lag = tr.step - ro["version"]
        if lag == 0 and metrics.get("mismatch/mean_abs_diff", 0.0) > self.cfg_tol():
            from megatron_tulu.rollout.weight_sync import WeightSyncMismatch

            raise WeightSyncMismatch(f"rollout vs trainer logprobs differ by {metrics['mismatch/mean_abs_diff']:.3g} "
                                     f"(> {self.cfg_tol()}): weight sync or kernels are broken")
        tr.step += 1
        return metrics

    def _refill(self, ro: dict) -> tuple[dict, dict]:
        """DAPO dynamic sampling on every rank (``dynamic_sampling.collect_groups``): the decisions depend only on
        broadcast batches, so all ranks draw the same refill prompts and their samplers stay equal. Synchronous
        (``async_steps=0``), so the sampler position ``save`` writes is the one after this step's refills."""
        from megatron_tulu.trainers.rlvr.dynamic_sampling import collect_groups
        from megatron_tulu.trainers.rlvr.experience import response_scores

        tr, o = self.policy, self.o

        def more(round_: int) -> dict:
            indices = tr.sampler.next_batch()
            if self.serves_rollouts:
                self._serve()
            return broadcast_object(self._generate(indices, tr.step, round_) if dist.get_rank() == 0 else None)

        def rewards_of(batch: dict) -> torch.Tensor:
            scores = torch.tensor(batch["correct"], dtype=torch.float32) * o.alpha
            lengths = torch.tensor([len(r) for r in batch["responses"]])
            return response_scores(o, scores, torch.tensor(batch["eos"]), lengths)[0]

        ro, metrics = collect_groups(ro, more, rewards_of, o.samples_per_prompt, self.cfg.train.global_batch_size,
                                     o.dynamic_sampling_max_batches)
        if metrics["dynamic_sampling/filled_groups"] and dist.get_rank() == 0:
            print(f"[megatron-tulu] step {tr.step + 1}: dynamic sampling reached rlvr.dynamic_sampling_max_batches="
                  f"{o.dynamic_sampling_max_batches} with {int(metrics['dynamic_sampling/filled_groups'])} of "
                  f"{self.cfg.train.global_batch_size} groups short; trained with that many zero-advantage groups",
                  file=sys.stderr, flush=True)
        return ro, metrics

    def train_and_sync(self, ro: dict, lr: float, ahead) -> dict:
        """One optimizer step on the rollout batch ``ro``, then the weight sync and its probe check.

        With ``rlvr.engine_sleep_level`` the engine sleeps while the trainer steps (its GPU memory is the trainer's
        then) and wakes right before the sync refills its weights. The engine may not change weights mid-batch:
        batches generated ahead (``ahead``: (sampler state, future) pairs) are waited for before the sync, so each
        came from exactly this step's weights, a batch trains at a fixed lag of ``async_steps`` and a run is
        reproducible, not timing-dependent. Colocated engines always sleep and wake here (their GPUs are the
        trainer's; at sleep level 0 the calls free nothing, but the order is the same)."""
        takes_turns = bool(self.o.engine_sleep_level) or self.o.engine_placement == "colocated"
        asleep = takes_turns and self.engine is not None  # rank 0 (and, colocated over nodes, each node's first rank)
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
        """Checkpoint the policy (and value model) at the step trained; the prompt position saved is that of the
        oldest batch not trained yet (batches drawn ahead are generated again after a resume)."""
        tr = self.policy
        live = tr.sampler.state_dict()
        if self.ahead:
            tr.sampler.load_state_dict(self.ahead[0][0])
        tr.save()
        tr.sampler.load_state_dict(live)
        if self.value is not None:
            self.value.step = tr.step
            self.value.save()


def _split_bins(bins: list[list[int]], k: int) -> list[list[int]]:
    """``bins`` with sequences moved out of the fullest bins into bins of their own until there are ``k`` (or every
    bin holds one): the interleaved pipeline schedule trains on at least ``pp`` micro-batches."""
    bins = [list(b) for b in bins]
    while len(bins) < k and any(len(b) > 1 for b in bins):
        big = max(range(len(bins)), key=lambda j: (len(bins[j]), -j))
        bins.append([bins[big].pop()])
    return bins


def check_engine_fits_beside_trainer(cfg: RLVRConfig) -> None:
    """For a local or colocated vLLM engine on a GPU: the engine fits beside the trainer by the planner's numbers
    (``plan.colocation``), else a ``ValueError`` naming the fields; before any model loads."""
    o = cfg.rlvr
    if o.engine_placement not in ("local", "colocated") or o.engine != "vllm" or not platform.has_gpu():
        return
    from megatron_tulu.plan.colocation import engine_beside_trainer_problems
    from megatron_tulu.plan.hardware import gpu_from_device_name

    spec = gpu_from_device_name(torch.cuda.get_device_name())
    if spec is None:  # a GPU the planner has no numbers for: vLLM's own start-up check is all there is
        return
    spec = dataclasses.replace(spec, memory_bytes=float(torch.cuda.get_device_properties(0).total_memory))
    problems = engine_beside_trainer_problems(cfg, spec, int(os.environ.get("WORLD_SIZE", "1")))
    if problems:
        where = "every trainer GPU" if o.engine_placement == "colocated" else "trainer rank 0's GPU"
        raise ValueError(f"rlvr.engine_placement={o.engine_placement}: the vLLM engine does not fit on {where}: "
                         + "; ".join(problems))


def run_rlvr(cfg: RLVRConfig) -> dict:
    from megatron_tulu.parallel import destroy_distributed

    try:
        return RLVRDriver(cfg).fit()
    finally:
        destroy_distributed()
