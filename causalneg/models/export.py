"""Export a :class:`DualEncoder` as a sentence-transformers folder that plain transformers loads too.

Layout (the classic sentence-transformers layout, read by every version of the library):

    out_dir/
      config.json, model.safetensors, tokenizer files   # AutoModel / AutoTokenizer.from_pretrained(out_dir)
      modules.json                                      # Transformer -> Pooling -> (Normalize)
      sentence_bert_config.json                         # max_seq_length = the side's max length
      1_Pooling/config.json                             # our pooling mode
      2_Normalize/                                      # only when the encoder L2-normalises
      config_sentence_transformers.json                 # prompts {"query": ..., "document": ...} when set

``SentenceTransformer(out_dir).encode(texts, prompt_name="query")`` then reproduces our query vectors. It
truncates every text at one ``max_seq_length`` (the document length), so queries longer than our
``query_max_length`` are truncated later there. With separate towers there is no single such model: the query
tower goes to ``out_dir/query`` and the document tower to ``out_dir/document``, each a complete folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from causalneg.artifacts import atomic_write_json
from causalneg.models.encoder import DualEncoder

# Our pooling name -> sentence-transformers' legacy pooling flag (newer versions map it to ``pooling_mode``).
_POOLING_FLAGS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "last_token": "pooling_mode_lasttoken",
}
_ALL_FLAGS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def _modules(normalize: bool) -> list[dict[str, Any]]:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    return modules


def _write_tower(
    encoder: DualEncoder, backbone: PreTrainedModel, folder: Path, max_length: int, prompts: dict[str, str]
) -> None:
    """Write one complete sentence-transformers folder for ``backbone``."""
    cfg = encoder.config
    backbone.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    atomic_write_json(folder / "modules.json", _modules(cfg.normalize))
    atomic_write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False}
    )
    pooling: dict[str, Any] = {"word_embedding_dimension": encoder.embedding_dim}
    pooling.update({flag: flag == _POOLING_FLAGS[cfg.pooling] for flag in _ALL_FLAGS})
    atomic_write_json(folder / "1_Pooling" / "config.json", pooling)
    if cfg.normalize:
        (folder / "2_Normalize").mkdir(exist_ok=True)
    st_config: dict[str, Any] = {
        "prompts": {name: text for name, text in prompts.items() if text},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if cfg.normalize else "dot",
    }
    atomic_write_json(folder / "config_sentence_transformers.json", st_config)


def export_sentence_transformers(encoder: DualEncoder, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``encoder`` to ``out_dir`` (see the module docstring) and return it.

    The folder is assembled in a temporary sibling and renamed into place, so a crash leaves no half-written
    folder. An existing non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"export folder {out_dir} is not empty; pass overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg = encoder.config
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        if encoder.doc_backbone is None:
            prompts = {"query": cfg.query_prefix, "document": cfg.doc_prefix}
            _write_tower(encoder, encoder.query_backbone, tmp, cfg.doc_max_length, prompts)
        else:
            _write_tower(
                encoder,
                encoder.query_backbone,
                tmp / "query",
                cfg.query_max_length,
                {"query": cfg.query_prefix},
            )
            _write_tower(
                encoder,
                encoder.doc_backbone,
                tmp / "document",
                cfg.doc_max_length,
                {"document": cfg.doc_prefix},
            )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
