"""embtab.distributed across several Ray nodes (``ray.cluster_utils.Cluster``: a head and worker
raylets on this machine), on a cluster the user connected to, and starting Ray itself."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Iterator

import numpy as np
import pytest

import embtab

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from embtab.distributed import ShardedTable, ShardLost  # noqa: E402


@pytest.fixture(scope="module")
def no_ray(_ray_session: Any) -> None:
    if ray.is_initialized():
        ray.shutdown()  # the session's local instance; the next module that needs it starts it again


def test_without_ray_initialized_it_starts_ray_and_says_so(no_ray: None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = ("import numpy as np\nfrom embtab.distributed import ShardedTable\n"
            "t = ShardedTable(10, 4, num_shards=2)\nprint(t.gather(np.arange(10)).shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(10, 4)"
    assert "embtab.distributed: Ray is not initialized in this process; calling ray.init()" in done.stderr
    assert "Started a local Ray instance" in done.stderr  # Ray's own line: no cluster was running
    assert "embtab.distributed: using the Ray cluster at" in done.stderr


@pytest.fixture(scope="module")
def nodes(no_ray: None) -> Iterator[Any]:
    """Four single-CPU nodes: three for the shards (``num_cpus=1`` each: one per node) and a spare
    that a shard moves to when its node goes."""
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_shards_on_separate_nodes_and_a_lost_node(nodes: Any, tmp_path: Any, capfd: Any) -> None:
    path = str(tmp_path / "ck")
    hyper = {"lr": 0.1}
    table = ShardedTable(1000, 16, num_shards=3, optimizer=("rowwise_adagrad", hyper), seed=1, checkpoint_dir=path,
                         actor_options={"num_cpus": 1})
    assert "embtab.distributed" not in capfd.readouterr().err  # Ray was initialized by the user: no message
    stats = table.stats()
    assert len({e["node_id"] for e in stats}) == 3 and all(e["threads"] == 1 for e in stats)

    local = table.to_numpy()
    opt = embtab.optim.RowWiseAdagrad(local, **hyper)
    rng = np.random.default_rng(0)
    for _ in range(10):
        ids = rng.integers(0, 1000, (32, 5))
        grad_out = rng.standard_normal((32, 16)).astype(np.float32)
        np.testing.assert_allclose(table.gather_bags(ids, mode="mean"), embtab.gather_bags(local, ids, mode="mean"),
                                   rtol=1e-6, atol=1e-6)
        table.step_bags(grad_out, ids, mode="mean")
        opt.step_bags(grad_out, ids, mode="mean")
    assert table.to_numpy().tobytes() == local.tobytes()
    table.save()

    # The node of a shard goes away (a worker node: the head cannot be removed). Ray restarts the
    # shard on the node that is free, from the checkpoint.
    workers = {n.node_id: n for n in nodes.worker_nodes}
    shard = next(e["shard"] for e in stats if e["node_id"] in workers)
    gone = stats[shard]["node_id"]
    nodes.remove_node(workers[gone])
    with pytest.raises(ShardLost) as info:
        table.gather(np.arange(1000))
    assert info.value.lost == {shard: 10}
    moved = table.stats()[shard]
    assert moved["alive"] and moved["node_id"] != gone
    np.testing.assert_array_equal(table.gather(np.arange(1000)), local)
    table.close()
