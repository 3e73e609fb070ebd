"""The bulk job's manifest contract, output rules, image reads and tally (no Ray, no model)."""

import os
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from cluster.bulk.image_reads import ImageReader, manifest_folder
from cluster.bulk.manifest import ManifestError, check_ids, check_schema
from cluster.bulk.storage import TEMP_SUFFIX, Output, safe_name
from cluster.bulk.tally import Tally
from deployments.errors import InvalidInputError, PayloadTooLargeError
from deployments.request.registry import DECLARATIONS
from deployments.settings.limits import Limits
from tests.helpers import image_bytes, random_image

QWEN, IP2P = DECLARATIONS["QwenImageEditPlusPipeline"], DECLARATIONS["StableDiffusionInstructPix2PixPipeline"]


def schema(**columns) -> pa.Schema:
    base = {"id": pa.string(), "image": pa.string(), "instruction": pa.string()}
    return pa.schema({**base, **columns}.items())


def test_a_valid_schema_passes():
    check_schema(schema(seed=pa.int64(), true_cfg_scale=pa.float32(), size=pa.string()), QWEN)
    check_schema(schema(image=pa.list_(pa.string())), QWEN)  # Edit-Plus: 1-3 images per row
    check_schema(schema(mask=pa.string(), strength=pa.float64(), placement=pa.string()), QWEN)  # masked edits
    check_schema(schema(guidance_scale=pa.float64(), image_guidance_scale=pa.int32()), IP2P)


def test_guidance_columns_of_the_other_family_are_refused():
    with pytest.raises(ManifestError, match="column 'true_cfg_scale' does not apply to InstructPix2Pix models"):
        check_schema(schema(true_cfg_scale=pa.float64()), IP2P)
    with pytest.raises(ManifestError, match="column 'image_guidance_scale' does not apply to Qwen-Image-Edit"):
        check_schema(schema(image_guidance_scale=pa.float64()), QWEN)
    with pytest.raises(ManifestError, match="column 'mask' does not apply to InstructPix2Pix models"):
        check_schema(schema(mask=pa.string()), IP2P)


def test_the_job_s_own_pass_columns_are_reserved():
    with pytest.raises(ManifestError, match="column 'pending_link' is reserved for the job's own passes"):
        check_schema(schema(pending_link=pa.int64()), QWEN)


def test_missing_and_mistyped_columns_are_all_named():
    bad = pa.schema([("id", pa.int64()), ("image", pa.int32()), ("seed", pa.string()), ("mask", pa.binary())])
    with pytest.raises(ManifestError) as info:
        check_schema(bad, QWEN)
    message = str(info.value)
    assert "missing required column 'instruction'" in message
    assert "'id' must be string, got int64" in message
    assert "'image' must be string or list<string>, got int32" in message
    assert "'seed' has type string; it must be integer" in message
    assert "'mask' must be string (a path or URI), got binary" in message


@pytest.mark.parametrize(
    "ids, fragment",
    [
        (["a", "b", "a", "c", "c"], "duplicate id(s) 'a', 'c'"),
        (["a", None], "1 row(s) have no id"),
        (["a", ""], "1 row(s) have an empty id"),
    ],
)
def test_bad_ids_are_refused(ids, fragment):
    with pytest.raises(ManifestError) as info:
        check_ids(pa.array(ids, pa.string()))
    assert fragment in str(info.value)


def test_many_duplicates_are_summarized():
    with pytest.raises(ManifestError) as info:
        check_ids(pa.array([str(i % 20) for i in range(40)]))
    assert "and 10 more" in str(info.value)


@pytest.mark.parametrize("row_id", ["../../etc/passwd", "/abs/path", ".hidden", "a/b", "a_b", "", "名前 with spaces", "x" * 500])
def test_safe_names_are_plain_distinct_file_names(row_id):
    name = safe_name(row_id)
    assert "/" not in name and not name.startswith(".") and len(name) <= 100
    assert name == safe_name(row_id)


def test_ids_that_sanitize_alike_stay_distinct():
    assert safe_name("a/b") != safe_name("a_b")
    assert safe_name("../x") != safe_name("x")


def test_nothing_is_written_outside_out_s_folders(tmp_path):
    output = Output.at(str(tmp_path / "out"))
    output.prepare()
    for relative in ("../escape.png", "images/../../escape.png", "images/a/b.png", "other/x.png", "images/.hidden", "images/"):
        with pytest.raises(ValueError, match="not a file name inside OUT"):
            output.write(relative, b"data")
    path = output.write(f"images/{safe_name('../../escape')}.png", b"data")
    assert open(path, "rb").read() == b"data" and path.startswith(str(tmp_path / "out" / "images"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (tmp_path / "out" / "images" / "taken.png").mkdir()  # a write that fails leaves no temp file
    with pytest.raises(OSError):
        output.write("images/taken.png", b"data")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted([os.path.basename(path), "taken.png"])


def test_partial_files_are_cleaned_in_out_s_own_folders_only(tmp_path):
    output = Output.at(str(tmp_path))
    output.prepare()
    for torn in (tmp_path / "images" / f".x.png.123{TEMP_SUFFIX}", tmp_path / "results" / f".part-1.parquet.9{TEMP_SUFFIX}"):
        torn.write_bytes(b"torn")
    theirs = tmp_path / "notes" / f"draft{TEMP_SUFFIX}"  # a user's file that happens to share the suffix
    theirs.parent.mkdir()
    theirs.write_bytes(b"keep me")
    output.write("images/y.png", b"whole")
    assert output.remove_partial_files() == 2
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["y.png"] and theirs.exists()
    assert output.files("images", ".png") == [str(tmp_path / "images" / "y.png")]


PNG = image_bytes(random_image(32, 32))  # ~3 KB


@pytest.fixture
def image_tree(tmp_path):
    (tmp_path / "catalog" / "imgs").mkdir(parents=True)
    (tmp_path / "catalog" / "imgs" / "a.png").write_bytes(PNG)
    (tmp_path / "catalog" / "manifest.parquet").write_bytes(b"")
    (tmp_path / "secret.png").write_bytes(image_bytes(random_image(8, 8)))
    return tmp_path


def test_relative_images_start_at_the_manifest_s_folder(image_tree):
    catalog = image_tree / "catalog"
    assert manifest_folder(str(catalog / "manifest.parquet")) == str(catalog)  # a file: its folder
    assert manifest_folder(str(catalog)) == str(catalog)  # a directory: itself
    reader = ImageReader(str(catalog), Limits(max_image_bytes=4096))
    assert reader.read("imgs/a.png") == PNG
    assert reader.read(str(catalog / "imgs" / "a.png")) == PNG  # absolute paths as they are
    assert reader.locate("imgs/../imgs/a.png") == str(catalog / "imgs" / "a.png")


def test_an_image_root_refuses_paths_outside_it(image_tree, monkeypatch):
    monkeypatch.chdir(image_tree)  # a relative root is the job's, resolved before any worker sees it
    reader = ImageReader.for_manifest(str(image_tree / "catalog" / "manifest.parquet"), Limits(), root="catalog")
    assert (reader.base, reader.root) == (str(image_tree / "catalog"), str(image_tree / "catalog"))
    reader = ImageReader(str(image_tree / "catalog"), Limits(max_image_bytes=4096), root=str(image_tree / "catalog"))
    assert reader.read("imgs/a.png") == PNG
    for escaping in ("../secret.png", str(image_tree / "secret.png"), "/etc/passwd", "s3://bucket/x.png"):
        with pytest.raises(InvalidInputError, match="outside --image-root"):
            reader.read(escaping)
    sibling = ImageReader(str(image_tree), Limits(max_image_bytes=4096), root=str(image_tree / "cat"))  # a prefix is not a folder
    with pytest.raises(InvalidInputError, match="outside --image-root"):
        sibling.read("catalog/imgs/a.png")


def test_reads_are_capped_and_only_of_regular_files(image_tree):
    reader = ImageReader(str(image_tree / "catalog"), Limits(max_image_bytes=1024))
    with pytest.raises(PayloadTooLargeError, match=f"at most 1024 bytes, got {len(PNG)}"):
        reader.read("imgs/a.png")
    for device in ("/dev/zero", "/dev/stdin", str(image_tree)):
        with pytest.raises(InvalidInputError, match="not a file"):
            reader.read(device)
    with pytest.raises(InvalidInputError, match="could not be read \\(not found\\)"):
        reader.read("imgs/missing.png")
    os.mkfifo(image_tree / "pipe.png")
    with pytest.raises(InvalidInputError, match="not a file"):
        ImageReader(str(image_tree), Limits(max_image_bytes=1024)).read("pipe.png")


def test_a_symlink_inside_the_image_root_cannot_lead_out_of_it(image_tree):
    """The root was compared with the path as written; pyarrow followed root/link -> /elsewhere."""
    catalog = image_tree / "catalog"
    (catalog / "imgs" / "link.png").symlink_to(image_tree / "secret.png")
    (catalog / "escape").symlink_to(image_tree)
    (catalog / "imgs" / "alias.png").symlink_to(catalog / "imgs" / "a.png")  # a link that stays inside is fine
    reader = ImageReader(str(catalog), Limits(), root=str(catalog))
    for escaping in ("imgs/link.png", "escape/secret.png"):
        with pytest.raises(InvalidInputError, match="outside --image-root"):
            reader.read(escaping)
    assert reader.read("imgs/alias.png") == PNG


def test_reads_are_held_to_the_online_image_checks(image_tree):
    """Rows were held to a hard ceiling only, not to `max_image_pixels` as online uploads are."""
    (image_tree / "big.png").write_bytes(image_bytes(random_image(80, 80)))
    (image_tree / "text.png").write_bytes(b"not an image at all")
    reader = ImageReader(str(image_tree), Limits(max_image_pixels=64 * 64))
    with pytest.raises(InvalidInputError, match="is 80x80 pixels; at most 4096 pixels are accepted"):
        reader.read("big.png")
    with pytest.raises(InvalidInputError, match="not a recognizable PNG, JPEG or WebP image"):
        reader.read("text.png")
    for not_a_path in (None, 3, ""):
        with pytest.raises(InvalidInputError, match="must be a file path or URI"):
            reader.read(not_a_path)


def test_running_rate_counts_from_the_engines_first_row_to_its_last():
    def rows(statuses, started, finished):
        at = lambda seconds: None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)  # noqa: E731
        timestamp = pa.timestamp("us", tz="UTC")
        return pa.table({
            "status": statuses,
            "started_at": pa.array([at(s) for s in started], timestamp),
            "finished_at": pa.array([at(s) for s in finished], timestamp),
            "guard_verdict": pa.array(["flagged" if status == "ok" else None for status in statuses], pa.string()),
        })

    tally = Tally(model="tiny", skipped=3)
    tally.add(rows(["ok", "error"], [100.0, None], [101.0, None]))  # the error never reached the engine
    tally.add(rows(["ok", "ok"], [101.0, 102.0], [103.0, 104.0]))
    assert (tally.ok, tally.error, tally.skipped, tally.flagged) == (3, 1, 3, 3)
    assert tally.running_rows_per_s() == pytest.approx(4 / 4.0)
    assert "running" in tally.summary().splitlines()[0]


def test_a_batch_that_fails_as_a_whole_reruns_its_rows_alone():
    """Out of memory on a batch, say: its rows run again one at a time, and only a row that fails
    alone is an error (a 4xx, the row's own fault, is not rerun)."""
    from cluster.bulk.stages import StageActor

    @dataclass
    class Item:
        request_id: str

    class Flaky(StageActor):
        stage, verb = "denoise", "denoising"

        def __init__(self):  # no engine: `run` stands for it
            self.calls = []

        def run(self, items, alone):
            self.calls.append(([item.request_id for item in items], alone))
            if len(items) > 1:
                raise MemoryError("the batch does not fit")
            (item,) = items
            if item.request_id == "bad":
                raise RuntimeError("fails alone too")
            return [InvalidInputError("size", "too big") if item.request_id == "own" else f"done {item.request_id}"]

    stage = Flaky()
    results = stage.isolated([Item("a"), Item("bad"), Item("b")])
    assert results[0] == "done a" and results[2] == "done b"
    assert "internal error while denoising (RuntimeError)" in results[1].message
    assert stage.calls == [(["a", "bad", "b"], False), (["a"], True), (["bad"], True), (["b"], True)]
    stage.calls.clear()
    (own,) = stage.isolated([Item("own")])
    assert own.message == "size: too big" and stage.calls == [(["own"], False)]  # its own fault: not rerun


def test_malformed_rows_become_error_rows_naming_their_column(image_tree, tiny_checkpoints):
    """Deep JSON raised RecursionError and a null inside an `image` list TypeError: the whole batch
    failed, the job died, and died again on every resume."""
    import pandas as pd

    from cluster.bulk.requests import RequestBuilder
    from deployments.checkpoints.loader import resolve_model
    from deployments.settings.lora import LoraSettings

    catalog = image_tree / "catalog"
    limits = Limits()
    build = RequestBuilder(resolve_model(tiny_checkpoints["edit-plus"]), limits, LoraSettings(), {"seed": 0},
                           ImageReader(str(catalog), limits), Output.at(str(image_tree / "out")))
    good = {"image": ["imgs/a.png"], "instruction": "make it blue"}
    rows = {
        "null image": ({**good, "image": ["imgs/a.png", None]}, "image: must be a file path or URI, got None"),
        "deep chain": ({**good, "chain": "[" * 5000}, "chain: must be a JSON list such as"),
        "deep cache": ({**good, "cache": '{"a":' * 300}, "cache: must be JSON such as"),
        "huge lora": ({**good, "lora": "[" + "{}," * 5000 + "{}]"}, "lora: may be at most"),
        "bool seed": ({**good, "seed": True}, "seed: must be an integer in [0,"),
        "null instruction": ({**good, "instruction": None}, "prompt:"),
        "fine": (good, None),
    }
    frame = pd.DataFrame([{"id": name, **row} for name, (row, _) in rows.items()])
    built = build(frame).set_index("id")
    for name, (_, error) in rows.items():
        if error is None:
            assert pd.isna(built.loc[name, "error"]) and built.loc[name, "item"] is not None
        else:
            assert str(built.loc[name, "error"]).startswith(error), (name, built.loc[name, "error"])


def test_a_later_pass_carries_each_rows_next_edit_as_columns_not_in_a_closure():
    """Follow-up passes pickled every pending row's next edit and provenance JSON into each read task's
    closure (gigabytes at a million chained rows); now the rows carry it, joined in the pipeline."""
    import dataclasses

    from cluster.bulk.follow_ups import Pending, as_table, with_pending
    from cluster.bulk.requests import RequestBuilder

    assert "pending" not in {field.name for field in dataclasses.fields(RequestBuilder)}
    assert {field.name for field in dataclasses.fields(Pending)} == {"link", "image", "retry_of_seed"}  # no provenance
    rows = pa.table({"id": ["r0", "r1", "r2"], "image": [["a.png", "b.png"], ["c.png"], ["d.png"]]})  # a list column too
    joined = with_pending(rows, as_table({"r2": Pending(1, "images/r2-link1.png"), "r0": Pending(0, None, 7)}))
    assert [Pending.of_row(row) for row in joined.to_pandas().sort_values("id").to_dict("records")] == [
        Pending(0, None, 7), Pending(1, "images/r2-link1.png")]
    assert joined.column("image").to_pylist() == [["a.png", "b.png"], ["d.png"]]
