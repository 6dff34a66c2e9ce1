"""RetrieverSystem: the LightningModule that trains a DualEncoder with an Objective.

The encoder (nn.Module) and the objective (nn.Module: InfoNCE + regularizers) are built elsewhere and
passed in; this class only moves batches through them, logs, and validates on a fixed dev sub-corpus.

Throughput (measured by experiments/bench_throughput.py): a training batch's documents (positives and
negatives together) are encoded once per distinct text, sorted by length and cut into chunks of at most
``train_chunk_tokens`` padded positions, each trimmed to its own longest text (:func:`encode_bucketed`), so
almost no compute goes to padding; and attention-probability dropout is off by default, which lets PyTorch's
SDPA use its fused CPU kernel instead of the much slower dropout path (hidden dropout is unchanged).

Large batches on small memory: with ``grad_cache_chunk_size`` the step uses gradient caching
(:mod:`causalneg.training.grad_cache`): the same loss and gradients, with one chunk's activations alive at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from causalneg.contracts import METRICS, PRIMARY_METRIC
from causalneg.data.datamodule import DevSet
from causalneg.errors import ConfigError
from causalneg.evaluation.encoding import encode_texts
from causalneg.evaluation.metrics import evaluate_run
from causalneg.evaluation.search import exact_topk
from causalneg.losses import Objective, ObjectiveOutput, per_source_similarity_stats
from causalneg.losses.infonce import Guide
from causalneg.losses.masking import PassageKeys
from causalneg.models.encoder import DualEncoder, Side
from causalneg.precision import native_bf16_cpu
from causalneg.training.chunking import encode_bucketed, plan_chunks
from causalneg.training.grad_cache import grad_cache_loss

__all__ = ["RetrieverSystem", "encode_bucketed", "native_bf16_cpu", "set_attention_dropout"]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the attention-probability dropout of every self-attention block to ``p``; returns how many changed.

    Covers BERT-style blocks (``*SelfAttention`` modules whose ``dropout`` acts on the attention
    probabilities: BERT, MiniLM, MPNet, RoBERTa) and decoder blocks with a float ``attention_dropout``
    attribute (Llama, Qwen). Hidden-state dropout is untouched. Only the modules change, not
    ``model.config``, so an exported model keeps its original configuration.
    """
    changed = 0
    for module in model.modules():
        dropout = getattr(module, "dropout", None)
        if type(module).__name__.endswith("SelfAttention") and isinstance(dropout, nn.Dropout):
            dropout.p = p
            changed += 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            setattr(module, "attention_dropout", p)  # noqa: B010  (a plain float attribute of the block)
            changed += 1
    return changed


def _pad_columns(tensor: Tensor, width: int, value: int, left: bool) -> Tensor:
    """Pad ``[N, T]`` to ``[N, width]`` on the tokenizer's padding side."""
    extra = width - tensor.shape[1]
    return F.pad(tensor, (extra, 0) if left else (0, extra), value=value) if extra > 0 else tensor


class RetrieverSystem(L.LightningModule):
    def __init__(
        self,
        encoder: DualEncoder,
        objective: Objective,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        eval_batch_size: int = 128,
        eval_precision: str = "32-true",
        val_top_k: int = 100,
        train_chunk_tokens: int | None = 4096,
        attention_dropout: float | None = 0.0,
        grad_cache_chunk_size: int | None = None,
        guide: DualEncoder | None = None,
        dev_set: Callable[[], DevSet] | None = None,
    ) -> None:
        """``optimizer``: None for a system that only embeds (``stage=diagnose``). ``train_chunk_tokens``: padded
        positions per forward chunk of a training batch's texts (see :func:`encode_bucketed`; None = one forward
        per side, padded as collated). ``attention_dropout``:
        attention-probability dropout while training (None keeps the backbone's own, 0.1 for BERT/MiniLM);
        0.0 lets SDPA use its fused CPU kernel (MiniLM forward+backward measured 1.3x faster).
        ``grad_cache_chunk_size``: texts per chunk with gradient caching (``loss.grad_cache.chunk_size``;
        chunks also respect ``train_chunk_tokens``); None = the plain step. ``guide``: a frozen encoder (the
        stock model) whose embeddings of each batch go to the objective for guide-model masking
        (``loss.guide_margin``); kept out of the module tree, so it is neither trained nor checkpointed.
        ``dev_set``: returns the validation data (called at each validation start, after the DataModule's
        ``setup``; e.g. ``datamodule.dev_set``); None = no validation."""
        super().__init__()
        if grad_cache_chunk_size is not None and not grad_cache_chunk_size >= 1:
            raise ConfigError(f"loss.grad_cache.chunk_size must be >= 1 or null, got {grad_cache_chunk_size}")
        if grad_cache_chunk_size is not None and any(p.requires_grad for p in objective.parameters()):
            raise ConfigError("loss.grad_cache needs an objective without trainable parameters")
        self.encoder, self.objective = encoder, objective
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eval_batch_size, self.eval_precision, self.val_top_k = eval_batch_size, eval_precision, val_top_k
        self.train_chunk_tokens = train_chunk_tokens
        self.grad_cache_chunk_size = grad_cache_chunk_size
        self._guide = (
            [guide.eval().requires_grad_(False)] if guide is not None else []
        )  # a list: unregistered
        if attention_dropout is not None:
            set_attention_dropout(encoder, attention_dropout)
        self._dev_doc_emb: Tensor | None = None
        self._val_started = 0.0
        self._val_seconds: float | None = None
        self.dev_set = dev_set
        self._dev: DevSet | None = None

    # -- embedding -------------------------------------------------------------------------------------------
    def batch_texts(self, batch: dict[str, Tensor]) -> list[tuple[Tensor, Tensor, Side]]:
        """The two sides of a group batch as ``(input_ids, attention_mask, side)``: queries [B, Lq], and the
        documents [B+M, T]: the B positives, then the M real negatives (padded to a common width)."""
        query: tuple[Tensor, Tensor, Side] = (
            batch["query_input_ids"],
            batch["query_attention_mask"],
            "query",
        )
        pos_ids, pos_mask = batch["positive_input_ids"], batch["positive_attention_mask"]
        if "negative_input_ids" not in batch:
            return [query, (pos_ids, pos_mask, "doc")]
        neg_ids, neg_mask = batch["negative_input_ids"], batch["negative_attention_mask"]
        width, left = max(pos_ids.shape[1], neg_ids.shape[1]), self.encoder.tokenizer.padding_side == "left"
        pad_id = int(self.encoder.tokenizer.pad_token_id)
        ids = torch.cat(
            [_pad_columns(pos_ids, width, pad_id, left), _pad_columns(neg_ids, width, pad_id, left)]
        )
        mask = torch.cat([_pad_columns(pos_mask, width, 0, left), _pad_columns(neg_mask, width, 0, left)])
        return [query, (ids, mask, "doc")]

    @staticmethod
    def split_embeddings(batch: dict[str, Tensor], q: Tensor, docs: Tensor) -> dict[str, Tensor]:
        """``q`` [B, D] and ``docs`` [B+M, D] -> query [B,D], positive [B,D], negatives [B,K,D] (zeros in empty
        slots; extra positives in their ``pos_slot`` slots), as :meth:`embed_batch` returns them."""
        b, k = batch["neg_index"].shape
        p, flat = docs[:b], docs[b:]
        if flat.shape[0] == 0:
            return {"query": q, "positive": p, "negatives": q.new_zeros(b, k, q.shape[-1])}
        index = batch["neg_index"].clamp(min=0)  # [B,K]
        filled = batch["neg_index"] >= 0  # negatives and extra positives (pos_slot)
        n = flat[index.view(-1)].view(b, k, -1) * filled.unsqueeze(-1).to(flat.dtype)
        return {"query": q, "positive": p, "negatives": n}

    def embed_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Embeddings of a group batch: query [B,D], positive [B,D], negatives [B,K,D] (zeros in empty slots).

        Each side goes through :func:`encode_bucketed` (positives and the M real negatives as one document batch
        [B+M, T]).
        """
        (q_ids, q_mask, _), (d_ids, d_mask, _) = self.batch_texts(batch)
        q = encode_bucketed(self.encoder, q_ids, q_mask, "query", self.train_chunk_tokens)
        docs = encode_bucketed(self.encoder, d_ids, d_mask, "doc", self.train_chunk_tokens)
        return self.split_embeddings(batch, q, docs)

    @torch.no_grad()
    def guide_embeddings(self, batch: dict[str, Tensor]) -> Guide | None:
        """The guide encoder's ``(q [B,D], p [B,D], n [B,K,D])`` of the batch (eval mode, no graph), or None."""
        if not self._guide:
            return None
        guide = self._guide[0]
        (q_ids, q_mask, _), (d_ids, d_mask, _) = self.batch_texts(batch)
        q = encode_bucketed(guide, q_ids, q_mask, "query", self.train_chunk_tokens)
        docs = encode_bucketed(guide, d_ids, d_mask, "doc", self.train_chunk_tokens)
        emb = self.split_embeddings(batch, q, docs)
        return emb["query"], emb["positive"], emb["negatives"]

    # -- training --------------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, ObjectiveOutput, dict[str, Tensor]]:
        """``(loss to backpropagate, objective output, embeddings)`` of a group batch.

        Plain: the objective on :meth:`embed_batch`. With gradient caching: the objective on embeddings encoded
        without a graph, chunk by chunk (:func:`plan_chunks` with ``train_chunk_tokens`` and
        ``grad_cache_chunk_size``); the returned loss re-encodes each chunk during its backward
        (:func:`grad_cache_loss`), and the embeddings are detached.
        """
        keys, guide = PassageKeys.from_batch(batch), self.guide_embeddings(batch)

        def objective(emb: dict[str, Tensor]) -> ObjectiveOutput:
            q, p, n = emb["query"], emb["positive"], emb["negatives"]
            return self.objective(
                q, p, n, batch["neg_source"], batch["neg_mask"], keys, guide, batch.get("pos_slot")
            )

        if self.grad_cache_chunk_size is None:
            emb = self.embed_batch(batch)
            out = objective(emb)
            return out.loss, out, emb
        sides = [
            (plan_chunks(ids, mask, self.train_chunk_tokens, self.grad_cache_chunk_size), side)
            for ids, mask, side in self.batch_texts(batch)
        ]

        def loss_fn(embeddings: list[Tensor]) -> tuple[Tensor, tuple[ObjectiveOutput, dict[str, Tensor]]]:
            emb = self.split_embeddings(batch, *embeddings)
            out = objective(emb)
            return out.loss, (out, {k: v.detach() for k, v in emb.items()})

        loss, (out, emb) = grad_cache_loss(self.encoder.encode, sides, loss_fn)
        return loss, out, emb

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, out, emb = self.compute_loss(batch)
        q, p, n = emb["query"], emb["positive"], emb["negatives"]
        size = q.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size)
        self.log_dict({k: v.detach() for k, v in out.parts.items()}, batch_size=size)
        with torch.no_grad():
            stats = dict(out.stats)
            stats.update(per_source_similarity_stats(q, p, n, batch["neg_source"], batch["neg_mask"]))
        masked = {f"train/{k}": float(v) for k, v in stats.items() if k.startswith("masked/")}
        if masked and self.logger is not None:  # every step, whatever log_every_n_steps (rank 0's count)
            self.logger.log_metrics(masked, step=self.global_step)
        self.log_dict(
            {f"train/{k}": v.float() for k, v in stats.items() if not k.startswith("masked/")},
            batch_size=size,
        )
        # Epoch means too (logged at every epoch end whatever log_every_n_steps is, so that short runs, e.g. the
        # CPU-scaled ablation with a few steps per epoch, still record the per-source statistics).
        epoch = {"train_epoch/loss": loss.detach()} | {
            f"train_epoch/{k}": v.float() for k, v in stats.items()
        }
        self.log_dict(epoch, batch_size=size, on_step=False, on_epoch=True)
        return loss

    def on_fit_start(self) -> None:
        if self.grad_cache_chunk_size is not None and self.trainer.world_size > 1:
            raise ConfigError(
                "loss.grad_cache runs in a single process only (each chunk's backward would trigger a DDP "
                "gradient sync); set loss.grad_cache.chunk_size=null or train on one device"
            )
        for guide in self._guide:  # not a submodule: Lightning does not move it
            guide.to(self.device)
        precision = str(getattr(self.trainer, "precision", ""))
        if precision.startswith("bf16") and self.device.type == "cpu" and not native_bf16_cpu():
            rank_zero_warn(
                f"trainer.precision={precision} on a CPU without native bf16 (no AVX512-BF16/AMX): bf16 matmuls "
                "are emulated and run several times slower than 32-true here; prefer trainer.precision=32-true"
            )

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("RetrieverSystem built without an optimizer (embedding only) cannot be trained")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation: dev queries against a fixed dev sub-corpus -----------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_started = time.perf_counter()
        if self.dev_set is None:
            raise ConfigError(
                "RetrieverSystem validates only with a dev_set (e.g. dev_set=datamodule.dev_set)"
            )
        self._dev = self.dev_set()
        self._dev_doc_emb = encode_texts(
            self.encoder,
            list(self._dev.doc_texts),
            "doc",
            batch_size=self.eval_batch_size,
            precision=self.eval_precision,
            progress=False,
        ).to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        dev, doc_emb = self._dev, self._dev_doc_emb
        assert dev is not None and doc_emb is not None, (
            "on_validation_epoch_start did not encode the dev corpus"
        )
        q = self.encoder.encode(batch["query_input_ids"], batch["query_attention_mask"], "query").float()
        k = min(self.val_top_k, len(dev.doc_ids))
        scores, indices = exact_topk(q, doc_emb, k)
        run = {
            qid: {dev.doc_ids[j]: float(s) for s, j in zip(row_s.tolist(), row_i.tolist(), strict=True)}
            for qid, row_s, row_i in zip(batch["query_ids"], scores, indices, strict=True)
        }
        qrels = {qid: dict(dev.qrels.get(qid, {})) for qid in batch["query_ids"]}
        aggregate, _ = evaluate_run(qrels, run, k_values=(10, 100))
        if not aggregate:  # no query of this batch has a relevant passage: nothing to average
            return
        size = len(batch["query_ids"])
        for name in METRICS:
            self.log(
                f"val/{name}",
                aggregate[name],
                batch_size=size,
                prog_bar=name == PRIMARY_METRIC,
                sync_dist=True,
            )
        # Retrieval validation's own wall time (dev sub-corpus encoding + search + metrics), so that callbacks'
        # costs at the same validation (e.g. diag/seconds) can be read against it.
        self._val_seconds = time.perf_counter() - self._val_started

    def on_validation_epoch_end(self) -> None:
        self._dev_doc_emb, self._dev = None, None
        if self._val_seconds is not None:
            self.log("time/val_seconds", self._val_seconds, sync_dist=False, rank_zero_only=True)
            self._val_seconds = None
