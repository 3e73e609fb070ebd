"""A multi-node Ray cluster on this one machine, for tests and benchmarks of placement and node loss.

Each node is a real Ray node (its own raylet, object store and workers), started by Ray's own
`ray.cluster_utils.Cluster`; all listen on this machine's own address (Ray advertises the interface
address whatever `node_ip_address` says: set to 127.0.0.1, joining processes could not reach the GCS). Node pools are GPU types: a node of a pool offers the resource
`accelerator_type:<type>`, exactly what Ray offers on a node with such a GPU, so a stage placed with
Ray's `accelerator_type` option (serve/config.hetero-gpu.yaml) lands on its pool here as on real GPUs.
"""

import contextlib
import os
import signal
import socket
from dataclasses import dataclass, field

import psutil
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

OBJECT_STORE_BYTES = 150 * 1024**2  # per node: the tiny model's tensors are small; /dev/shm is not


@dataclass
class LocalCluster:
    """A head node (the Serve controller, proxy and ingress; no pool) and worker nodes by pool."""

    cluster: Cluster
    head_metrics: str  # the head node's Prometheus export (its replicas' metrics: the ingress's)
    pools: dict[str, list] = field(default_factory=dict)  # accelerator type -> its nodes (ray's Node objects;
    # `Node.node_id` is the id the state API uses, `Node.unique_id` is not)

    @property
    def address(self) -> str:
        return self.cluster.address

    def pool_of(self, node_id: str) -> str | None:
        return next((pool for pool, nodes in self.pools.items() if any(n.node_id == node_id for n in nodes)), None)

    def add_node(self, pool: str, cpus: int = 2) -> None:
        """A new node in `pool` (accelerator type)."""
        node = self.cluster.add_node(num_cpus=cpus, resources={f"accelerator_type:{pool}": 1}, object_store_memory=OBJECT_STORE_BYTES)
        self.pools.setdefault(pool, []).append(node)
        self.cluster.wait_for_nodes()

    def kill_node(self, node_id: str) -> None:
        """The node is lost as a machine is: its raylet, object store and every worker SIGKILLed at once."""
        node = next(n for nodes in self.pools.values() for n in nodes if n.node_id == node_id)
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        for process in [*raylet.children(recursive=True), raylet]:
            with contextlib.suppress(psutil.NoSuchProcess):
                os.kill(process.pid, signal.SIGKILL)
        self.cluster.remove_node(node, allow_graceful=False)
        for nodes in self.pools.values():
            if node in nodes:
                nodes.remove(node)


@contextlib.contextmanager
def local_cluster(pools: dict[str, int], cpus_per_node: int = 2, head_cpus: int = 1):
    """A running LocalCluster with `pools` (accelerator type -> node count), this process connected to
    it; shut down however the caller ends (a dead head left behind breaks every later `ray.init`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        # The dashboard serves Ray's state API (which node runs which actor).
        "num_cpus": head_cpus, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "metrics_export_port": metrics_port,
    })
    try:
        local = LocalCluster(cluster, head_metrics=f"http://127.0.0.1:{metrics_port}/metrics")
        for pool, count in pools.items():
            for _ in range(count):
                local.add_node(pool, cpus_per_node)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield local
    finally:
        ray.shutdown()
        cluster.shutdown()


def actor_nodes(class_name_part: str) -> list[str]:
    """The node ids of the live actors whose class name contains `class_name_part` (e.g. a Serve
    replica's "ServeReplica:edit:Denoiser")."""
    return [a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000) if class_name_part in a.class_name]
