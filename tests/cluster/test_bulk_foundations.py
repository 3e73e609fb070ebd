"""The bulk job's manifest contract, output rules and tally (no Ray, no model)."""

import pandas as pd
import pyarrow as pa
import pytest

from cluster.bulk.manifest import ManifestError, check_ids, check_schema
from cluster.bulk.outputs import TEMP_SUFFIX, inside, remove_partial_files, safe_name, write_atomic
from cluster.bulk.tally import Tally
from deployments.families import DECLARATIONS

QWEN, IP2P = DECLARATIONS["QwenImageEditPlusPipeline"], DECLARATIONS["StableDiffusionInstructPix2PixPipeline"]


def schema(**columns) -> pa.Schema:
    base = {"id": pa.string(), "image": pa.string(), "instruction": pa.string()}
    return pa.schema({**base, **columns}.items())


def test_a_valid_schema_passes():
    check_schema(schema(seed=pa.int64(), true_cfg_scale=pa.float32(), size=pa.string()), QWEN)
    check_schema(schema(image=pa.list_(pa.string())), QWEN)  # Edit-Plus: 1-3 images per row
    check_schema(schema(guidance_scale=pa.float64(), image_guidance_scale=pa.int32()), IP2P)


def test_guidance_columns_of_the_other_family_are_refused():
    with pytest.raises(ManifestError, match="column 'true_cfg_scale' does not apply to InstructPix2Pix models"):
        check_schema(schema(true_cfg_scale=pa.float64()), IP2P)
    with pytest.raises(ManifestError, match="column 'image_guidance_scale' does not apply to Qwen-Image-Edit"):
        check_schema(schema(image_guidance_scale=pa.float64()), QWEN)


def test_missing_and_mistyped_columns_are_all_named():
    bad = pa.schema([("id", pa.int64()), ("image", pa.int32()), ("seed", pa.string())])
    with pytest.raises(ManifestError) as info:
        check_schema(bad, QWEN)
    message = str(info.value)
    assert "missing required column 'instruction'" in message
    assert "'id' must be string, got int64" in message
    assert "'image' must be string or list<string>, got int32" in message
    assert "'seed' has type string; it must be integer" in message


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


def test_nothing_is_written_outside_the_root(tmp_path):
    root = tmp_path / "out"
    with pytest.raises(ValueError, match="outside"):
        inside(root, "../escape.png")
    path = write_atomic(root, f"images/{safe_name('../../escape')}.png", b"data")
    assert path.read_bytes() == b"data" and root.resolve() in path.parents
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_partial_files_are_cleaned(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / f".x.png.123{TEMP_SUFFIX}").write_bytes(b"torn")
    write_atomic(tmp_path, "images/y.png", b"whole")
    assert remove_partial_files(tmp_path) == 1
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["y.png"]


def test_running_rate_counts_from_the_engines_first_row_to_its_last():
    def rows(statuses, started, finished):
        return pd.DataFrame({
            "status": statuses,
            "started_at": pd.to_datetime(started, unit="s", utc=True),
            "finished_at": pd.to_datetime(finished, unit="s", utc=True),
        })

    tally = Tally(model="tiny", skipped=3)
    tally.add(rows(["ok", "error"], [100.0, None], [101.0, None]))  # the error never reached the engine
    tally.add(rows(["ok", "ok"], [101.0, 102.0], [103.0, 104.0]))
    assert (tally.ok, tally.error, tally.skipped) == (3, 1, 3)
    assert tally.running_rows_per_s() == pytest.approx(4 / 4.0)
    assert "running" in tally.summary().splitlines()[0]
