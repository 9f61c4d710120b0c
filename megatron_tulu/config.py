"""Typed configs: dataclasses that Hydra fills from ``configs/<stage>/<size>.yaml`` plus CLI overrides.

Each stage defines its own top-level dataclass (e.g. ``SFTConfig`` in ``megatron_tulu.trainers``) built from the
shared pieces below; :func:`load_config` composes the YAML, applies ``key=value`` overrides and validates the
result against the dataclass (unknown keys and wrong types fail with the field named), then calls the config's
``validate()`` (choices and cross-field rules, e.g. engine count vs placement), so a bad value fails when the config
loads, before any process, model or data exists (``python -m launch.<stage> ... --validate-only`` does only that).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

T = TypeVar("T")


def load_config(schema: type[T], name: str, overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> T:
    """Compose ``configs/<name>.yaml`` (Hydra defaults lists work) with ``overrides`` into ``schema``.

    Args:
        schema: the stage's dataclass type.
        name: config name relative to ``configs/`` without ``.yaml``, e.g. ``"sft/tiny"``.
        overrides: Hydra-style overrides, e.g. ``["optim.lr=1e-5", "model=llama3.1-8b"]``; ``model=NAME`` is
            short for ``model.preset=NAME``.
    Raises:
        ValueError naming the config file or field when the YAML or an override does not fit the schema.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cdir = Path(config_dir or CONFIG_DIR).resolve()
    if not (cdir / f"{name}.yaml").exists():
        known = sorted(str(p.relative_to(cdir))[:-5] for p in cdir.rglob("*.yaml"))
        raise ValueError(f"config {name!r} not found under {cdir} (known: {', '.join(known)})")
    try:
        with initialize_config_dir(config_dir=str(cdir), version_base=None):
            cfg = compose(config_name=name)
        # Hydra packages the file under its group path (sft/tiny -> cfg.sft); unwrap to the node itself.
        node = cfg
        for part in name.split("/")[:-1]:
            if part in node and len(node) == 1:
                node = node[part]
        structured = OmegaConf.structured(schema)
        merged = OmegaConf.merge(structured, node)
        # Overrides apply to the typed config (so any schema field can be set, not only those in the YAML);
        # unknown keys and wrong types raise naming the key.
        for ov in overrides:
            if "=" not in ov:
                raise ValueError(f"override {ov!r} is not key=value")
            key, value = ov.split("=", 1)
            if key.lstrip("+") == "model" and value and "{" not in value:  # `model=llama3.1-8b`: choose the preset
                key = "model.preset"
            merged = OmegaConf.merge(merged, _dotlist(ov, key.lstrip("+"), value))
        cfg = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, HydraException) as e:
        raise ValueError(f"config {name!r} ({cdir / (name + '.yaml')}): {e}") from e
    validate = getattr(cfg, "validate", None)
    if validate is not None:  # choices and cross-field rules, before any process, model or data exists
        try:
            validate()
        except ValueError as e:
            raise ValueError(f"config {name!r}: {e}") from e
    return cfg


def _dotlist(override: str, key: str, value: str):
    """One override as a config patch; a value that is not YAML raises ``ValueError`` naming the override (a bare
    ``${...}`` inside a flow mapping is the usual case: ``{path: ${runs_root}/x}`` needs quotes)."""
    import yaml

    try:
        return OmegaConf.from_dotlist([f"{key}={value}"])
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"override {override!r}: the value is not valid YAML ({problem}); quote strings that hold "
                         "${...} inside [...] or {...}, e.g. '[{path: \"${runs_root}/x.jsonl\"}]'") from e


def check_choice(field: str, value: Any, choices: Sequence) -> None:
    """Raise ``ValueError`` naming ``field``, its value and the choices unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{field} must be one of {'|'.join(str(c) for c in choices)}, got {value!r}")


def check_at_least(field: str, value: int | float, lowest: int | float) -> None:
    """Raise ``ValueError`` naming ``field`` and its value unless ``value >= lowest``."""
    if value < lowest:
        raise ValueError(f"{field} must be >= {lowest}, got {value}")


def to_dict(cfg: Any) -> dict:
    """Plain dict of a config dataclass (for logging and checkpoint metadata)."""
    return dataclasses.asdict(cfg)
