"""Llama 3.1 presets -> megatron-core ``GPTModel``. The one seam to megatron-core's model code.

The layer spec is chosen explicitly (``impl``): ``"te"`` (Transformer Engine layers, FP8-capable; needs TE),
``"local"`` (pure-torch megatron-core modules) or ``"auto"`` (TE when it imports, else local). The choice
is logged. Sequence parallelism works with both (the local spec through this module's :class:`RMSNorm`).
A rank builds one model chunk per virtual pipeline stage (``vp_stage``); ``models.pipeline_split`` says
which layers each chunk holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from megatron_tulu import platform
from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import LlamaPreset

log = logging.getLogger(__name__)


@dataclass
class ModelOptions:
    """Runtime choices for building a model (shape comes from the preset)."""

    impl: str = "auto"
    """Layer spec: ``auto`` (TE if installed), ``te`` (Transformer Engine, required), ``local`` (pure torch)."""
    dtype: str = "auto"
    """Parameter/compute dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16``, ``fp32``."""
    fp8: str | None = None
    """FP8 format via TE (``hybrid`` or ``e4m3``), with per-tensor current scaling (:func:`fp8_config_kwargs`);
    GPU + TE only, refused elsewhere with a clear message."""
    recompute: str | None = None
    """Activation recompute: None, ``selective`` (attention core) or ``full`` (whole layers)."""
    recompute_layers: int = 0
    """With ``full``: recompute the first N layers of each pipeline chunk only (``block``); 0 = all (``uniform``)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (TP > 1; TE spec, or the local spec with :class:`RMSNorm`)."""
    dropout: float = 0.0
    """Attention and hidden dropout (Tülu 3: 0)."""
    init_std: float = 0.02
    """Std of the normal init for freshly initialised weights."""
    document_masks: bool = False
    """The model is fed dense block-causal masks (packed SFT rows under context parallelism); rules out the TE spec,
    see :func:`resolve_impl`."""
    head: str = "lm"
    """Output head of the last stage (``models.llama.HEADS``): ``lm`` logits, ``hidden`` states for the fused
    logprob kernel (``model.use_fused_logprob``), or ``scalar`` (value / reward model)."""


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def resolve_impl(impl: str, document_masks: bool = False) -> str:
    """The layer spec ``impl`` resolves to. With ``document_masks`` (dense block-causal masks: packed SFT rows under
    context parallelism, which has no THD path here) it is the local spec: megatron hands a dense mask to TE's
    attention with the ``causal`` mask type, for which TE ignores it, so packed documents would silently attend to
    each other. Packed rows without CP go as THD (``models.packed``), which TE honours."""
    if impl == "auto":
        te = have_transformer_engine() and platform.has_gpu()
        if te and document_masks:
            log.warning("model.impl=auto: packed rows under context parallelism need dense document masks, which "
                        "the TE layer spec ignores; using the local spec (no FP8, unfused attention)")
        return "te" if te and not document_masks else "local"
    if impl == "te" and document_masks:
        raise ValueError("model.impl='te' with train.packing=true and parallel.cp > 1: packed rows under context "
                         "parallelism use a dense block-causal mask, which TE attention ignores (documents would "
                         "attend to each other); set model.impl=local (or auto), parallel.cp=1 or train.packing=false")
    if impl == "te" and not have_transformer_engine():
        raise RuntimeError("model.impl='te' asks for Transformer Engine, but `import transformer_engine` fails here")
    if impl not in ("te", "local"):
        raise ValueError(f"model.impl must be auto|te|local, got {impl!r}")
    return impl


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if platform.has_gpu() else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"model.dtype must be auto|bf16|fp32, got {dtype!r}")
    return table[dtype]


def check_divisibility(preset: LlamaPreset, tp: int, pp: PipelineSplit | int) -> None:
    """Raise ValueError naming the field when TP or the pipeline split do not divide the model's shapes."""
    checks = [
        ("num_attention_heads", preset.num_attention_heads, tp, "tp"),
        ("num_query_groups", preset.num_query_groups, tp, "tp"),
        ("ffn_hidden_size", preset.ffn_hidden_size, tp, "tp"),
    ]
    for field, value, size, name in checks:
        if value % size:
            raise ValueError(f"{name}={size} does not divide model.{field}={value} (preset {preset.name!r})")
    PipelineSplit.of(pp).validate(preset.num_layers, preset.name)


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """Vocab rows after padding so every TP rank holds the same number (removed again on export).

    Padding to ``multiple * tp`` (megatron's ``make_vocab_size_divisible_by``) keeps GEMMs aligned on GPU.
    Padded rows are masked out of every softmax (see ``models.logprobs``), so they never change results.
    """
    step = multiple * tp
    return ((vocab_size + step - 1) // step) * step


FP8_FORMATS = ("hybrid", "e4m3")


def fp8_config_kwargs(fp8: str | None) -> dict:
    """TransformerConfig fields for ``model.fp8`` (the format: ``hybrid`` = E4M3 forward / E5M2 gradients, or
    ``e4m3``); empty without FP8.

    The recipe is per-tensor current scaling (``fp8_recipe="tensorwise"``, TE's ``Float8CurrentScaling``): each
    tensor is scaled by its own amax when it is cast, so no amax history has to warm up, which matters for
    fine-tuning from a checkpoint and for RL, whose activations shift as the policy moves; Megatron-Bridge's
    Llama 3 8B H100 FP8 config defaults to it. megatron-core 0.16.1's own defaults would be delayed scaling with an
    amax history of 1 and ``most_recent`` (the previous step's amax alone); the established delayed setting, in
    Megatron-LM's Llama 3 H100 FP8 example, is a history of 1024 with ``max``. megatron-core 0.16.1 builds the
    tensorwise recipe only with TE >= 2.2 (``fp8_utils.get_fp8_recipe``; with an older TE it raises a ValueError
    asking for a compatible TE rather than falling back); the NGC PyTorch images in the Dockerfile (25.12, or
    26.01) are from well after TE 2.2 (spring 2025).
    """
    if fp8 is None:
        return {}
    if fp8 not in FP8_FORMATS:
        raise ValueError(f"model.fp8 must be one of {'|'.join(FP8_FORMATS)} (or unset), got {fp8!r}")
    return dict(fp8=fp8, fp8_recipe="tensorwise")


def transformer_config(preset: LlamaPreset, tp: int, pp: PipelineSplit | int, opts: ModelOptions, cp: int = 1,
                       impl: str | None = None):
    """megatron-core TransformerConfig for a Llama 3.1 preset (``pp``: a plain size or a :class:`PipelineSplit`;
    ``cp``: context-parallel size, see ``models.context_parallel``; ``impl``: the spec :func:`resolve_impl` already
    chose, else it is resolved from ``opts`` here)."""
    platform.quiet_megatron_import()
    from megatron.core.transformer.transformer_config import TransformerConfig

    impl = impl or resolve_impl(opts.impl, opts.document_masks)
    dtype = resolve_dtype(opts.dtype)
    if opts.fp8 and (impl != "te" or not platform.has_gpu()):
        raise ValueError(
            f"model.fp8={opts.fp8!r} needs Transformer Engine on a GPU (impl resolved to {impl!r}, "
            f"gpu={platform.has_gpu()}); unset model.fp8 on this machine"
        )
    if opts.sequence_parallel and tp == 1:
        raise ValueError("model.sequence_parallel needs tp > 1 (it shards activations over the TP group)")
    check_divisibility(preset, tp, pp)
    split = PipelineSplit.of(pp)
    recompute = {}
    if opts.recompute_layers and opts.recompute != "full":
        raise ValueError(f"model.recompute_layers={opts.recompute_layers} needs model.recompute=full")
    if opts.recompute == "full" and opts.recompute_layers:  # megatron clamps N to the chunk's layer count
        recompute = dict(recompute_granularity="full", recompute_method="block",
                         recompute_num_layers=opts.recompute_layers)
    elif opts.recompute == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif opts.recompute == "selective":
        recompute = dict(recompute_granularity="selective")
    elif opts.recompute not in (None, "none"):
        raise ValueError(f"model.recompute must be none|selective|full, got {opts.recompute!r}")
    return TransformerConfig(
        num_layers=preset.num_layers,
        hidden_size=preset.hidden_size,
        ffn_hidden_size=preset.ffn_hidden_size,
        num_attention_heads=preset.num_attention_heads,
        num_query_groups=preset.num_query_groups,
        kv_channels=preset.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=preset.norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        attention_dropout=opts.dropout,
        hidden_dropout=opts.dropout,
        init_method_std=opts.init_std,
        tensor_model_parallel_size=tp,
        context_parallel_size=cp,
        pipeline_model_parallel_size=split.pp,
        virtual_pipeline_model_parallel_size=split.vpp if split.vpp > 1 else None,
        account_for_embedding_in_pipeline_split=split.account_embedding_loss,
        account_for_loss_in_pipeline_split=split.account_embedding_loss,
        num_layers_in_first_pipeline_stage=split.first_layers,
        num_layers_in_last_pipeline_stage=split.last_layers,
        sequence_parallel=opts.sequence_parallel,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        **fp8_config_kwargs(opts.fp8),
        cuda_graph_scope=[],
        attention_softmax_in_fp32=True,
        use_cpu_initialization=not platform.has_gpu(),
        **recompute,
    )


class RMSNorm(torch.nn.RMSNorm):
    """The local spec's RMSNorm: torch's (what megatron's ``WrappedTorchNorm`` builds, same numerics and parameter
    name) with megatron's norm constructor, plus sequence parallelism, which ``WrappedTorchNorm`` refuses: under
    SP each TP rank normalises its own sequence shard, so the weight is marked ``sequence_parallel`` and
    megatron's grad finalisation all-reduces its gradient over the TP group."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__(hidden_size, eps=eps, device="cpu" if config.use_cpu_initialization else None,
                         dtype=config.params_dtype)
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))


def layer_spec(impl: str, config, vp_stage: int | None = None):
    """TE spec (Transformer Engine's attention does THD packed rows and context parallelism itself), or the local
    (pure torch) block spec with :class:`RMSNorm` for the layers' and the final norm and
    ``models.local_attention.LocalAttention`` (``config`` and ``vp_stage`` give this model chunk's layer count)."""
    platform.quiet_megatron_import()
    from megatron.core.models.gpt import gpt_layer_specs as specs

    impl = resolve_impl(impl)
    if impl == "te":
        return specs.get_gpt_layer_with_transformer_engine_spec()
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    layer = specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    layer.submodules.input_layernorm = RMSNorm
    layer.submodules.pre_mlp_layernorm = RMSNorm
    from megatron_tulu.models.local_attention import LocalAttention

    layer.submodules.self_attention.submodules.core_attention = LocalAttention  # + THD packed rows and CP
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=RMSNorm)


def build_model(
    preset: LlamaPreset,
    tp: int = 1,
    pp: PipelineSplit | int = 1,
    opts: ModelOptions | None = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
):
    """Build this rank's part of a Llama 3.1 ``GPTModel``: one model chunk (``vp_stage`` with virtual stages).

    Needs ``megatron_tulu.parallel.init_distributed`` first (megatron reads TP/PP/CP ranks from its global
    state; the context-parallel size is its CP group's). ``pre_process``/``post_process`` default to "this chunk
    holds the embedding / the head". Under context parallelism the chunk still takes full-length inputs
    (``models.llama.LlamaGPTModel``, whose head is ``opts.head``).
    """
    opts = opts or ModelOptions()
    from megatron.core import parallel_state as ps

    from megatron_tulu.models.context_parallel import cp_size
    from megatron_tulu.models.llama import LlamaGPTModel

    impl = resolve_impl(opts.impl, opts.document_masks)  # once: it may log why packed rows skip TE
    config = transformer_config(preset, tp, pp, opts, cp=cp_size(), impl=impl)
    split = PipelineSplit.of(pp)
    if (vp_stage is not None) != (split.vpp > 1):
        raise ValueError(f"build_model: vp_stage={vp_stage} with vpp={split.vpp} (one chunk per virtual stage)")
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    log.info("building %s with the %s layer spec (tp=%d %s cp=%d vp_stage=%s dtype=%s)", preset.name, impl, tp, split,
             config.context_parallel_size, vp_stage, config.params_dtype)
    model = LlamaGPTModel(
        head=opts.head,
        true_vocab_size=preset.vocab_size,  # padded rows are masked by models.logprobs
        config=config,
        transformer_layer_spec=layer_spec(impl, config, vp_stage),
        vocab_size=padded_vocab_size(preset.vocab_size, tp),
        max_sequence_length=preset.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=preset.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(preset.rope_theta),
        rope_scaling=preset.rope_scaling,
        rope_scaling_factor=preset.rope_scaling_factor,
        parallel_output=True,
        vp_stage=vp_stage,
    )
    if platform.has_gpu():
        model.cuda(torch.cuda.current_device())
    return model


def unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def model_chunks(model) -> list:
    """The unwrapped GPTModel chunks of ``model`` (one module, or the list of a rank's virtual-stage chunks)."""
    return [unwrap(m) for m in (model if isinstance(model, (list, tuple)) else [model])]
