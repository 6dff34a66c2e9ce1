"""Prompt rendering: Jinja templates in ``prompts/`` plus per-dataset profiles (``prompts/profiles.yaml``).

Each call renders two chat messages: ``system.jinja`` (the profile: collection, relevance definition, writing
style) and one user template per call kind (``decompose``, ``perturb``, ``naive``). The *template version*
is a hash of every file in ``prompts/``: it is part of each request's cache key, so editing a template
invalidates exactly the requests whose prompts it shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from causalneg.artifacts import fingerprint
from causalneg.errors import ConfigError
from causalneg.generation.backends.base import ChatMessages
from causalneg.generation.schemas import MAX_NODES, MIN_NODES, Decomposition, FacetType, StrategyType

PROMPTS_DIR = Path(__file__).parent / "prompts"
KINDS = ("decompose", "perturb", "naive")


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(PROMPTS_DIR)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )


GROUNDED_PREFIX = "grounded_"  # the grounded-edit method's templates (causalneg.generation.grounded)


@lru_cache(maxsize=2)
def template_version(family: str = "official") -> str:
    """Hash of a method family's prompt files plus the profiles, 16 hex characters.

    ``official``: every template but ``grounded_*`` (the CausalNeg and naive prompts); ``grounded``: the
    ``grounded_*`` templates. Editing one family's templates leaves the other family's request keys unchanged.
    """
    if family not in ("official", "grounded"):
        raise ValueError(f"unknown template family {family!r}")
    files = sorted(
        p
        for p in PROMPTS_DIR.iterdir()
        if p.is_file()
        and (
            p.suffix == ".yaml"
            or (p.suffix == ".jinja" and p.name.startswith(GROUNDED_PREFIX) == (family == "grounded"))
        )
    )
    return fingerprint({p.name: p.read_text(encoding="utf-8") for p in files})[:16]


def render_template(name: str, **context: Any) -> str:
    """Render ``prompts/<name>.jinja`` with ``context`` (strict: an undefined variable is an error)."""
    return _environment().get_template(f"{name}.jinja").render(**context).strip()


@lru_cache(maxsize=1)
def load_profiles() -> dict[str, dict[str, Any]]:
    profiles = yaml.safe_load((PROMPTS_DIR / "profiles.yaml").read_text(encoding="utf-8"))
    if not isinstance(profiles, dict) or "generic" not in profiles:
        raise ConfigError(
            f"{PROMPTS_DIR / 'profiles.yaml'} must map profile names to profiles and define 'generic'"
        )
    return profiles


def resolve_profile(name: str | None, dataset_name: str) -> str:
    """``auto``/None: the profile whose aliases contain ``dataset_name`` (case-insensitive), else ``generic``."""
    profiles = load_profiles()
    if name and name != "auto":
        if name not in profiles:
            raise ConfigError(f"generation.profile={name!r} is not one of {sorted(profiles)} (or 'auto')")
        return name
    lowered = dataset_name.lower()
    for key, profile in profiles.items():
        if lowered == key or lowered in [str(a).lower() for a in profile.get("aliases", [])]:
            return key
    return "generic"


def clip(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters at a word boundary, marking the cut with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " ..."


@dataclass(frozen=True)
class PromptInputs:
    """Everything a prompt shows about one (query, positive) pair. Passages are already clipped."""

    query_id: str
    query: str
    positive_id: str
    positive: str
    candidates: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    profile: str = "generic"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def render_messages(
    kind: str, inputs: PromptInputs, num_negatives: int = 3, decomposition: Decomposition | None = None
) -> ChatMessages:
    """``[system, user]`` messages for one call of ``kind`` (decompose | perturb | naive)."""
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {KINDS}")
    if kind == "perturb" and decomposition is None:
        raise ValueError("the perturb prompt needs the query's decomposition")
    env = _environment()
    profile = load_profiles()[inputs.profile]
    context = {
        "profile": profile,
        "query": inputs.query,
        "positive": inputs.positive,
        "candidates": list(inputs.candidates),
        "answers": list(inputs.answers),
        "num_negatives": num_negatives,
        "decomposition": decomposition,
        "min_nodes": MIN_NODES,
        "max_nodes": MAX_NODES,
        "facet_types": list(get_args(FacetType)),
        "strategy_types": list(get_args(StrategyType)),
    }
    system = env.get_template("system.jinja").render(**context).strip()
    user = env.get_template(f"{kind}.jinja").render(**context).strip()
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def instruction_text(messages: ChatMessages, inputs: PromptInputs) -> str:
    """The prompt with the query, positive and candidate passages removed: what a negative must not copy."""
    text = "\n".join(m["content"] for m in messages)
    for passage in (inputs.positive, *inputs.candidates, inputs.query):
        if passage:
            text = text.replace(passage, " ")
    return text


def preview(messages: ChatMessages, title: str) -> str:
    """A human-readable rendering of chat messages."""
    lines = [f"===== {title} ====="]
    for message in messages:
        lines += [f"--- {message['role']} ---", message["content"]]
    return "\n".join(lines)
