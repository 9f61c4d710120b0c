"""VLLMEngine at TP=1 (fp32, real vLLM): equality with transformers, weight sync, validation, timeouts."""

import pytest

from megatron_tulu.testing import require_vllm

require_vllm(module_level=True)

from tiny_llama import load_reference, make_tiny_llama
from vllm_cases import *  # noqa: F401,F403  (the shared test bodies)

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]  # slow: a real vLLM engine starts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama_tp1"))


@pytest.fixture(scope="module")
def ref(model_dir):
    return load_reference(model_dir)


@pytest.fixture(scope="module")
def engine(model_dir):
    from megatron_tulu.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(model_dir, tensor_parallel_size=1, dtype="float32", kv_cache_memory_bytes=256 * 2**20, seed=0)
    yield eng
    eng.shutdown()
