import pytest


@pytest.fixture(scope="session")
def syn_dir(tmp_path_factory):
    """The CI-scale synthetic suite, generated once per test session."""
    from megatron_tulu.data.synthetic import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, seed=0, scale="ci")
    return out


@pytest.fixture(scope="session")
def syn_tok(syn_dir):
    from megatron_tulu.data.tokenizer import load_tokenizer

    return load_tokenizer(syn_dir / "tokenizer")
