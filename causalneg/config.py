"""Config helpers: OmegaConf resolvers, start-up checks, and small conversions shared by the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from causalneg.errors import ConfigError
from causalneg.precision import (
    AUTO,
    Kind,
    encode_device_type,
    native_bf16_cpu,
    resolve_precision,
    trainer_device_type,
)


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


# (config path, kind, device) of every precision key a stage reads.
PRECISION_KEYS: tuple[tuple[str, Kind], ...] = (
    ("trainer.precision", "trainer"),
    ("eval.precision", "encode"),
    ("mining.dense.precision", "encode"),
)


def resolve_precisions(cfg: DictConfig) -> dict[str, str]:
    """Rewrite every ``auto`` precision of ``cfg`` in place (:mod:`causalneg.precision`: bf16 only where native);
    returns ``{key: resolved}`` for the keys that were ``auto``. Run once per stage, before anything reads them, so
    the logged parameters and every artifact fingerprint hold the resolved precision."""
    resolved: dict[str, str] = {}
    for key, kind in PRECISION_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value != AUTO:
            continue
        accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu") or "cpu")
        device = trainer_device_type(accelerator) if kind == "trainer" else encode_device_type()
        resolved[key] = resolve_precision(AUTO, device, kind)
        with open_dict(cfg):
            OmegaConf.update(cfg, key, resolved[key], merge=False)
    if resolved:
        native = "native bf16" if native_bf16_cpu() else "no native bf16 (no AMX/AVX512-BF16)"
        chosen = ", ".join(f"{k}={v}" for k, v in resolved.items())
        print(
            f"[causalneg] precision auto (CPU: {native}; CUDA: {encode_device_type() == 'cuda'}): {chosen}",
            flush=True,
        )
    return resolved
