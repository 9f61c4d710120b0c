"""Per-rank body of the packed-pair tests: set a DPO or RM trainer up, run one step, snapshot the gradients."""

from __future__ import annotations


def one_step_grads(jobs: list[tuple[str, str, list[str]]]) -> dict:
    """``jobs``: (name, stage ``dpo``|``rm``, overrides). Per run: the step's metrics, every parameter's reduced
    gradient before the optimizer step (numpy), and this rank's micro-batches (rows, tokens per row)."""
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.dpo import DPOConfig, DPOTask
    from megatron_tulu.trainers.fit import Trainer
    from megatron_tulu.trainers.rm import RMConfig, RMTask
    from trainer_helpers import snapshot_grads_before_step

    out = {}
    for name, stage, overrides in jobs:
        schema, base = (DPOConfig, DPOTask) if stage == "dpo" else (RMConfig, RMTask)

        class Recording(base):
            def microbatches(self, indices, trainer):
                mbs = super().microbatches(indices, trainer)
                self.seen = {"indices": sorted(indices), "shapes": [tuple(mb["input_ids"].shape) for mb in mbs]}
                return mbs

        cfg = load_config(schema, f"{stage}/tiny", overrides)
        task = Recording(cfg)
        tr = Trainer(cfg, task)
        tr.setup()
        grads = snapshot_grads_before_step(tr)
        out[name] = {"metrics": tr.data_step(), "grads": grads, **task.seen}
    return out
