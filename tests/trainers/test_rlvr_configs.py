"""The RLVR configs compose into ``RLVRConfig`` with the Tülu 3 hyper-parameters, and their layouts are valid:
the trainer GPUs split into TP x PP x DP with the layers divisible by PP and the prompt batch by micro x DP."""

from __future__ import annotations

import pytest

from megatron_tulu.config import load_config
from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import get_preset
from megatron_tulu.trainers.rlvr import RLVRConfig

# size: (trainer GPUs, lr, KL beta, response length, engine TP, warm-up) from open-instruct docs/tulu3.md,
# and the number of engines of the shipped layout (405B: two TP=16 engines fill the 32 nodes; 8B: 8 engines + 8
# trainer GPUs, since Tülu 3's 7 trainer GPUs relied on ZeRO-3 weight sharding)
TULU3 = {
    "8b": (8, 3e-7, 0.05, 2048, 1, 0.0, 8),
    "70b": (40, 1e-7, 0.07, 2048, 4, 0.1, 1),
    "405b": (224, 1e-7, 0.05, 1024, 16, 0.0, 2),
}


@pytest.mark.parametrize("size", sorted(TULU3))
def test_rlvr_config_hyperparameters_and_layout(size):
    gpus, lr, beta, resp, etp, warm, engines = TULU3[size]
    cfg = load_config(RLVRConfig, f"rlvr/{size}", [])
    o = cfg.rlvr
    assert cfg.optim.lr == lr and o.kl_coef == beta and o.max_new_tokens == resp and cfg.optim.warmup_ratio == warm
    assert (o.algorithm, o.alpha, o.non_eos_penalty, o.temperature) == ("ppo", 10.0, -10.0, 1.0)
    assert (o.gamma, o.lam, o.part("clip_low"), o.part("clip_high"), o.ppo_epochs, o.samples_per_prompt) == (
        1.0, 0.95, 0.2, 0.2, 4, 1)
    assert (o.vf_coef, o.is_correction, o.part("loss_agg")) == (0.1, "none", "token_mean")
    assert o.engine == "vllm" and o.engine_tp == etp and o.num_engines == engines
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    assert gpus % (tp * pp) == 0, f"{gpus} trainer GPUs do not split into TP={tp} x PP={pp}"
    dp = gpus // (tp * pp)
    assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * dp) == 0
    preset = get_preset(cfg.model.preset)
    assert preset.num_layers % pp == 0 and preset.num_attention_heads % tp == 0
    # 8 GPUs per node: the engine and the trainer fit the node count the header states
    assert (gpus + etp * o.num_engines) <= {"8b": 16, "70b": 48, "405b": 256}[size]
    assert o.engine_placement == "ray"  # engines on GPUs of their own (one in rank 0's process would not fit)
    # Tülu 3's value model: policy-sized at 8B, an 8B one beside the 70B and 405B policies, on the policy's ranks
    value = get_preset(o.value_model or cfg.model.preset)
    assert value.name == "llama3.1-8b"
    assert sum(PipelineSplit(pp=pp).fit(value.num_layers).rank_layer_counts(value.num_layers)) == value.num_layers


def test_rlvr_driver_rejects_bad_engine_layouts(tmp_path):
    from megatron_tulu.trainers.rlvr.loop import RLVRDriver

    for overrides, match in ((["rlvr.num_engines=2"], "more than one engine needs rlvr.engine_placement=ray"),
                             (["rlvr.engine_placement=slurm"], "engine_placement must be one of local|ray"),
                             (["rlvr.async_steps=-1"], "async_steps must be >= 0")):
        with pytest.raises(ValueError, match=match):  # when the config loads ...
            load_config(RLVRConfig, "rlvr/tiny", [f"run_dir={tmp_path}", *overrides])
        cfg = load_config(RLVRConfig, "rlvr/tiny", [f"run_dir={tmp_path}"])
        key, value = overrides[0].split("=")
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, type(getattr(getattr(cfg, section), name))(value))
        with pytest.raises(ValueError, match=match):  # ... and when a config built in code reaches the driver
            RLVRDriver(cfg)


def test_value_model_shape_errors_name_the_fields():
    from megatron_tulu.trainers.rlvr import RLVROptions
    from megatron_tulu.trainers.rlvr.value import value_model_shape

    cfg = load_config(RLVRConfig, "rlvr/8b", [])
    policy = get_preset("llama3.1-8b")
    reader, shape = value_model_shape(RLVROptions(value_model="llama3.1-8b"), cfg.model, policy)
    assert reader is None and shape == policy
    assert value_model_shape(RLVROptions(), cfg.model, policy)[1] == policy  # default: the policy's shape
    with pytest.raises(ValueError, match="rlvr.value_model='tiny': vocab_size 512 != the policy's 128256"):
        value_model_shape(RLVROptions(value_model="tiny"), cfg.model, policy)
    with pytest.raises(ValueError, match="unknown model preset 'llama3.1-9b'"):
        value_model_shape(RLVROptions(value_model="llama3.1-9b"), cfg.model, policy)
    with pytest.raises(FileNotFoundError, match="rlvr.value_init_hf=/nonexistent: no config.json"):
        value_model_shape(RLVROptions(value_init_hf="/nonexistent"), cfg.model, policy)


def test_rewards_section_is_typed_and_checked():
    """RLVR reads how rewards are scored from its typed `rewards` section (the score CLI's flags, as config)."""
    from megatron_tulu.config import load_config

    cfg = load_config(RLVRConfig, "rlvr/tiny", ["rewards.ifeval_partial_credit=true", "rewards.paper_compat=true"])
    assert cfg.rewards.ifeval_partial_credit and cfg.rewards.paper_compat and cfg.rewards.timeout_s > 0
    with pytest.raises(ValueError, match="rewards.timeout_s"):
        load_config(RLVRConfig, "rlvr/tiny", ["rewards.timeout_s=0"])


def test_a_reference_model_is_needed_only_when_a_kl_term_can_matter():
    from megatron_tulu.config import load_config

    def needs(*ov):
        return load_config(RLVRConfig, "rlvr/tiny", list(ov)).rlvr.needs_reference

    assert needs() and needs("rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2")
    assert not needs("rlvr.kl_coef=0")
    assert not needs("rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2")  # DAPO has no KL term


# recipe: (algorithm, lr, prompts per step, group size, minibatches, KL beta, clip low/high, loss agg, dynamic
# sampling, overlong buffer) -- DAPO §3-4 (response length scaled to 2048), Tülu 3.1 8B GRPO (open-instruct)
RECIPES = {
    "8b_dapo": ("dapo", 1e-6, 512, 16, 16, 0.0, 0.2, 0.28, "token_mean", True, 410),
    "8b_grpo": ("grpo", 5e-7, 64, 16, 2, 0.01, 0.2, 0.2, "token_mean", False, 0),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_rlvr_recipe_configs_carry_their_papers_values_and_plan(name):
    from megatron_tulu.plan import jobs

    alg, lr, prompts, k, mbs, beta, lo, hi, agg, ds, buf = RECIPES[name]
    cfg = load_config(RLVRConfig, f"rlvr/{name}", [])
    o = cfg.rlvr
    assert (o.algorithm, cfg.optim.lr, cfg.train.global_batch_size, o.samples_per_prompt, o.num_minibatches) == (
        alg, lr, prompts, k, mbs)
    assert (o.kl_coef, o.part("clip_low"), o.part("clip_high"), o.part("loss_agg")) == (beta, lo, hi, agg)
    assert (o.part("dynamic_sampling"), o.overlong_buffer, o.max_new_tokens) == (ds, buf, 2048)
    assert cfg.optim.min_lr_ratio == 1.0 and o.value_init_hf == "" and o.needs_reference == (beta > 0)
    # the 8B layout and allocation of rlvr/8b (so slurm/rlvr_8b.sh --config rlvr/<name> runs it)
    base = load_config(RLVRConfig, "rlvr/8b", [])
    assert (cfg.parallel, cfg.cluster, o.num_engines, o.engine_tp) == (base.parallel, base.cluster, 8, 1)
    assert cfg.run_dir != base.run_dir
    work = jobs.workload(cfg, "rlvr")  # the planner's memory shape: no value model; a reference only with a KL
    assert work["algorithm"] == "grpo" and work["reference_model"] == (beta > 0)
    assert jobs.build_plan(cfg, "rlvr", f"rlvr/{name}")["feasible"]
