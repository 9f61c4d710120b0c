"""TorchEngine against transformers: greedy tokens/logprobs, sampling conventions, seeds, stops, weight updates."""

import pytest
import torch

from megatron_tulu.rollout.base import SamplingConfig
from megatron_tulu.rollout.torch_engine import TorchEngine
from megatron_tulu.rollout.weight_sync import WeightSyncMismatch, check_probe_logprobs
from tiny_llama import hf_greedy, hf_logprobs, load_reference, make_tiny_llama, perturbed_state, prompts_for_test

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def test_greedy_equals_transformers_generate(model_dir):
    ref, eng = load_reference(model_dir), TorchEngine(model_dir)
    prompts = prompts_for_test(4)
    want = hf_greedy(ref, prompts, 12)
    gens = eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=12))
    assert [g.prompt_index for g in gens] == [0, 1, 2, 3]
    assert [g.token_ids[0] for g in gens] == want
    assert all(g.finish_reasons == ["length"] for g in gens)
    ref_lp = hf_logprobs(ref, prompts, want)
    for g, r in zip(gens, ref_lp):
        assert torch.allclose(torch.tensor(g.logprobs[0]), torch.tensor(r), atol=1e-5)


def test_sampled_logprobs_are_at_the_temperature_and_seeded(model_dir):
    ref, eng = load_reference(model_dir), TorchEngine(model_dir)
    prompts = prompts_for_test(3, seed=5)
    s = SamplingConfig(temperature=0.7, max_new_tokens=10, n=3, seed=11)
    a, b = eng.generate(prompts, s), eng.generate(prompts, s)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    other = eng.generate(prompts, SamplingConfig(temperature=0.7, max_new_tokens=10, n=3, seed=12))
    assert [g.token_ids for g in a] != [g.token_ids for g in other]
    assert len({tuple(t) for t in a[0].token_ids}) > 1  # the n samples differ
    for i, g in enumerate(a):
        for toks, lps in zip(g.token_ids, g.logprobs):
            ids = torch.tensor([prompts[i] + toks])
            with torch.no_grad():
                logits = ref(input_ids=ids).logits[0, len(prompts[i]) - 1 : -1]
            want = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(toks)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(lps), want, atol=1e-5)


def test_top_p_keeps_only_the_nucleus(model_dir):
    eng = TorchEngine(model_dir)
    # top_p tiny: only the argmax survives, so sampling equals greedy and every logprob is 0
    greedy = eng.generate(prompts_for_test(2), SamplingConfig(temperature=0.0, max_new_tokens=6))
    nucleus = eng.generate(prompts_for_test(2), SamplingConfig(temperature=1.0, top_p=1e-6, max_new_tokens=6, seed=0))
    assert [g.token_ids for g in nucleus] == [g.token_ids for g in greedy]
    assert all(abs(x) < 1e-6 for g in nucleus for x in g.logprobs[0])


def test_stop_tokens_end_samples(model_dir):
    eng = TorchEngine(model_dir)
    prompts = prompts_for_test(2)
    full = eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=10))
    stop = full[0].token_ids[0][3]
    first = full[0].token_ids[0].index(stop)
    gens = eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=10, stop_token_ids=[stop]))
    assert gens[0].token_ids[0] == full[0].token_ids[0][: first + 1]
    assert gens[0].finish_reasons == ["stop"]
    assert len(gens[0].logprobs[0]) == first + 1


def test_update_weights_changes_outputs_like_transformers(model_dir):
    ref, eng = load_reference(model_dir), TorchEngine(model_dir)
    prompts = prompts_for_test(4)
    before = [g.token_ids[0] for g in eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=12))]
    items = perturbed_state(ref, scale=0.05, seed=3)
    want = hf_greedy(ref, prompts, 12)
    assert want != before  # the perturbation is large enough to matter
    eng.update_weights(items)
    gens = eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=12))
    assert [g.token_ids[0] for g in gens] == want
    # the post-sync probe check passes against the new reference and fails against the old one
    assert check_probe_logprobs(eng, lambda p, r: hf_logprobs(ref, p, r), prompts[:2], atol=1e-4) < 1e-4
    old = load_reference(model_dir)
    with pytest.raises(WeightSyncMismatch, match="differ by"):
        check_probe_logprobs(eng, lambda p, r: hf_logprobs(old, p, r), prompts[:2], atol=1e-4)


def test_update_weights_rejects_bad_entries_before_loading(model_dir):
    eng = TorchEngine(model_dir)
    prompts = prompts_for_test(2)
    before = [g.token_ids for g in eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=8))]
    good = ("model.norm.weight", torch.zeros(64))
    with pytest.raises(ValueError, match="unknown parameter name 'model.nope.weight'"):
        eng.update_weights([good, ("model.nope.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match="model.norm.weight.*shape"):
        eng.update_weights([("model.embed_tokens.weight", torch.zeros(300, 64)), ("model.norm.weight", torch.zeros(65))])
    after = [g.token_ids for g in eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=8))]
    assert after == before  # nothing was loaded


def test_bad_inputs_name_the_field(model_dir):
    eng = TorchEngine(model_dir)
    with pytest.raises(ValueError, match="top_p"):
        eng.generate([[5, 6]], SamplingConfig(top_p=0.0))
    with pytest.raises(ValueError, match=r"prompt_token_ids\[1\] is empty"):
        eng.generate([[5], []], SamplingConfig())
    with pytest.raises(ValueError, match=r"prompt_token_ids\[0\] has ids outside"):
        eng.generate([[5, 999]], SamplingConfig())


def test_make_engine_is_the_one_factory(model_dir):
    """``rollout.make_engine`` starts every engine: kind checked, ``auto`` resolved once, local vs Ray placement."""
    from megatron_tulu.rollout import make_engine
    from megatron_tulu.rollout.factory import resolve_engine_kind, vllm_available
    from megatron_tulu.rollout.torch_engine import TorchEngine

    engine = make_engine("torch", model_dir)
    assert isinstance(engine, TorchEngine)
    engine.shutdown()
    assert resolve_engine_kind("auto") == ("vllm" if vllm_available() else "torch")
    with pytest.raises(ValueError, match="engine kind must be auto\\|vllm\\|torch, got 'sglang'"):
        make_engine("sglang", model_dir)
    with pytest.raises(ValueError, match="num_engines=2: more than one engine needs placement=ray"):
        make_engine("torch", model_dir, num_engines=2)
    with pytest.raises(ValueError, match="placement must be local\\|ray"):
        make_engine("torch", model_dir, placement="slurm")
