"""The bulk job on object storage: manifest, images and OUT in a real S3-compatible server (moto's
server mode, on loopback, started here), killed mid-job and resumed to exactly once."""

import io
import os
import signal
import subprocess
import sys
import time

import boto3
import pyarrow as pa
import pyarrow.dataset
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import image_bytes, random_image

ROWS = 16
MISSING = "row-missing"  # its image does not exist: an error row


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment that points boto3, pyarrow and the job's
    workers at it (and never at AWS)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        for bucket in ("catalog", "edited"):
            client.create_bucket(Bucket=bucket)
        for i in range(ROWS):
            client.put_object(Bucket="catalog", Key=f"imgs/{i}.png", Body=image_bytes(random_image(64, 48, seed=i)))
        rows = [{"id": f"row-{i}", "image": f"imgs/{i}.png", "instruction": f"edit number {i}", "seed": i} for i in range(ROWS)]
        rows.append({"id": MISSING, "image": "imgs/nope.png", "instruction": "x", "seed": 0})
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        client.put_object(Bucket="catalog", Key="manifest.parquet", Body=sink.getvalue().to_pybytes())
        yield client
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def command(model: str, out: str) -> list[str]:
    return [sys.executable, "-m", "cluster.bulk", "--manifest", "s3://catalog/manifest.parquet", "--output", out,
            "--model", model, "--num-inference-steps", "2", "--results-part-rows", "4", "--image-root", "s3://catalog/imgs"]


def keys(client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket="edited", Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def test_killed_job_on_object_storage_resumes_to_exactly_once(s3, tiny_checkpoints):
    out = "s3://edited/run"
    job = subprocess.Popen(command(tiny_checkpoints["edit-plus"], out), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(keys(s3, "run/results/part-")) < 1:  # killed once some rows are committed, most not
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no results appeared"
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    time.sleep(3)  # let the killed driver's local Ray cluster go down

    rerun = subprocess.run(command(tiny_checkpoints["edit-plus"], out), capture_output=True, text=True, timeout=480)
    assert rerun.returncode == 1, rerun.stdout[-2000:] + rerun.stderr[-4000:]  # the missing image
    assert "already ok" in rerun.stdout and not rerun.stdout.split("resuming: ")[1].startswith("0 id")

    filesystem = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region="us-east-1")
    table = pyarrow.dataset.dataset("edited/run/results", filesystem=filesystem, format="parquet").to_table().to_pandas()
    assert sorted(table["id"]) == sorted([f"row-{i}" for i in range(ROWS)] + [MISSING])  # every id, once
    results = table.set_index("id")
    assert results.loc[MISSING, "status"] == "error" and "could not be read (not found)" in results.loc[MISSING, "error"]
    ok = results[results["status"] == "ok"]
    assert len(ok) == ROWS
    for relative in ok["output"]:  # every ok image complete
        Image.open(io.BytesIO(s3.get_object(Bucket="edited", Key=f"run/{relative}")["Body"].read())).load()
    # Nothing else under OUT: no temp objects, no stray parts' leftovers.
    names = keys(s3, "run/")
    assert all(name.startswith("run/images/") or (name.startswith("run/results/part-") and name.endswith(".parquet")) for name in names)
    assert len([name for name in names if name.startswith("run/images/")]) == ROWS


def test_compacting_on_object_storage_leaves_nothing_but_images_and_parts(s3):
    """A resume rewrote parts that lost rows by deleting the old object, and pyarrow's S3 delete then
    wrote an empty folder-marker object `results/` into OUT. On object storage a part is replaced in
    place (one put), an emptied one included, and OUT holds only parts."""
    from cluster.bulk.results import ResultsWriter, compact, read_results
    from cluster.bulk.storage import Output
    from tests.cluster.test_bulk_results import QWEN, rows

    output = Output.at("s3://edited/compacted")
    writer = ResultsWriter(output, part_rows=2, part_seconds=60)
    writer.add(rows(["a", "b"], {"b": "image: could not be read"}))  # loses its error row
    writer.add(rows(["c", "d"], {"c": "x", "d": "y"}))  # loses every row
    writer.add(rows(["e", "f"]))  # untouched
    writer.flush()
    done = compact(output, QWEN)
    assert sorted(done.to_pylist()) == ["a", "e", "f"]
    assert sorted(read_results(output).column("id").to_pylist()) == ["a", "e", "f"]
    names = keys(s3, "compacted/")
    assert len(names) == 3 and all(name.startswith("compacted/results/part-") and name.endswith(".parquet") for name in names), names
