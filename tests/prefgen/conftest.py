import pytest

from prefgen_helpers import make_model, make_tokenizer


@pytest.fixture(scope="session")
def prefgen_models(tmp_path_factory):
    """(tokenizer dir, pool model, policy model) with random weights; the pool model doubles as the judge."""
    root = tmp_path_factory.mktemp("prefgen_models")
    make_tokenizer(root / "tok")
    return root / "tok", make_model(root / "pool", root / "tok", 0), make_model(root / "policy", root / "tok", 1)
