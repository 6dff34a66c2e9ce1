"""One rank of the two-node training test (run by ``torchrun``; not collected by pytest).

Trains :class:`TinySystem` for one step with ``lightning.Trainer(num_nodes=NODES, devices=1, strategy="ddp")``.
Lightning finds torchrun's environment (``RANK``, ``WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``) itself; this
script never reads it, except to name its output file. Each rank trains on its half of the equivalence test's
batch (``local_half(make_data(), rank)``) and saves its loss and DDP's synchronised gradients, read after
backward and before the (lr = 0) optimiser step.

Usage: ``torchrun --nnodes 2 --nproc-per-node 1 ... multinode_worker.py OUT_DIR CASE NODES``
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: import tests.*

from tests.integration.test_ddp_equivalence import CASES, forward, local_half, make_data, make_encoder


class TinySystem(L.LightningModule):
    """The equivalence test's linear encoder + objective as a LightningModule (one case)."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.encoder = make_encoder()
        self.case = case
        self.captured: dict[str, object] = {}

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        data = local_half(make_data(), self.global_rank)
        loss, entropy = forward(self.encoder, data, *CASES[self.case])
        self.captured.update(loss=loss.detach().clone(), entropy=entropy.detach().clone())
        return loss

    def on_after_backward(self) -> None:  # DDP has all-reduced (averaged) the gradients by now
        self.captured["grads"] = [p.grad.detach().clone() for p in self.encoder.parameters()]
        self.captured["world_size"] = self.trainer.world_size
        self.captured["node_rank"] = self.trainer.node_rank

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(out_dir: str, case: str, nodes: int) -> None:
    torch.set_num_threads(1)
    system = TinySystem(case)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=nodes,
        strategy="ddp",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(system, train_dataloaders=DataLoader(torch.zeros(1, 1), batch_size=1))
    torch.save(system.captured, Path(out_dir) / f"{case}.rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
