"""Config helpers: OmegaConf resolvers, start-up checks, and small conversions shared by the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from causalneg.errors import ConfigError


def register_resolvers() -> None:
    """``${abspath:p}`` resolves a path against the current directory (idempotent)."""
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: str(Path(str(p)).expanduser().resolve()))


register_resolvers()


def check_required(cfg: DictConfig) -> None:
    """Fail before any work when a required (``???``) value is missing, naming every missing key."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(
            f"missing required config value(s): {keys} (set them on the command line, e.g. {missing[0]}=...)"
        )


def to_container(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (dicts/lists), or the value itself."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def plain_dict(node: Any) -> dict[str, Any]:
    """A resolved ``dict[str, Any]`` copy of a DictConfig or mapping (``{}`` for None): the one conversion from
    config to plain values that the stages hand to library code."""
    if node is None:
        return {}
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    if not isinstance(container, dict):
        raise ConfigError(f"expected a mapping, got {type(container).__name__}")
    return {str(k): v for k, v in container.items()}


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
