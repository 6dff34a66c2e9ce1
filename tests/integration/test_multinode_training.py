"""Two "nodes" of one process each on localhost (``torchrun --nnodes 2``, gloo) ≡ one process.

Two separate ``torchrun`` launchers (node ranks 0 and 1) meet through a c10d rendezvous on 127.0.0.1, as two
machines would; each starts one rank of ``lightning.Trainer(num_nodes=2, devices=1, strategy="ddp")``
(:mod:`tests.integration.multinode_worker`). The mean of the two ranks' losses and DDP's averaged gradients
must equal the loss and gradients of one process on the concatenated batch
(:mod:`tests.integration.test_ddp_equivalence`'s data: uneven K per rank, cross-rank in-batch negatives,
query-view entropy).
"""

from __future__ import annotations

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


@pytest.mark.parametrize("case", ["in_batch+entropy", "in_batch+masking"])
def test_two_nodes_match_single_process(tmp_path: Path, case: str) -> None:
    launch_two_nodes(tmp_path, case)
    ranks = [torch.load(tmp_path / f"{case}.rank{r}.pt") for r in range(NODES)]
    assert [r["world_size"] for r in ranks] == [NODES, NODES]
    assert sorted(r["node_rank"] for r in ranks) == [0, 1]  # one rank per node: Lightning read GROUP_RANK

    in_batch, weight, masking = CASES[case]
    encoder = make_encoder()
    loss, entropy = step(encoder, make_data(), in_batch, weight, masking)
    two_node_loss = sum(r["loss"] for r in ranks) / NODES
    assert torch.allclose(two_node_loss, loss, atol=1e-5, rtol=0), (two_node_loss, loss)
    if weight:
        two_node_entropy = sum(r["entropy"] for r in ranks) / NODES
        assert torch.allclose(two_node_entropy, entropy, atol=1e-5, rtol=0)
    for single, g0, g1 in zip(encoder.parameters(), ranks[0]["grads"], ranks[1]["grads"], strict=True):
        assert torch.equal(g0, g1)  # DDP synchronised the gradients across the two nodes
        assert torch.allclose(g0, single.grad, atol=1e-5, rtol=0), (g0 - single.grad).abs().max()
