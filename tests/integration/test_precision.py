"""Precision and throughput changes keep the numbers: bf16 vs fp32, bucketed vs padded training encodes.

- bf16 corpus embeddings of all-MiniLM-L6-v2 agree with fp32 ones (cosine >= 0.99 per text) on 64 real texts.
- A Lightning ``bf16-mixed`` fit really runs the encoder under bf16 autocast (linear layers output bfloat16).
- A bf16-mixed fine-tune of MiniLM reaches the fp32 fine-tune's test nDCG@10 on the same seed (tolerance below).
- ``encode_bucketed`` (de-duplicated, length-sorted, trimmed chunks) gives the vectors and gradients of one
  padded forward; attention dropout is switched off where it acts on attention probabilities only.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from causalneg.evaluation.encoding import encode_texts
from causalneg.models.encoder import DualEncoder, EncoderConfig
from causalneg.stages import dispatch
from causalneg.training.system import encode_bucketed, native_bf16_cpu, set_attention_dropout
from tests.conftest import SHARED_DATA, tiny_overrides

pytestmark = pytest.mark.integration

FALLBACK_TEXTS = [  # used only when ../shared/data is absent: short real-world sentences of varied length
    "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair in Paris.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Mount Kilimanjaro is a dormant volcano in Tanzania and the highest mountain in Africa.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "Python is a programming language that emphasises code readability with significant indentation.",
    "Who wrote the novel Pride and Prejudice?",
    "Insulin is a peptide hormone produced by beta cells of the pancreatic islets.",
    "The Great Barrier Reef is the world's largest coral reef system, off the coast of Queensland.",
]


def sample_texts(n: int = 64) -> list[str]:
    """``n`` HotpotQA paragraphs (seeded) from ../shared/data, or the fallback sentences cycled with an index."""
    corpus = SHARED_DATA / "hotpotqa_distractor_subset" / "corpus.jsonl"
    if corpus.is_file():
        rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()[:5000]]
        picked = random.Random(0).sample(rows, n)
        return [f"{r['title']}. {r['text']}" if r.get("title") else r["text"] for r in picked]
    return [f"{FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)]} ({i})" for i in range(n)]


@pytest.mark.slow
def test_bf16_embeddings_agree_with_fp32_per_text() -> None:
    torch.set_num_threads(1)
    encoder = DualEncoder.from_config(EncoderConfig())
    texts = sample_texts(64)
    fp32 = encode_texts(encoder, texts, "doc", batch_size=32, precision="32-true", progress=False)
    bf16 = encode_texts(encoder, texts, "doc", batch_size=32, precision="bf16", progress=False)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    cosine = F.cosine_similarity(fp32, bf16, dim=-1)  # [64]
    assert cosine.min().item() >= 0.99, f"worst text: cosine {cosine.min().item():.4f}"
    assert not torch.equal(fp32, bf16)  # bf16 really ran (identical vectors would mean autocast was a no-op)


# -- bf16-mixed under Lightning ----------------------------------------------------------------------------------
class AutocastProbe(L.Callback):
    """Records, during the first training forward, the autocast state and a linear layer's output dtype."""

    seen: ClassVar[dict[str, Any]] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        linear = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Linear))

        def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            AutocastProbe.seen.setdefault("linear_dtype", output.dtype)
            AutocastProbe.seen.setdefault("autocast", torch.is_autocast_enabled("cpu"))
            AutocastProbe.seen.setdefault("autocast_dtype", torch.get_autocast_dtype("cpu"))

        self.handle = linear.register_forward_hook(record)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.handle.remove()


def bf16_warning() -> contextlib.AbstractContextManager[Any]:
    """RetrieverSystem warns that bf16 is emulated (slow) on CPUs without AVX512-BF16/AMX, like this one."""
    if native_bf16_cpu():
        return contextlib.nullcontext()
    return pytest.warns(UserWarning, match="without native bf16")


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_lightning_precision_reaches_the_encoder(
    precision: str, tmp_path: Path, tiny_beir: Path, compose_cfg: Callable[..., Any]
) -> None:
    AutocastProbe.seen = {}
    overrides = [
        *tiny_overrides(tmp_path, tiny_beir),
        f"trainer.precision={precision}",
        "trainer.max_steps=1",
        "diagnostics.enabled=false",
        "+callbacks.probe._target_=tests.integration.test_precision.AutocastProbe",
    ]
    with bf16_warning() if precision == "bf16-mixed" else contextlib.nullcontext():
        dispatch(compose_cfg(overrides))
    if precision == "bf16-mixed":
        assert AutocastProbe.seen == {
            "linear_dtype": torch.bfloat16,
            "autocast": True,
            "autocast_dtype": torch.bfloat16,
        }
    else:
        assert AutocastProbe.seen["linear_dtype"] == torch.float32 and not AutocastProbe.seen["autocast"]


# Tolerance for the bf16 vs fp32 fine-tune: the tiny test split has 16 queries with one positive each, so one
# query whose positive moves by one rank at the top (1 -> 2) moves the mean nDCG@10 by 1/16 * (1 - 1/log2(3))
# = 0.023; bf16 rounding (about 3 significant digits in the forward) may flip such a near-tie, so we allow
# 0.03 (about one flip) and require nothing more.
NDCG_TOLERANCE = 0.03


@pytest.mark.slow
def test_bf16_finetune_matches_fp32(tmp_path: Path, tiny_beir: Path, compose_cfg: Callable[..., Any]) -> None:
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        root = tmp_path / precision
        overrides = [
            *tiny_overrides(root, tiny_beir),
            "model=minilm",
            f"trainer.precision={precision}",
            "optim.optimizer.lr=5e-5",
            "diagnostics.enabled=false",
            "dataset.dev_split=null",
        ]
        with bf16_warning() if precision == "bf16-mixed" else contextlib.nullcontext():
            results[precision] = dispatch(compose_cfg(overrides))
    fp32, bf16 = results["32-true"], results["bf16-mixed"]
    assert fp32["test_start"] == bf16["test_start"]  # same starting model, evaluated in fp32 both times
    assert fp32["test"] != fp32["test_start"]  # the fine-tune changed the model
    assert abs(bf16["test"]["ndcg@10"] - fp32["test"]["ndcg@10"]) <= NDCG_TOLERANCE, (
        fp32["test"],
        bf16["test"],
    )


# -- bucketed training encodes -----------------------------------------------------------------------------------
@pytest.fixture
def tiny_encoder() -> Iterator[DualEncoder]:
    torch.set_num_threads(1)
    yield DualEncoder.from_config(EncoderConfig(source="tiny", seed=3))


def test_encode_bucketed_matches_one_padded_forward(tiny_encoder: DualEncoder) -> None:
    texts = [
        "a short one",
        "a much longer text about lava and magma " * 6,
        "mid length text here",
        "a short one",
        "x",
    ]
    batch = tiny_encoder.tokenize(texts, "doc")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    weights = torch.randn(len(texts), tiny_encoder.embedding_dim, generator=torch.Generator().manual_seed(0))

    def vectors_and_grads(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tiny_encoder.zero_grad(set_to_none=True)
        out = fn()
        (out * weights).sum().backward()
        grads = [p.grad.clone() for p in tiny_encoder.parameters() if p.grad is not None]
        return out.detach(), grads

    reference, ref_grads = vectors_and_grads(lambda: tiny_encoder.encode(ids, mask, "doc"))
    for max_tokens in (8, 64, 4096):  # many chunks of one row ... one chunk
        bucketed, grads = vectors_and_grads(
            lambda m=max_tokens: encode_bucketed(tiny_encoder, ids, mask, "doc", m)
        )
        torch.testing.assert_close(bucketed, reference, rtol=1e-5, atol=1e-5)
        assert len(grads) == len(ref_grads)
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(bucketed[0], bucketed[3])  # the duplicate was encoded once and shared


def test_set_attention_dropout_touches_attention_probabilities_only(tiny_encoder: DualEncoder) -> None:
    layers = tiny_encoder.query_backbone.config.num_hidden_layers
    hidden = [
        m.p for n, m in tiny_encoder.named_modules() if isinstance(m, torch.nn.Dropout) and "self" not in n
    ]
    assert set_attention_dropout(tiny_encoder, 0.0) == layers
    attention = [m for n, m in tiny_encoder.named_modules() if n.endswith("attention.self.dropout")]
    assert len(attention) == layers and all(m.p == 0.0 for m in attention)
    after = [
        m.p for n, m in tiny_encoder.named_modules() if isinstance(m, torch.nn.Dropout) and "self" not in n
    ]
    assert after == hidden and all(p > 0 for p in after)
    assert (
        tiny_encoder.query_backbone.config.attention_probs_dropout_prob > 0
    )  # the exported config is untouched
