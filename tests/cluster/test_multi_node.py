"""A real multi-node Ray cluster on this machine (cluster/local_cluster.py: a head and node pools L4 and
H100, each node its own raylet and object store): the app deployed as an operator would, with
serve/config.hetero-gpu.yaml's placement, puts each stage on its pool and edits cross nodes; the
Denoiser's node is killed under load (cluster/bench/node_loss.py's measurement) and no request is
lost; a bulk job loses a node and still writes every row once."""

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from cluster.bench.common import input_image, served_app
from cluster.bench.node_loss import EDIT, POOLS, app_placement, hetero_placement, node_loss_under_load, references, replica_nodes
from cluster.local_cluster import actor_nodes, local_cluster
from tests.cluster.test_bulk import check_exactly_once, wait_for_images
from tests.helpers import image_bytes, random_image, wait_until

CLIENTS, SECONDS, KILL_AFTER = 8, 60, 10


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(POOLS) as running:
        yield running


@pytest.fixture(scope="module")
def app(cluster, tiny_checkpoints):
    with served_app(tiny_checkpoints["edit-plus"], ray_address=cluster.address, actor_options=app_placement()) as served:
        yield served


@pytest.fixture(scope="module")
def photo() -> bytes:
    return input_image(64)


@pytest.fixture(scope="module")
def expected(app, photo) -> dict[int, str]:
    return references(app.base, photo)


def test_each_stage_runs_on_its_pool_and_edits_cross_nodes(cluster, app, expected):
    placement = hetero_placement()
    nodes = {stage: replica_nodes(stage) for stage in placement}
    for stage, options in placement.items():
        assert [cluster.pool_of(node) for node in nodes[stage]] == [options["accelerator_type"]], (stage, nodes)
    assert nodes["encoder"] != nodes["denoiser"] != nodes["decoder"]  # an edit went L4 -> H100 -> L4
    assert all(expected.values())  # every reference edit succeeded


def test_the_denoiser_s_node_lost_under_load_loses_no_request(cluster, app, photo, expected):
    report = node_loss_under_load(cluster, app.base, photo, CLIENTS, SECONDS, KILL_AFTER)
    summary = report.summary()
    print("node loss:", summary)  # the README's figures come from cluster/bench/node_loss.py
    assert summary["status_codes"] == {200: len(report.edits)}, summary  # a spare node took the replica
    assert summary["retried"] >= 1, summary  # the requests in the Denoiser when it died were made again
    timeout = float(EDIT["timeout"])
    assert all(edit.ended - edit.started < timeout for edit in report.edits), summary
    assert all(edit.image == expected[edit.seed] for edit in report.edits)  # retried or not, the same image
    assert report.replica_moved_s is not None and report.replica_moved_s < 60, summary
    # /healthz kept saying 200 while a replica started on the spare node (it said 503 for 7-14 s when
    # it counted a stage replacing a lost replica as down).
    assert report.healthz_down_s < 5 and requests.get(f"{app.base}/healthz", timeout=5).status_code == 200, summary
    (node,) = replica_nodes("denoiser")
    assert node != report.node and cluster.pool_of(node) == "H100"
    wait_until(lambda: stage_retries(cluster) >= summary["retried"], "the retries did not reach the metrics export", 30)


def stage_retries(cluster) -> float:
    """The ingress's stage_retries counter, summed over stages, from the head node's metrics export."""
    lines = requests.get(cluster.head_metrics, timeout=5).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("ray_image_edit_stage_retries_total{"))


def test_a_bulk_job_that_loses_a_node_writes_every_row_once(cluster, app, tiny_checkpoints, tmp_path):
    """Ray Data restarts the dead node's actor on another node of its pool and re-runs what was lost;
    images are written atomically and results only by the driver, so every row is there once."""
    cluster.add_node("H100")  # a spare again: the first one now holds the app's Denoiser
    manifest = bulk_manifest(tmp_path / "in", rows=24)
    out = tmp_path / "out"
    placement = hetero_placement()
    command = [sys.executable, "-m", "cluster.bulk", "--manifest", str(manifest), "--output", str(out),
               "--model", tiny_checkpoints["edit-plus"], "--num-inference-steps", "2", "--decoder-batch-size", "4"]
    for stage, options in placement.items():
        command += [f"--{stage}-accelerator-type", options["accelerator_type"]]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           env={**os.environ, "RAY_ADDRESS": cluster.address})
    try:
        wait_for_images(job, out, 4)
        (node,) = actor_nodes("DenoiseActor")
        assert cluster.pool_of(node) == "H100"
        cluster.kill_node(node)
        output, _ = job.communicate(timeout=480)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, output[-4000:]
    check_exactly_once(out, manifest, failing={})
    wait_until(lambda: requests.get(f"{app.base}/healthz", timeout=5).status_code == 200, "the app did not recover", 60)


def test_a_stage_with_no_room_for_its_replacement_answers_a_fast_503(cluster, app, photo):
    """With the Denoiser's node killed and no node of its pool left, requests waited out their whole
    deadline (504s) while /healthz said 200. Now: /healthz names the stage, an edit gets a fast 503 with
    Retry-After, and once a node joins the app serves again."""
    for node in list(cluster.pools["H100"]):
        cluster.kill_node(node.node_id)
    health = lambda: requests.get(f"{app.base}/healthz", timeout=10)  # noqa: E731
    wait_until(lambda: health().status_code == 503 and "Denoiser stage has no running replica" in health().text,
               "/healthz never said the Denoiser can't be placed", 90, 1)
    started = time.monotonic()
    response = requests.post(f"{app.base}/v1/images/edits", files={"image": ("p.png", photo, "image/png")}, data=EDIT, timeout=60)
    assert response.status_code == 503 and "no capacity" in response.json()["error"]["message"], response.text
    assert int(response.headers["Retry-After"]) >= 5 and time.monotonic() - started < 5
    cluster.add_node("H100")
    wait_until(lambda: health().status_code == 200, "the app did not recover once a node joined", 120, 1)
    response = requests.post(f"{app.base}/v1/images/edits", files={"image": ("p.png", photo, "image/png")}, data=EDIT, timeout=120)
    assert response.status_code == 200, response.text


def bulk_manifest(root, rows: int):
    (root / "imgs").mkdir(parents=True)
    for i in range(rows):
        (root / "imgs" / f"{i}.png").write_bytes(image_bytes(random_image(64, 48, seed=i)))
    table = pa.Table.from_pylist([{"id": f"row-{i}", "image": f"imgs/{i}.png", "instruction": f"edit {i}", "seed": i} for i in range(rows)])
    pq.write_table(table, root / "manifest.parquet")
    return root / "manifest.parquet"
