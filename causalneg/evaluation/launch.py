"""Launch a multi-process stage the way training does: Lightning Fabric on the ``trainer`` config.

``stage=evaluate trainer=ddp trainer.devices=N trainer.num_nodes=M`` evaluates with ``N x M`` ranks: Fabric's
launcher starts the other local processes (re-running the same command, Hydra-aware, as ``lightning.Trainer``
does) or, under torchrun / SLURM, finds the ranks that the launcher started; it then initialises the process
group (gloo on CPU, NCCL on GPU). A single-process trainer (``trainer=cpu``, ``devices: 1``, one node) starts
no process group at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from causalneg.errors import ConfigError

MULTI_PROCESS_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def wants_processes(settings: Mapping[str, Any]) -> bool:
    """True when the resolved ``trainer`` settings ask for more than one process (several devices or nodes, a
    ddp strategy)."""
    devices, nodes = settings.get("devices", 1), int(settings.get("num_nodes", 1) or 1)
    strategy = str(settings.get("strategy") or "auto")
    several = nodes > 1 or (isinstance(devices, int) and devices > 1) or isinstance(devices, list | str)
    return several and strategy.split("_find_unused")[0] in MULTI_PROCESS_STRATEGIES


def launch_fabric(settings: Mapping[str, Any]) -> Any:
    """A launched :class:`lightning.fabric.Fabric` on ``trainer``'s accelerator/devices/num_nodes (ddp).

    Every rank returns from this call; the process group is initialised. Threads per rank: the cores divided
    by the local world size (unless ``OMP_NUM_THREADS`` is set), so N CPU ranks do not oversubscribe.
    """
    from lightning.fabric import Fabric

    # Encoding needs no model sharding and no spawned workers: every data-parallel preset runs as script-launched
    # ddp (the command is re-run per local rank, or torchrun/SLURM started the ranks).
    strategy = str(settings.get("strategy") or "ddp").split("_find_unused")[0]
    if strategy not in MULTI_PROCESS_STRATEGIES:
        raise ConfigError(
            f"trainer.strategy={strategy!r}: multi-process evaluation runs data parallel (trainer=ddp); "
            "fsdp/deepspeed shard the model, which encoding does not need"
        )
    fabric = Fabric(
        accelerator=str(settings.get("accelerator", "auto")),
        devices=settings.get("devices", "auto"),
        num_nodes=int(settings.get("num_nodes", 1) or 1),
        strategy="ddp",
        precision="32-true",  # eval.precision applies to encoding; Fabric's own precision is not used
    )
    fabric.launch()
    if "OMP_NUM_THREADS" not in os.environ and fabric.device.type == "cpu":
        local_processes = max(1, int(getattr(fabric.strategy, "num_processes", 1)))  # ranks on this node
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    return fabric
