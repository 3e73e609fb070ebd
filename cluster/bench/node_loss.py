"""A node lost under load, measured on a multi-node Ray cluster on this machine (cluster/local_cluster.py):

    python -m cluster.bench.node_loss [--clients 8] [--seconds 60] [--kill-after 10]

The app runs with serve/config.yaml's settings and serve/config.hetero-gpu.yaml's placement (Encoders
and Decoders on the L4 pool, Denoisers on the H100 pool; pools are custom resources here) and the
tiny model, deployed as an operator would (`RAY_ADDRESS=... python -m serve`). `clients` threads send
edits for `seconds`; after `kill_after` seconds the node holding the Denoiser is killed (raylet,
object store and workers SIGKILLed). Prints what every client got and when the cluster recovered:
node declared dead, Denoiser running on the spare node, /healthz answering 200 again.
tests/cluster/test_multi_node.py runs the same measurement and holds it to the README's promises.
"""

import argparse
import base64
import hashlib
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import requests
import yaml

from cluster.bench.common import input_image, served_app
from cluster.local_cluster import LocalCluster, actor_nodes, local_cluster
from deployments.checkpoints.generated import ensure_generated
from deployments.settings.environment import DEFAULT_MODEL_DIR

HETERO = Path(__file__).resolve().parents[2] / "serve" / "config.hetero-gpu.yaml"
STAGE_ACTORS = {"encoder": "Encoder", "denoiser": "Denoiser", "decoder": "Decoder"}  # Serve deployment names
POOLS = {"L4": 2, "H100": 2}  # each pool: a node for its stage(s) and a spare
EDIT = {"prompt": "make it a watercolor", "num_inference_steps": "8", "size": "64x64", "timeout": "90"}
SEEDS = 4  # the clients cycle through these seeds, so every image has a reference


def hetero_placement() -> dict[str, dict]:
    """Each stage's pool in serve/config.hetero-gpu.yaml, as `ray_actor_options` without GPUs."""
    (app,) = yaml.safe_load(HETERO.read_text())["applications"]
    return {stage: {"accelerator_type": app["args"][stage]["deployment"]["ray_actor_options"]["accelerator_type"], "num_gpus": 0}
            for stage in STAGE_ACTORS}


def app_placement() -> dict[str, dict]:
    """`ray_actor_options` updates for the app here: the stages on their pools, the ingress (one
    replica) on the head node, so that the node killed holds only the stage it is killed for."""
    return {**hetero_placement(), "ingress": {"resources": {"node:__internal_head__": 0.001}}}


def replica_nodes(stage: str, app: str = "edit") -> list[str]:
    return actor_nodes(f"ServeReplica:{app}:{STAGE_ACTORS[stage]}")


@dataclass
class Edit:
    seed: int
    started: float
    ended: float
    status: int
    retried: str  # the X-Stage-Retries header: stages made again after a lost replica
    image: str  # a digest of the returned image ("" when none)


@dataclass
class NodeLoss:
    """What clients got and how the cluster recovered, in seconds since the kill."""

    edits: list[Edit] = field(default_factory=list)
    killed_at: float = 0.0
    node: str = ""  # the killed node's id
    node_dead_s: float | None = None
    replica_moved_s: float | None = None
    healthz_back_s: float = 0.0  # when /healthz last turned 200 again (0: it never said no)
    healthz_down_s: float = 0.0  # how long /healthz said no after the kill, in all
    healthz_said: set[str] = field(default_factory=set)  # what it said when it said no

    def summary(self) -> dict:
        codes: dict[int, int] = {}
        for edit in self.edits:
            codes[edit.status] = codes.get(edit.status, 0) + 1
        around = [e for e in self.edits if e.started <= self.killed_at <= e.ended]
        retried = [e for e in self.edits if e.retried]
        return {
            "requests": len(self.edits), "status_codes": codes, "retried": len(retried),
            "in_flight_at_kill": len(around),
            "slowest_retried_s": round(max((e.ended - e.started for e in retried), default=0), 2),
            "slowest_other_s": round(max((e.ended - e.started for e in self.edits if not e.retried), default=0), 2),
            "median_s": round(statistics.median(e.ended - e.started for e in self.edits), 2) if self.edits else None,
            "node_dead_s": _round(self.node_dead_s), "replica_moved_s": _round(self.replica_moved_s),
            "healthz_back_s": round(self.healthz_back_s, 2), "healthz_down_s": round(self.healthz_down_s, 2),
            "healthz_said": sorted(self.healthz_said),
        }


def _round(value: float | None):
    return None if value is None else round(value, 2)


def digest(response: requests.Response) -> str:
    if response.status_code != 200:
        return ""
    return hashlib.sha256(base64.b64decode(response.json()["data"][0]["b64_json"])).hexdigest()


def references(base: str, image: bytes) -> dict[int, str]:
    """Each seed's image digest, from an undisturbed cluster."""
    return {seed: digest(_post(base, image, seed)) for seed in range(SEEDS)}


def _post(base: str, image: bytes, seed: int) -> requests.Response:
    files = [("image", ("photo.png", image, "image/png"))]
    return requests.post(f"{base}/v1/images/edits", files=files, data={**EDIT, "seed": str(seed)}, timeout=float(EDIT["timeout"]) + 30)


def node_loss_under_load(cluster: LocalCluster, base: str, image: bytes, clients: int, seconds: float, kill_after: float,
                         stage: str = "denoiser", watch_s: float = 60) -> NodeLoss:
    """`clients` editing for `seconds`; the node of `stage`'s replica killed after `kill_after`; the
    recovery watched for up to `watch_s` after the kill."""
    report = NodeLoss()
    lock = threading.Lock()
    started = time.monotonic()

    def client(index: int) -> None:
        n = index
        while time.monotonic() - started < seconds:
            seed = n % SEEDS
            n += clients
            began = time.monotonic()
            try:
                response = _post(base, image, seed)
                status, retried, image_digest = response.status_code, response.headers.get("X-Stage-Retries", ""), digest(response)
            except requests.RequestException:
                status, retried, image_digest = 0, "", ""
            with lock:
                report.edits.append(Edit(seed, began, time.monotonic(), status, retried, image_digest))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(kill_after)
    (report.node,) = replica_nodes(stage)
    report.killed_at = time.monotonic()
    cluster.kill_node(report.node)
    _watch_recovery(report, base, stage, watch_s)
    for thread in threads:
        thread.join()
    return report


def _watch_recovery(report: NodeLoss, base: str, stage: str, watch_s: float) -> None:
    def since_kill() -> float:
        return time.monotonic() - report.killed_at

    down_since = None
    while since_kill() < watch_s and (None in (report.node_dead_s, report.replica_moved_s) or down_since is not None):
        if report.node_dead_s is None and not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == report.node):
            report.node_dead_s = since_kill()
        if report.replica_moved_s is None and any(node != report.node for node in replica_nodes(stage)):
            report.replica_moved_s = since_kill()
        try:
            health = requests.get(f"{base}/healthz", timeout=5)
            healthy = health.status_code == 200
            if not healthy:
                report.healthz_said.add(health.json()["error"]["message"])
        except requests.RequestException as e:
            healthy = False
            report.healthz_said.add(repr(e))
        now = since_kill()
        if not healthy and down_since is None:
            down_since = now
        elif healthy and down_since is not None:
            report.healthz_down_s += now - down_since
            report.healthz_back_s, down_since = now, None
        time.sleep(0.25)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--kill-after", type=float, default=10)
    p.add_argument("--stage", choices=tuple(STAGE_ACTORS), default="denoiser", help="whose node is killed")
    args = p.parse_args()
    model = str(DEFAULT_MODEL_DIR)
    ensure_generated(model)
    with local_cluster(POOLS) as cluster, served_app(model, ray_address=cluster.address, actor_options=app_placement()) as app:
        image = input_image(64)
        expected = references(app.base, image)
        report = node_loss_under_load(cluster, app.base, image, args.clients, args.seconds, args.kill_after, args.stage)
    summary = report.summary()
    summary["wrong_images"] = sum(1 for e in report.edits if e.status == 200 and e.image != expected[e.seed])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
