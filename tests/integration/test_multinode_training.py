"""Two "nodes" of one process each on localhost (``torchrun --nnodes 2``, gloo) ≡ one process.

Two separate ``torchrun`` launchers (node ranks 0 and 1) meet through a c10d rendezvous on 127.0.0.1, as two
machines would; each starts one rank of ``lightning.Trainer(num_nodes=2, devices=1, strategy="ddp")``
(:mod:`tests.integration.multinode_worker`). The mean of the two ranks' losses and DDP's averaged gradients
must equal the loss and gradients of one process on the concatenated batch
(:mod:`tests.integration.test_ddp_equivalence`'s data: uneven K per rank, cross-rank in-batch negatives,
query-view entropy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.test_ddp_equivalence import CASES, free_port, make_data, make_encoder, step

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

WORKER = Path(__file__).with_name("multinode_worker.py")
NODES = 2


def launch_two_nodes(out_dir: Path, case: str) -> None:
    port = free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    commands = [
        [
            sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={NODES}", "--nproc-per-node=1", f"--node-rank={node}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=causalneg-test",
            "--max-restarts=0",
            str(WORKER), str(out_dir), case, str(NODES),
        ]
        for node in range(NODES)
    ]  # fmt: skip
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=200)
        outputs.append(out.decode(errors="replace"))
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]


@pytest.mark.parametrize("case", ["in_batch+entropy", "in_batch+masking", "in_batch+masking+multi"])
def test_two_nodes_match_single_process(tmp_path: Path, case: str) -> None:
    launch_two_nodes(tmp_path, case)
    ranks = [torch.load(tmp_path / f"{case}.rank{r}.pt") for r in range(NODES)]
    assert [r["world_size"] for r in ranks] == [NODES, NODES]
    assert sorted(r["node_rank"] for r in ranks) == [0, 1]  # one rank per node: Lightning read GROUP_RANK

    in_batch, weight, masking, multi = CASES[case]
    encoder = make_encoder()
    loss, entropy = step(encoder, make_data(), in_batch, weight, masking, multi)
    two_node_loss = sum(r["loss"] for r in ranks) / NODES
    assert torch.allclose(two_node_loss, loss, atol=1e-5, rtol=0), (two_node_loss, loss)
    if weight:
        two_node_entropy = sum(r["entropy"] for r in ranks) / NODES
        assert torch.allclose(two_node_entropy, entropy, atol=1e-5, rtol=0)
    for single, g0, g1 in zip(encoder.parameters(), ranks[0]["grads"], ranks[1]["grads"], strict=True):
        assert torch.equal(g0, g1)  # DDP synchronised the gradients across the two nodes
        assert torch.allclose(g0, single.grad, atol=1e-5, rtol=0), (g0 - single.grad).abs().max()


def test_run_py_trains_on_two_torchrun_nodes(tmp_path: Path, tiny_beir: Path) -> None:
    """The documented launch, end to end: ``torchrun --nnodes 2 ... run.py trainer=ddp trainer.num_nodes=2``.

    Both ranks start together from an empty root (one creates the MLflow tables: a file lock), share one run
    folder, and finish; rank 0 alone records and closes the MLflow run and exports the model.
    """
    from tests.conftest import tiny_overrides
    from tests.faults import RUN_PY, all_runs, child_env

    root, port = tmp_path / "root", free_port()
    overrides = [
        *tiny_overrides(root, tiny_beir),
        f"hydra.run.dir={root / 'run'}",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", f"trainer.num_nodes={NODES}",
        "trainer.precision=32-true",
    ]  # fmt: skip
    env = {**child_env(), "GLOO_SOCKET_IFNAME": "lo", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=causalneg-run-py",
        "--max-restarts=0", str(RUN_PY), *overrides,
    ]  # fmt: skip
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(NODES)
    ]
    outputs = [proc.communicate(timeout=300)[0].decode(errors="replace") for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    runs = all_runs(root)
    assert [r.info.status for r in runs] == ["FINISHED"]
    recorded = json.loads((root / "run" / "mlflow_run.json").read_text())
    assert recorded["run_id"] == runs[0].info.run_id
    assert (root / "run" / "model").is_dir()
