"""The dual encoder: a transformer backbone (shared or one per side), pooling and L2 normalisation.

This is a plain ``nn.Module`` (it never imports Lightning): the training system owns it, evaluation and mining
call :meth:`DualEncoder.encode` in inference mode. Texts become vectors as

    e(x) = normalize(pool(backbone(tokenize(prefix_side + x, max_length_side))))     # [B, D]

with dynamic padding (each batch is padded to its own longest sequence, never to ``max_length``), so a
generous ``doc_max_length`` costs nothing for short passages.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, BatchEncoding, BertConfig, BertModel, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from causalneg.artifacts import canonical_json
from causalneg.errors import ConfigError
from causalneg.models.assets import MINILM_PACKAGE, SOURCES, package_model_dir, resolve_encoder_path
from causalneg.models.pooling import POOLING_MODES, pool

Side = Literal["query", "doc"]
SIDES = ("query", "doc")

# A random BERT small enough for unit tests (about 1M parameters, nearly all in the 30k-token embeddings).
TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}


@dataclass
class EncoderConfig:
    """What an encoder is. ``source`` is ``package`` | ``mpnet_parts`` | ``path`` | ``hub`` | ``tiny``.

    ``tiny`` holds ``BertConfig`` overrides for the random test model and ``seed`` its initialisation seed.
    """

    name: str = "minilm"
    source: str = "package"
    name_or_path: str = MINILM_PACKAGE
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    doc_prefix: str = ""
    query_max_length: int = 32
    doc_max_length: int = 256
    shared_towers: bool = True
    tiny: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in (*SOURCES, "tiny"):
            raise ConfigError(f"model.source={self.source!r} is not one of {(*SOURCES, 'tiny')}")
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"model.pooling={self.pooling!r} is not one of {POOLING_MODES}")
        for key in ("query_max_length", "doc_max_length"):
            if int(getattr(self, key)) < 2:
                raise ConfigError(f"model.{key} must be at least 2, got {getattr(self, key)}")
        self.tiny = dict(self.tiny or {})

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> EncoderConfig:
        """Build from a config mapping (e.g. ``cfg.model``); Hydra keys (``_target_``...) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in mapping.items() if not str(k).startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; expected a subset of {sorted(known)}")
        if "tiny" in values and values["tiny"] is not None:
            values["tiny"] = dict(values["tiny"])
        return cls(**values)


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def _build_tiny(config: EncoderConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random BERT with the MiniLM tokenizer, initialised from ``config.seed``; global RNG is untouched."""
    tokenizer = AutoTokenizer.from_pretrained(package_model_dir(MINILM_PACKAGE))
    kwargs = {**TINY_DEFAULTS, "vocab_size": len(tokenizer), **config.tiny}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = BertModel(BertConfig(**kwargs))
    return model, tokenizer


class DualEncoder(nn.Module):
    """Query and document encoder. ``encode`` maps ``input_ids, attention_mask [B, T]`` to ``[B, D]`` float32.

    With ``shared_towers`` one backbone encodes both sides; otherwise the document tower starts as a deep
    copy of the query tower. The backbone's pooler head (BERT's ``pooler``), unused by our pooling, is frozen
    so that every trainable parameter receives a gradient (DDP requires it) while it still round-trips on
    export.
    A new encoder is in eval mode (as ``from_pretrained`` leaves models); training code calls ``.train()``.
    """

    def __init__(
        self, config: EncoderConfig, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:  # decoder tokenizers often have none; any id works under the mask
            tokenizer.pad_token = tokenizer.eos_token
        self.query_backbone = backbone
        self.doc_backbone: PreTrainedModel | None = None if config.shared_towers else copy.deepcopy(backbone)
        for tower in self.towers():
            pooler = getattr(tower, "pooler", None)
            if isinstance(pooler, nn.Module):
                pooler.requires_grad_(False)
        self._fingerprint_cache: tuple[tuple[tuple[str, int, int], ...], str] | None = None
        self.eval()  # like from_pretrained: the whole module starts in eval mode; a trainer switches it

    @classmethod
    def from_config(
        cls, config: EncoderConfig | Mapping[str, Any], cache_dir: str | None = None
    ) -> DualEncoder:
        """Load (``tiny``: build) the backbone and tokenizer; ``cache_dir`` is where mpnet is unzipped."""
        if not isinstance(config, EncoderConfig):
            config = EncoderConfig.from_dict(config)
        if config.source == "tiny":
            backbone, tokenizer = _build_tiny(config)
        else:
            location = resolve_encoder_path(config.source, config.name_or_path, cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(str(location))
            backbone = AutoModel.from_pretrained(str(location), dtype=torch.float32)
        return cls(config, backbone, tokenizer)

    def towers(self) -> list[PreTrainedModel]:
        """The distinct backbones: one when towers are shared, else [query, doc]."""
        return (
            [self.query_backbone] if self.doc_backbone is None else [self.query_backbone, self.doc_backbone]
        )

    def backbone(self, side: Side) -> PreTrainedModel:
        _check_side(side)
        if side == "doc" and self.doc_backbone is not None:
            return self.doc_backbone
        return self.query_backbone

    @property
    def embedding_dim(self) -> int:
        return int(self.query_backbone.config.hidden_size)

    def max_length(self, side: Side) -> int:
        _check_side(side)
        return int(self.config.query_max_length if side == "query" else self.config.doc_max_length)

    def prefix(self, side: Side) -> str:
        _check_side(side)
        return self.config.query_prefix if side == "query" else self.config.doc_prefix

    def token_ids(self, texts: Sequence[str], side: Side) -> list[list[int]]:
        """Unpadded token ids of ``prefix + text``, truncated at the side's max length (specials included)."""
        prefix = self.prefix(side)
        if not texts:
            return []
        encoded = self.tokenizer(
            [prefix + text for text in texts],
            truncation=True,
            max_length=self.max_length(side),
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def count_truncated(self, texts: Sequence[str], side: Side) -> int:
        """How many of ``texts`` (with the side's prefix and special tokens) exceed the side's max length in
        tokens: :meth:`token_ids` cuts those."""
        if not texts:
            return 0
        encoded = self.tokenizer(
            [self.prefix(side) + text for text in texts],
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        limit = self.max_length(side)
        return sum(len(ids) > limit for ids in encoded["input_ids"])

    def pad(self, ids: Sequence[Sequence[int]]) -> BatchEncoding:
        """``input_ids, attention_mask [B, T]``, padded to this batch's longest (tokenizer's side)."""
        width = max((len(seq) for seq in ids), default=0)
        input_ids = torch.full((len(ids), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for row, seq in enumerate(ids):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, span] = 1
        return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask})

    def tokenize(self, texts: Sequence[str], side: Side) -> BatchEncoding:
        """``input_ids, attention_mask [B, T]``, T = this batch's longest text (dynamic padding)."""
        return self.pad(self.token_ids(texts, side))

    def encode(self, input_ids: Tensor, attention_mask: Tensor, side: Side = "query") -> Tensor:
        """``input_ids, attention_mask [B, T]`` -> ``[B, D]`` float32, float64 for a float64 backbone (unit L2
        norm if ``normalize``)."""
        output = self.backbone(side)(input_ids=input_ids, attention_mask=attention_mask)
        embeddings = pool(self.config.pooling, output.last_hidden_state, attention_mask)  # [B, D] >= float32
        if self.config.normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        return embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor, side: Side = "query") -> Tensor:
        """Same as :meth:`encode` (so module hooks and DDP see the call)."""
        return self.encode(input_ids, attention_mask, side)

    def weights_fingerprint(self) -> str:
        """blake2b over the model identity and every state-dict tensor's name, dtype, shape and bytes.

        Cached: the cache is keyed by each tensor's storage pointer and version counter, which every in-place
        update (optimizer step, ``load_state_dict``, ``copy_``) bumps, so a changed weight always rehashes.
        """
        state = self.state_dict()
        key = tuple((name, t.data_ptr(), int(getattr(t, "_version", 0))) for name, t in state.items())
        if self._fingerprint_cache is not None and self._fingerprint_cache[0] == key:
            return self._fingerprint_cache[1]
        digest = hashlib.blake2b(digest_size=32)
        identity = {
            "architecture": type(self.query_backbone).__name__,
            "source": self.config.source,
            "name_or_path": self.config.name_or_path,
            "tokenizer": [type(self.tokenizer).__name__, len(self.tokenizer)],
        }
        digest.update(canonical_json(identity).encode())
        for name, tensor in state.items():
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
        value = digest.hexdigest()
        self._fingerprint_cache = (key, value)
        return value
