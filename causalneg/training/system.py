"""RetrieverSystem: the LightningModule that trains a DualEncoder with an Objective.

The encoder (nn.Module) and the objective (nn.Module: InfoNCE + regularizers) are built elsewhere and
passed in; this class only moves batches through them, logs, and validates on a fixed dev sub-corpus.

Throughput (measured by experiments/bench_throughput.py): a training batch's documents (positives and
negatives together) are encoded once per distinct text, sorted by length and cut into chunks of at most
``train_chunk_tokens`` padded positions, each trimmed to its own longest text (:func:`encode_bucketed`), so
almost no compute goes to padding; and attention-probability dropout is off by default, which lets PyTorch's
SDPA use its fused CPU kernel instead of the much slower dropout path (hidden dropout is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from causalneg.evaluation.encoding import encode_texts
from causalneg.evaluation.metrics import evaluate_run
from causalneg.evaluation.search import exact_topk
from causalneg.losses import Objective, per_source_similarity_stats
from causalneg.models.encoder import DualEncoder

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]

VAL_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


class RetrieverSystem(L.LightningModule):
    def __init__(
        self,
        encoder: DualEncoder,
        objective: Objective,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        eval_batch_size: int = 128,
        eval_precision: str = "32-true",
        val_top_k: int = 100,
    ) -> None:
        super().__init__()
        self.encoder, self.objective = encoder, objective
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eval_batch_size, self.eval_precision, self.val_top_k = eval_batch_size, eval_precision, val_top_k
        self._dev_doc_emb: Tensor | None = None
        self._dev_doc_ids: list[str] = []

    # -- embedding -------------------------------------------------------------------------------------------
    def embed_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Embeddings of a group batch: query [B,D], positive [B,D], negatives [B,K,D] (zeros in empty slots)."""
        q = self.encoder.encode(batch["query_input_ids"], batch["query_attention_mask"], "query")
        p = self.encoder.encode(batch["positive_input_ids"], batch["positive_attention_mask"], "doc")
        b, k = batch["neg_index"].shape
        if "negative_input_ids" not in batch:
            return {"query": q, "positive": p, "negatives": q.new_zeros(b, k, q.shape[-1])}
        flat = self.encoder.encode(
            batch["negative_input_ids"], batch["negative_attention_mask"], "doc"
        )  # [M,D]
        index = batch["neg_index"].clamp(min=0)  # [B,K]
        n = flat[index.view(-1)].view(b, k, -1) * batch["neg_mask"].unsqueeze(-1).to(flat.dtype)
        return {"query": q, "positive": p, "negatives": n}

    # -- training --------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        emb = self.embed_batch(batch)
        q, p, n = emb["query"], emb["positive"], emb["negatives"]
        out = self.objective(q, p, n, batch["neg_source"], batch["neg_mask"])
        size = q.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        self.log_dict({k: v.detach() for k, v in out.parts.items()}, batch_size=size)
        with torch.no_grad():
            stats = dict(out.stats)
            stats.update(per_source_similarity_stats(q, p, n, batch["neg_source"], batch["neg_mask"]))
        self.log_dict({f"train/{k}": v.float() for k, v in stats.items()}, batch_size=size)
        return out.loss

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation: dev queries against a fixed dev sub-corpus -----------------------------------------------
    def on_validation_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        corpus = datamodule.dataset.corpus
        self._dev_doc_ids = list(datamodule.dev_corpus_ids)
        texts = [corpus[pid].full_text for pid in self._dev_doc_ids]
        self._dev_doc_emb = encode_texts(
            self.encoder,
            texts,
            "doc",
            batch_size=self.eval_batch_size,
            precision=self.eval_precision,
            progress=False,
        ).to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        assert self._dev_doc_emb is not None, "on_validation_epoch_start did not encode the dev sub-corpus"
        q = self.encoder.encode(batch["query_input_ids"], batch["query_attention_mask"], "query").float()
        k = min(self.val_top_k, len(self._dev_doc_ids))
        scores, indices = exact_topk(q, self._dev_doc_emb, k)
        run = {
            qid: {self._dev_doc_ids[j]: float(s) for s, j in zip(row_s.tolist(), row_i.tolist(), strict=True)}
            for qid, row_s, row_i in zip(batch["query_ids"], scores, indices, strict=True)
        }
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        qrels_all = datamodule.dataset.split(datamodule.settings.dev_split).qrels
        qrels = {qid: qrels_all.get(qid, {}) for qid in batch["query_ids"]}
        aggregate, _ = evaluate_run(qrels, run, k_values=(10, 100))
        size = len(batch["query_ids"])
        for name in VAL_METRICS:
            self.log(
                f"val/{name}", aggregate[name], batch_size=size, prog_bar=name == "ndcg@10", sync_dist=True
            )

    def on_validation_epoch_end(self) -> None:
        self._dev_doc_emb = None
