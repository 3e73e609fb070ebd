"""The bulk job end to end, as users run it (`python -m cluster.bulk`, its own local Ray cluster)."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cluster.bulk.storage import safe_name
from deployments.media import metadata
from deployments.stages.in_process import InProcessStages
from deployments.workflows import provenance
from tests.helpers import command_line, edit_request, image_bytes, random_image
from tests.serve.support import adapter_settings

GOOD_ROWS = 24  # enough that every fault below lands mid-job (~1.5 rows/s here)
BAD_ROWS = {  # id -> (image, instruction, size, expected error fragment)
    "missing-file": ("imgs/nope.png", "x", None, "could not be read"),
    "corrupt-file": ("imgs/corrupt.png", "x", None, "corrupt or truncated"),
    "html-as-png": ("imgs/page.png", "x", None, "not a recognizable PNG, JPEG or WebP image"),
    "empty-instruction": ("imgs/0.png", "", None, "prompt: must be a non-empty instruction"),
    "bad-size": ("imgs/1.png", "x", "huge", "size: must be 'auto' or WIDTHxHEIGHT"),
    "odd-size": ("imgs/2.png", "x", "100x64", "multiples of 8"),
}
EVIL_ID = "../../escape/../me"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bulk")
    (root / "imgs").mkdir()
    rows = []
    for i in range(GOOD_ROWS):
        (root / "imgs" / f"{i}.png").write_bytes(image_bytes(random_image(64, 48, seed=i)))
        rows.append({"id": f"row-{i}", "image": f"imgs/{i}.png", "instruction": f"edit number {i}", "seed": i, "size": None})
    rows.append({"id": EVIL_ID, "image": "imgs/3.png", "instruction": "an id that tries to escape", "seed": 3, "size": None})
    (root / "imgs" / "corrupt.png").write_bytes(image_bytes(random_image(64, 48))[:100])
    (root / "imgs" / "page.png").write_bytes(b"<html><body>not an image</body></html>")
    for row_id, (image, instruction, size, _) in BAD_ROWS.items():
        rows.append({"id": row_id, "image": image, "instruction": instruction, "seed": 1, "size": size})
    table = pa.Table.from_pylist(rows, schema=pa.schema(
        [("id", pa.string()), ("image", pa.string()), ("instruction", pa.string()), ("seed", pa.int64()), ("size", pa.string())]
    ))
    pq.write_table(table, root / "manifest.parquet")
    return root / "manifest.parquet"


def bulk_command(manifest: Path, out: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "cluster.bulk", "--manifest", str(manifest), "--output", str(out), "--model", model,
            "--num-inference-steps", "2", "--decoder-batch-size", "4"]


def results(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "results").to_pandas()


def check_exactly_once(out: Path, manifest: Path, failing=BAD_ROWS) -> pd.DataFrame:
    table = pq.read_table(out / "results").to_pandas()  # the results dataset, as any tool reads it
    expected = set(pq.read_table(manifest, columns=["id"]).column("id").to_pylist())
    assert sorted(table["id"]) == sorted(expected)  # every id, once
    ok = table[table["status"] == "ok"]
    assert set(ok["id"]) == expected - set(failing)
    for relative in ok["output"]:
        Image.open(out / relative).load()  # complete, decodable
    assert not list(out.rglob("*.partial"))
    return table


def test_bulk_job_edits_good_rows_reports_bad_ones_and_outlives_its_actors(manifest, tiny_checkpoints, tmp_path):
    """Rows failing in every stage become error rows, and every other row is edited, exactly once, with
    the Denoiser's and the Decoder's actors killed mid-job (one job, one start-up, for both).

    Failing rows: the reads and checks (BAD_ROWS), the Encoder (a too-thin image), the Denoiser (an
    adapter that can't be loaded) and the Decoder (an image whose path is taken by a folder). Killed
    actors: Ray Data restarts a dead actor and retries its batch; a retried decode rewrites the same
    file atomically, and only the driver writes results, so no row is lost or written twice."""
    model = tiny_checkpoints["edit-plus"]
    table = pq.read_table(manifest)
    table = table.append_column("lora", pa.nulls(len(table), pa.string()))
    (manifest.parent / "imgs" / "thin.png").write_bytes(image_bytes(random_image(400, 16)))
    later_stages = pa.Table.from_pylist([
        {"id": "thin-image", "image": "imgs/thin.png", "instruction": "x", "seed": 1, "size": "auto", "lora": None},
        {"id": "broken-adapter", "image": "imgs/4.png", "instruction": "x", "seed": 4, "size": None, "lora": '[{"name": "broken"}]'},
    ], schema=table.schema)
    staged = manifest.parent / "all-stages.parquet"
    pq.write_table(pa.concat_tables([table, later_stages]), staged)
    (manifest.parent / "adapters.yaml").write_text(yaml.safe_dump(adapter_settings(model)))
    out = tmp_path / "out"
    (out / "images" / f"{safe_name('row-5')}.png").mkdir(parents=True)
    failing = {
        **{row_id: fragment for row_id, (*_, fragment) in BAD_ROWS.items()},
        "thin-image": "aspect ratio", "broken-adapter": "LoRA adapter 'broken' could not be loaded",
        "row-5": "could not be written",
    }

    command = bulk_command(staged, out, model) + ["--adapters", str(manifest.parent / "adapters.yaml")]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_images(job, out, 5)  # row-5's folder and 4 images
        workers = [p for p in psutil.Process(job.pid).children(recursive=True)
                   if any(f"MapBatches({actor})" in command_line(p) for actor in ("DenoiseActor", "DecodeActor"))]
        assert len(workers) == 2, [command_line(p) for p in workers]
        for worker in workers:
            worker.kill()
        output, _ = job.communicate(timeout=480)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 1, output[-4000:]  # some rows are errors; everything else was edited
    table = check_exactly_once(out, staged, failing)
    errors = table.set_index("id").loc[list(failing)]
    for row_id, fragment in failing.items():
        assert errors.loc[row_id, "status"] == "error" and fragment in errors.loc[row_id, "error"], (row_id, errors.loc[row_id, "error"])
    assert set(p.name for p in tmp_path.iterdir()) == {"out"}  # the escaping id wrote inside OUT only
    assert "skipped" in output and "rows/s" in output  # the summary table

    # A bulk row's image is the engine's (and so the online endpoint's) image for the same inputs.
    row = table.set_index("id").loc["row-7"]
    request = edit_request(model, [(manifest.parent / "imgs" / "7.png").read_bytes()], prompt="edit number 7", seed=7,
                           num_inference_steps=2)
    expected = InProcessStages(model).edit(request.parameters).data
    bulk = np.asarray(Image.open(out / row["output"]), dtype=np.int16)
    assert np.abs(bulk - np.asarray(Image.open(io.BytesIO(expected)), dtype=np.int16)).max() <= 1


def wait_for_images(job: subprocess.Popen, out: Path, count: int) -> None:
    deadline = time.monotonic() + 300
    while len(list((out / "images").glob("*.png"))) < count:
        assert job.poll() is None, "the job ended before the fault could be injected"
        assert time.monotonic() < deadline, "no images appeared"
        time.sleep(0.2)


def test_killed_job_resumes_to_exactly_once(manifest, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    command = bulk_command(manifest, out, tiny_checkpoints["edit-plus"])
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_images(job, out, 8)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    time.sleep(3)  # let the killed driver's local Ray cluster go down

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=480)
    assert rerun.returncode == 1, rerun.stderr[-4000:]
    check_exactly_once(out, manifest)


def ip2p_manifest(root: Path, **extra_columns) -> Path:
    (root / "imgs").mkdir(parents=True)
    rows = []
    for i in range(6):
        (root / "imgs" / f"{i}.png").write_bytes(image_bytes(random_image(48 + 8 * i, 40, seed=i)))
        rows.append({"id": f"pix-{i}", "image": f"imgs/{i}.png", "instruction": f"make it snow, {i}", "seed": i,
                     "guidance_scale": [None, 1.0, 9.0, 7.5, None, 5.0][i], "image_guidance_scale": [None, 1.5, 1.0, 2.0, 1.2, None][i],
                     "size": "64x64" if i == 5 else None, **{name: value[i] for name, value in extra_columns.items()}})
    path = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_bulk_job_with_instruct_pix2pix_takes_its_guidance_per_row(tiny_checkpoints, tmp_path):
    manifest, out, model = ip2p_manifest(tmp_path / "in"), tmp_path / "out", tiny_checkpoints["ip2p"]
    done = subprocess.run(bulk_command(manifest, out, model), capture_output=True, text=True, timeout=480)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-4000:]  # the row asking for a size is an error
    table = results(out).set_index("id").sort_index()
    assert list(table["status"]) == ["ok"] * 5 + ["error"]
    assert "size: InstructPix2Pix models edit at the input image's size" in table.loc["pix-5", "error"]
    # Effective parameters: the row's own, else the family's defaults (7.5 and 1.5); no Qwen field.
    assert list(table["guidance_scale"][:5]) == [7.5, 1.0, 9.0, 7.5, 7.5]
    assert list(table["image_guidance_scale"][:5]) == [1.5, 1.5, 1.0, 2.0, 1.2]
    assert "true_cfg_scale" not in table and table["negative_prompt"].isna().all()

    # A row's image is the engine's (which equals diffusers', tests/engine/test_instruct_pix2pix.py).
    request = edit_request(model, [(manifest.parent / "imgs" / "2.png").read_bytes()], prompt="make it snow, 2", seed=2,
                           num_inference_steps=2, guidance_scale=9.0, image_guidance_scale=1.0)
    expected = InProcessStages(model).edit(request.parameters).data
    bulk = np.asarray(Image.open(out / table.loc["pix-2", "output"]), dtype=np.int16)
    assert bulk.shape == (40, 64, 3)  # the input's size
    assert np.abs(bulk - np.asarray(Image.open(io.BytesIO(expected)), dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("extra, flags, fragment", [
    ({"true_cfg_scale": [4.0] * 6}, [], "column 'true_cfg_scale' does not apply to InstructPix2Pix models"),
    ({}, ["--true-cfg-scale", "4"], "--true-cfg-scale: true_cfg_scale: does not apply to InstructPix2Pix models"),
    ({}, ["--guidance-scale", "90"], "--guidance-scale: guidance_scale: must be a finite number in [0, 20], got 90"),
])
def test_bulk_job_refuses_the_other_family_s_fields_before_any_work(tiny_checkpoints, tmp_path, capsys, extra, flags, fragment):
    """The command's own checks, before any work (and any Ray): run in this process to spare a start-up."""
    from cluster.bulk.__main__ import main

    manifest = ip2p_manifest(tmp_path / "in", **extra)
    returncode = main(bulk_command(manifest, tmp_path / "out", tiny_checkpoints["ip2p"])[3:] + flags)
    stderr = capsys.readouterr().err
    assert returncode == 2 and fragment in stderr, stderr[-2000:]
    assert not list((tmp_path / "out" / "results").glob("*.parquet"))


def test_bulk_rows_take_mask_cache_and_lora_columns(tiny_checkpoints, tmp_path):
    """Per-row columns of three kinds in one job (one start-up), each group of rows setting the others off.

    - `mask` (paths; null: no mask) with `strength` and `placement`: masked rows are the engine's masked
      edits, outpainting rows have their size, and a mask problem fails its row alone, naming `mask`.
    - `cache` (the API's JSON), `--cache` for rows without one: results record the setting used and the
      row's model forwards.
    - `lora` (the API's JSON), `--lora` for rows without one, `--adapters` naming what is offered (a
      Serve config's lora settings): results record the adapters used, scales resolved.
    A row's image is the engine's for the same request."""
    from deployments.settings.lora import LoraSettings
    from tests.engine.test_masked_edits import area, openai_mask

    model = tiny_checkpoints["edit-plus"]
    settings = adapter_settings(model)
    (tmp_path / "adapters.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "in.png").write_bytes(image_bytes(random_image(96, 64, seed=3)))
    (tmp_path / "mask.png").write_bytes(openai_mask(area("irregular")))
    (tmp_path / "cached.png").write_bytes(image_bytes(random_image(64, 48, seed=2)))
    (tmp_path / "adapted.png").write_bytes(image_bytes(random_image(64, 48, seed=1)))
    taylorseer = '{"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2}'
    no_cache_no_adapter = {"cache": "off", "lora": "[]", "num_inference_steps": 2}
    masked_rows = [  # id, mask, strength, size, placement
        ("masked", "mask.png", 0.7, None, None),
        ("plain", None, None, None, None),
        ("outpainted", None, 1.0, "128x80", "16,8"),
        ("missing-mask", "nope.png", None, None, None),
        ("mask-without-alpha", "in.png", None, None, None),
    ]
    cached_rows = {"fbc": '{"method": "first_block_cache", "threshold": 0.5}', "default": None, "off": "off",
                   "too-aggressive": '{"method": "first_block_cache", "threshold": 0.9}'}  # id -> cache (6 steps)
    adapted_rows = {  # id -> lora
        "style": '[{"name": "style", "scale": 1.5}]', "stacked": '[{"name": "style"}, {"name": "detail"}]',
        "no-lora": None, "unknown": '[{"name": "nope"}]', "broken": '[{"name": "broken"}]',
    }
    rows = [{"id": i, "image": "in.png", "mask": m, "strength": s, "size": z, "placement": p, **no_cache_no_adapter}
            for i, m, s, z, p in masked_rows]
    rows += [{"id": i, "image": "cached.png", "cache": cache, "lora": "[]"} for i, cache in cached_rows.items()]
    rows += [{"id": i, "image": "adapted.png", "lora": lora, "cache": "off", "num_inference_steps": 2} for i, lora in adapted_rows.items()]
    table = pa.Table.from_pylist(
        [{"instruction": "make it autumn", **row} for row in rows],
        schema=pa.schema([("id", pa.string()), ("image", pa.string()), ("instruction", pa.string()), ("mask", pa.string()),
                          ("strength", pa.float64()), ("size", pa.string()), ("placement", pa.string()), ("cache", pa.string()),
                          ("lora", pa.string()), ("num_inference_steps", pa.int64())]),
    )
    pq.write_table(table, tmp_path / "manifest.parquet")
    out = tmp_path / "out"
    command = bulk_command(tmp_path / "manifest.parquet", out, model) + [
        "--cache", taylorseer, "--num-inference-steps", "6",
        "--adapters", str(tmp_path / "adapters.yaml"), "--lora", '[{"name": "detail"}]']
    done = subprocess.run(command, capture_output=True, text=True, timeout=480)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-4000:]  # five rows are errors
    results = pq.read_table(out / "results").to_pandas().set_index("id")

    lora = LoraSettings.model_validate(settings).offering_checkpoint_adapters(Path(model))

    def engine_image(image: str, **values) -> np.ndarray:
        request = edit_request(model, [(tmp_path / image).read_bytes()], lora, prompt="make it autumn", seed=0, **values)
        return np.asarray(Image.open(io.BytesIO(InProcessStages(model, lora).edit(request.parameters).data)), dtype=np.int16)

    def bulk_image(row_id: str) -> np.ndarray:
        return np.asarray(Image.open(out / results.loc[row_id, "output"]), dtype=np.int16)

    assert "mask: 'nope.png' could not be read (not found)" in results.loc["missing-mask", "error"]
    assert "mask: has no alpha channel" in results.loc["mask-without-alpha", "error"]
    assert list(results.loc[["masked", "plain", "outpainted"], "status"]) == ["ok"] * 3
    assert list(results.loc[["masked", "plain", "outpainted"], "strength"]) == [0.7, 0.6, 1.0]  # as used
    assert results.loc["outpainted", "placement"] == "16,8"
    assert Image.open(out / results.loc["outpainted", "output"]).size == (128, 80)
    masked = engine_image("in.png", num_inference_steps=2, mask=(tmp_path / "mask.png").read_bytes(), strength=0.7)
    assert np.abs(bulk_image("masked") - masked).max() <= 1

    assert "cache: threshold may be at most 0.5 on this deployment" in results.loc["too-aggressive", "error"]
    assert json.loads(results.loc["default", "cache"])["method"] == "taylorseer" and pd.isna(results.loc["off", "cache"])
    forwards = results.loc["default", ["cache_computed", "cache_reused", "cache_predicted"]].tolist()
    assert forwards == [8, 0, 4]  # two guidance rows; steps 0, 1, 3, 5 computed
    assert pd.isna(results.loc["off", "cache_computed"]) and results.loc["fbc", "cache_computed"] > 0
    assert np.abs(bulk_image("default") - engine_image("cached.png", num_inference_steps=6, cache=taylorseer)).max() <= 1

    assert results.loc["unknown", "status"] == "error" and "unknown adapter 'nope'" in results.loc["unknown", "error"]
    assert results.loc["broken", "status"] == "error" and "LoRA adapter 'broken' could not be loaded" in results.loc["broken", "error"]
    used = {row_id: json.loads(results.loc[row_id, "lora"]) for row_id in ("style", "stacked", "no-lora")}
    assert used == {
        "style": [{"name": "style", "scale": 1.5}],
        "stacked": [{"name": "style", "scale": 1.0}, {"name": "detail", "scale": 0.8}],
        "no-lora": [{"name": "detail", "scale": 0.8}],  # --lora, at the adapter's configured scale
    }
    stacked = engine_image("adapted.png", num_inference_steps=2, lora=adapted_rows["stacked"])
    assert np.abs(bulk_image("stacked") - stacked).max() <= 1


def test_bulk_rows_with_guards_and_chains_take_follow_up_passes(tiny_checkpoints, tmp_path):
    """`guard` and `chain` columns, in one job. Results carry every row's quality report and its guard's
    verdict; a row whose guard says retry is made again with the next seed, one whose guard fails is an
    error naming the guard; the summary counts flagged and retried rows. A chain's further links are
    further passes over the rows still in their chain, each editing the image the previous link wrote;
    the result is the last link's image, whose provenance records every link; a refused link fails its
    row before any work, a failing link names itself."""
    model = tiny_checkpoints["edit-plus"]
    upload = image_bytes(random_image(64, 48, seed=2))
    (tmp_path / "in.png").write_bytes(upload)
    stages = InProcessStages(model)

    def engine(image: bytes, prompt: str, seed: int, steps: int = 2):
        return stages.edit(edit_request(model, [image], prompt=prompt, seed=seed, num_inference_steps=steps).parameters)

    made = {seed: engine(upload, "make it autumn", seed) for seed in (0, 1)}
    changed = {seed: image.quality["changed_fraction"] for seed, image in made.items()}
    between = (changed[0] + changed[1]) / 2
    passes_only_seed_1 = {"max_changed_fraction": between} if changed[0] > changed[1] else {"min_changed_fraction": between}
    rows = {  # id -> (guard, chain)
        "plain": (None, None),
        "passed": ({"max_changed_fraction": 1}, None),
        "flagged": ({"max_changed_fraction": 0}, None),
        "retried": ({**passes_only_seed_1, "action": "retry"}, None),
        "retried-flagged": ({"max_changed_fraction": 0, "action": "retry"}, None),
        "failed": ({"max_changed_fraction": 0, "action": "fail"}, None),
        "chained": (None, ["add snow", {"prompt": "make it night", "seed": 4, "num_inference_steps": 3}]),
        "refused-link": (None, [{"prompt": "x", "num_inference_steps": 0}]),
        # the tiny model changes its own output little: a last link that must change half the image fails
        "failing-link": (None, [{"prompt": "add snow", "guard": {"min_changed_fraction": 0.5, "action": "fail"}}]),
    }
    table = pa.Table.from_pylist(
        [{"id": row_id, "image": "in.png", "instruction": "make it autumn", "guard": guard and json.dumps(guard),
          "chain": chain and json.dumps(chain)} for row_id, (guard, chain) in rows.items()],
        schema=pa.schema([("id", pa.string()), ("image", pa.string()), ("instruction", pa.string()), ("guard", pa.string()),
                          ("chain", pa.string())]),
    )
    pq.write_table(table, tmp_path / "manifest.parquet")
    out = tmp_path / "out"
    done = subprocess.run(bulk_command(tmp_path / "manifest.parquet", out, model), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-4000:]
    failing = {"failed", "refused-link", "failing-link"}
    table = check_exactly_once(out, tmp_path / "manifest.parquet", failing=failing).set_index("id")

    # Guards
    verdicts = {row_id: None if pd.isna(verdict) else verdict for row_id, verdict in table["guard_verdict"].items()}
    assert verdicts == {
        "plain": None, "passed": "passed", "flagged": "flagged", "retried": "retried", "retried-flagged": "flagged",
        "failed": "failed", "chained": None, "refused-link": None, "failing-link": "failed",
    }
    assert table.loc["failed", "error"].startswith("guard: the edited image crossed its limits (changed_fraction")
    assert pd.isna(table.loc["failed", "output"])
    assert table.loc["flagged", "guard_crossed"] == f"changed_fraction {table.loc['flagged', 'changed_fraction']:g} is above max_changed_fraction 0"
    assert table.loc[["retried", "retried-flagged"], "retried_from_seed"].tolist() == [0, 0]
    assert table.loc[["retried", "retried-flagged", "plain"], "seed"].tolist() == [1, 1, 0]
    assert table.loc["retried", "changed_fraction"] == pytest.approx(changed[1], abs=1e-3)
    for column, value in made[0].quality.items():  # the whole report, a column each (pixels may differ by 1 level)
        assert table.loc["plain", column] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-3))
    summary = done.stdout.splitlines()
    header = summary.index(next(line for line in summary if line.split()[:5] == ["ok", "error", "skipped", "flagged", "retried"]))
    assert summary[header + 1].split()[:5] == ["6", "3", "0", "2", "1"]
    record = metadata.read((out / table.loc["retried", "output"]).read_bytes())  # the image's record, also a column
    assert json.loads(table.loc["retried", "provenance"]) == record and record["parameters"]["seed"] == 1
    retried = np.asarray(Image.open(out / table.loc["retried", "output"]), dtype=np.int16)
    assert np.abs(retried - np.asarray(Image.open(io.BytesIO(made[1].data)), dtype=np.int16)).max() <= 1

    # Chains
    assert "chain: chain[0].num_inference_steps: must be an integer" in table.loc["refused-link", "error"]
    assert table.loc["failing-link", "error"].startswith("chain[0] (link 2 of 2): guard: the edited image crossed its limits")
    record = json.loads(table.loc["chained", "provenance"])
    links = [record["derived_from"]["derived_from"], record["derived_from"], record]
    assert [link["parameters"]["prompt"] for link in links] == ["make it autumn", "add snow", "make it night"]
    assert [link["parameters"]["seed"] for link in links] == [0, 0, 4] and table.loc["chained", "seed"] == 4
    intermediate = out / "images" / f"{safe_name('chained' + chr(0) + 'link2')}.png"  # link 2's image, link 3's input
    assert links[2]["inputs_sha256"]["image"] == [provenance.sha256(intermediate.read_bytes())]
    expected = engine(intermediate.read_bytes(), "make it night", 4, steps=3).data
    bulk = np.asarray(Image.open(out / table.loc["chained", "output"]), dtype=np.int16)
    assert np.abs(bulk - np.asarray(Image.open(io.BytesIO(expected)), dtype=np.int16)).max() <= 1
    # pass 2: the two retries and link 2 of both chains; pass 3: link 3 of "chained"
    assert "another pass for 4 row(s)" in done.stdout and "another pass for 1 row(s)" in done.stdout
