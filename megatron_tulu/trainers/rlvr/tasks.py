"""The RLVR tasks for the shared trainer: the policy's clipped loss and the value model's clipped regression,
both on flat response tokens (``losses.flat``) taken from an ``Experience`` micro-batch."""

from __future__ import annotations

import torch

from megatron_tulu.models.logprobs import token_logprobs
from megatron_tulu.models.packed import forward_rows
from megatron_tulu.trainers.rlvr.config import RLVRConfig
from megatron_tulu.trainers.task import DataStageMixin, Task


def _on(batch: dict, name: str, device):
    t = batch.get(name)
    return None if t is None else t.to(device)


class PolicyTask(DataStageMixin, Task):
    """The registered policy loss (``rlvr.policy_loss``, default the preset's) over response tokens, aggregated by
    the experience's ``agg_weights`` (a weighted token sum, exact under any micro-batch/DP split, so the
    denominator is 1); RLVR calls ``train_step``."""

    metric_names = ["loss_sum", "tokens", "clipfrac", "approx_kl"]

    def __init__(self, cfg: RLVRConfig):
        self.cfg = cfg
        # token-budget micro-batches are packed rows: under context parallelism their dense document masks rule out
        # the TE spec (``model_setup.build_model_chunks`` reads this for the policy, reference and value models)
        self.packed = cfg.train.max_tokens_per_microbatch > 0

    def setup(self, trainer) -> int:
        self.load_tokenizer(self.cfg.data)
        self.prompts = self.build(trainer, "rlvr", self.cfg.data.mixture, self.cfg.train.seq_length)
        return len(self.prompts)

    def forward(self, model, batch):
        """Padded rows ``[B, S]`` (positions 0..S-1, causal), or one packed row (``experience.pack_rows``): THD
        boundaries, or under context parallelism a dense block-causal ``attn_mask`` (``models.packed.forward_rows``)."""
        return forward_rows(model, batch)

    def denominator(self, mbs):
        """1: ``agg_weights`` already normalise over the whole optimizer-step batch (all micro-batches, DP ranks)."""
        return 1.0

    def loss_fn(self, batch, logits, trainer):
        from megatron_tulu.losses.ppo import POLICY_LOSSES

        o, dev = self.cfg.rlvr, logits.device
        t = batch["targets"].to(dev)
        logp_rows = token_logprobs(logits, t.clamp(min=0), trainer.model, trainer.preset.vocab_size,
                                   temperature=o.temperature)
        logp = logp_rows[batch["mask"].to(dev).bool()]  # [N] flat response tokens
        kl_in_loss = o.preset.kl_in == "loss"
        loss, m = POLICY_LOSSES[o.part("policy_loss")](
            logp, _on(batch, "old_logp", dev), _on(batch, "advantages", dev), _on(batch, "seq_idx", dev),
            num_seqs=batch.get("num_seqs", int(t.shape[0])), clip_low=o.part("clip_low"), clip_high=o.part("clip_high"),
            loss_agg=o.part("loss_agg"), agg_weights=_on(batch, "agg_weights", dev), max_tokens=o.max_new_tokens,
            ref_logp=_on(batch, "ref_logp", dev) if kl_in_loss else None, kl_coef=o.kl_coef if kl_in_loss else 0.0,
            kl_kind=o.kl_estimator, is_weights=_on(batch, "is_weights", dev))
        n = torch.tensor(float(logp.numel()), device=dev)
        return loss, {"loss_sum": loss.detach(), "tokens": n, "clipfrac": m["clipfrac"] * n, "approx_kl": m["approx_kl"] * n}

    def finalize(self, sums, denom):
        n = max(sums["tokens"], 1.0)
        return {"loss": sums["loss_sum"] / max(denom, 1e-12), "clipfrac": sums["clipfrac"] / n, "approx_kl": sums["approx_kl"] / n}


class ValueTask(PolicyTask):
    """The clipped value loss of the PPO value model (a ``ScalarHead`` model on the policy's ranks), scaled by
    ``rlvr.vf_coef`` and divided by the global token count (token mean over the optimizer-step batch)."""

    metric_names = ["loss_sum", "tokens"]

    def denominator(self, mbs):
        return float(sum(mb["mask"].sum() for mb in mbs))

    def loss_fn(self, batch, values, trainer):
        from megatron_tulu.losses.ppo import value_loss
        from megatron_tulu.models.context_parallel import gather_tokens

        dev = values.device
        mask = batch["mask"].to(dev)
        full = gather_tokens(values.squeeze(-1).float(), mask.shape[1])  # full rows under context parallelism
        loss, _ = value_loss(full[mask.bool()], _on(batch, "old_values", dev), _on(batch, "returns", dev),
                             _on(batch, "seq_idx", dev), num_seqs=batch.get("num_seqs", int(mask.shape[0])),
                             clip_eps=self.cfg.rlvr.vf_clip_eps, reduction="token_sum")
        # the loss logged is the unscaled value loss; the gradient carries vf_coef (before clipping, open-instruct)
        return loss * self.cfg.rlvr.vf_coef, {"loss_sum": loss.detach(), "tokens": mask.sum()}

    def finalize(self, sums, denom):
        return {"value_loss": sums["loss_sum"] / max(denom, 1e-12)}
