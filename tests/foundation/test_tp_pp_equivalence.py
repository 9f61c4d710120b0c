"""The issue's helper test: the ``tiny`` preset at TP=2 and TP=2xPP=2, and with context parallelism (TP=2xCP=2,
PP=2xCP=2, CP=4; 15 tokens per row, so every CP layout pads the rows to split them), gives the same summed-token
loss and the same gradients as TP=1, and all of them match transformers' autograd on the same weights.

Also here (same 4-process launch, to keep launches few): ``vocab_parallel_logprobs`` against the full-vocab
log_softmax at TP=2 and TP=4 with padding rows, temperature != 1, entropy and gradients.
"""

from __future__ import annotations

import pytest
import torch

import foundation_helpers as fh

NUM_MICROBATCHES = 2
# (tp, pp, cp) on world 4: smaller layouts run with DP (every replica computes the same)
LAYOUTS = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2), (1, 1, 4)]
LAYOUT_IDS = ["tp2", "tp2_pp2", "tp2_cp2", "pp2_cp2", "cp4"]
REL_TOL = 1e-5  # fp32: relative to the largest |grad| of each tensor
VOCAB_PAD_TRUE = 301  # odd vocab: padded to 512 columns for TP=2 and TP=4


def _tiny_preset():
    from megatron_tulu.models.presets import get_preset

    # odd vocab so the padded output rows are exercised in the loss and the embedding/output grads
    return get_preset("tiny").with_(vocab_size=500)


def _logprob_case(seed: int = 0):
    from megatron_tulu.models.build import padded_vocab_size

    g = torch.Generator().manual_seed(seed)
    v_pad = padded_vocab_size(VOCAB_PAD_TRUE, 4)
    full = torch.randn(3, 5, v_pad, generator=g) * 3.0  # padded columns hold junk that must be masked
    targets = torch.randint(0, VOCAB_PAD_TRUE, (3, 5), generator=g)
    return full, targets


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from megatron_tulu.testing import run_distributed

    preset = _tiny_preset()
    hf_dir = fh.make_hf_from_preset(tmp_path_factory.mktemp("tiny") / "hf", preset, seed=3)
    ids = torch.randint(0, preset.vocab_size, (4, 16), generator=torch.Generator().manual_seed(11))
    full, targets = _logprob_case()
    calls = [
        ("rank_train_step_equivalence", (str(hf_dir), LAYOUTS, ids, NUM_MICROBATCHES)),
        ("rank_vocab_logprobs", (full, targets, VOCAB_PAD_TRUE, 0.7, 2)),
        ("rank_vocab_logprobs", (full, targets, VOCAB_PAD_TRUE, 0.7, 4)),
    ]
    per_rank = run_distributed(fh.rank_many, world_size=4, args=(calls,), timeout_s=400)
    layouts = []
    for i in range(len(LAYOUTS)):
        loss, grads = None, {}
        for r in per_rank:
            res = r[0][i]
            loss = res["loss"] if res["loss"] is not None else loss
            grads.update(res["grads"])
        layouts.append({"loss": loss, "grads": grads})
    return {"hf_dir": hf_dir, "ids": ids, "preset": preset, "layouts": layouts,
            "logprobs": {2: per_rank[0][1], 4: per_rank[0][2]}, "case": (full, targets)}


@pytest.fixture(scope="module")
def hf_reference(results):
    """Loss and grads from transformers' LlamaForCausalLM with the same weights, batch and loss."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(results["hf_dir"]), dtype=torch.float32)
    model.train()
    ids = results["ids"]
    logits = model(ids[:, :-1]).logits
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    loss = -logp.sum()
    (loss / NUM_MICROBATCHES).backward()  # megatron's schedule divides each micro-batch loss by their count
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {"loss": float(loss.detach()), "grads": grads}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _compare(grads, ref, tol):
    assert set(grads) == set(ref), set(grads) ^ set(ref)
    errs = {k: _rel_err(grads[k], ref[k]) for k in ref}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= tol, f"grad of {worst} differs: relative error {errs[worst]:.3e} > {tol} ({len(errs)} tensors)"
    return errs[worst]


@pytest.mark.slow
def test_tiny_preset_layouts_give_the_same_loss(results, hf_reference):
    losses = [lay["loss"] for lay in results["layouts"]]
    print("summed token loss per layout", dict(zip(LAYOUTS, losses)), "transformers", hf_reference["loss"])
    assert all(loss is not None for loss in losses)
    for (tp, pp, cp), loss in zip(LAYOUTS, losses):
        assert abs(loss - losses[0]) <= 1e-5 * abs(losses[0]), f"tp={tp} pp={pp} cp={cp}: loss {loss} vs tp=1 {losses[0]}"
    assert abs(losses[0] - hf_reference["loss"]) <= 1e-5 * abs(hf_reference["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("idx", range(1, len(LAYOUTS)), ids=LAYOUT_IDS)
def test_tiny_preset_grads_match_tp1(results, idx):
    base = results["layouts"][0]["grads"]
    assert len(base) == len(set(__import__("megatron_tulu.checkpoint.mapping", fromlist=["x"]).all_hf_names(results["preset"])))
    worst = _compare(results["layouts"][idx]["grads"], base, REL_TOL)
    print(f"{LAYOUTS[idx]}: worst relative grad error vs TP=1: {worst:.2e}")


@pytest.mark.slow
def test_tiny_preset_tp1_grads_match_transformers(results, hf_reference):
    worst = _compare(results["layouts"][0]["grads"], hf_reference["grads"], 1e-4)
    print(f"TP=1 vs transformers: worst relative grad error {worst:.2e}")
    assert any(float(g.abs().max()) > 0 for g in hf_reference["grads"].values())


@pytest.mark.slow
@pytest.mark.parametrize("tp", [2, 4])
def test_vocab_parallel_logprobs_with_padding_and_temperature(results, tp):
    full, targets = results["case"]
    got = results["logprobs"][tp]
    z = (full[..., :VOCAB_PAD_TRUE] / 0.7).clone().requires_grad_(True)
    logp_all = torch.log_softmax(z, dim=-1)
    want = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    (want.sum() + 0.5 * ent.sum()).backward()
    assert torch.allclose(got["lp"], want.detach(), atol=1e-5, rtol=1e-5), (got["lp"] - want).abs().max()
    assert torch.allclose(got["ent"], ent.detach(), atol=1e-5, rtol=1e-5), (got["ent"] - ent).abs().max()
    # d/d(raw logits) = d/dz / temperature; padded columns get exactly zero gradient
    want_grad = z.grad / 0.7
    assert torch.allclose(got["grad"][..., :VOCAB_PAD_TRUE], want_grad, atol=1e-6, rtol=1e-5), \
        (got["grad"][..., :VOCAB_PAD_TRUE] - want_grad).abs().max()
    assert torch.count_nonzero(got["grad"][..., VOCAB_PAD_TRUE:]) == 0


def test_vocab_parallel_logprobs_single_rank_matches_log_softmax():
    """No process group (TP=1): padding mask and temperature still apply."""
    from megatron_tulu.models.logprobs import vocab_parallel_logprobs

    full, targets = _logprob_case(seed=1)
    lp, ent = vocab_parallel_logprobs(full, targets, true_vocab_size=VOCAB_PAD_TRUE, temperature=1.3,
                                      with_entropy=True, group=None)
    logp_all = torch.log_softmax(full[..., :VOCAB_PAD_TRUE] / 1.3, dim=-1)
    assert torch.allclose(lp, logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    assert torch.allclose(ent, -(logp_all.exp() * logp_all).sum(-1), atol=1e-5)
