"""Provenance: every output format carries the record of how the image was made, and `python -m
deployments.cli.rerun` makes the same file again from it and the input files."""

import json

import pytest

from deployments.checkpoints.loader import resolve_model
from deployments.cli.edit import InProcessStages
from deployments.cli.rerun import main as rerun
from deployments.media import metadata
from deployments.request.binding import parse
from deployments.settings.lora import LoraSettings
from deployments.workflows import provenance
from deployments.workflows.chains import chain_links, with_input
from tests.engine.test_masked_edits import area, openai_mask
from tests.helpers import image_bytes, random_image

PHOTO = image_bytes(random_image(96, 64, seed=1))
SECOND = image_bytes(random_image(64, 80, seed=2))
CASES = {  # output format -> what else the request has
    "png": {"mask": openai_mask(area("rectangle")), "strength": 0.8},
    "jpeg": {"image": [PHOTO, SECOND], "output_compression": 90, "negative_prompt": "blurry"},
    "webp": {"lora": json.dumps([{"name": "style", "scale": 0.5}]), "output_compression": 80},
}


@pytest.mark.parametrize("fmt", CASES)
def test_each_format_carries_its_record_and_reruns_to_the_same_bytes(tiny_checkpoints, tmp_path, fmt):
    model = tiny_checkpoints["edit-plus"]
    spec = resolve_model(model)
    lora = LoraSettings().offering_checkpoint_adapters(spec.path)
    values = {"image": [PHOTO], "prompt": "把背景换成海滩", "seed": 7, "num_inference_steps": 2, "output_format": fmt, **CASES[fmt]}
    edited = InProcessStages(model, lora).edit(parse(spec.request_model(lora=lora), values))

    record = metadata.read(edited.data)
    assert record == edited.provenance
    assert record["model"] == spec.model_id and record["family"] == spec.declared.family
    assert record["parameters"]["prompt"] == "把背景换成海滩" and record["parameters"]["seed"] == 7
    assert record["parameters"]["output_format"] == fmt and "guard" not in record["parameters"]
    assert record["inputs_sha256"]["image"] == [provenance.sha256(data) for data in values["image"]]
    assert ("mask" in record["inputs_sha256"]) == ("mask" in values)
    assert set(record["software"]) == {"qwen-edit-cluster", "diffusers", "torch"}
    if "lora" in values:
        assert record["parameters"]["lora"] == [{"name": "style", "scale": 0.5}]
        assert record["adapter_sources"] == {"style": lora.adapters["style"].source}

    (tmp_path / "edited").write_bytes(edited.data)
    inputs = []
    for i, data in enumerate(values["image"]):
        (tmp_path / f"in{i}").write_bytes(data)
        inputs += ["--image", str(tmp_path / f"in{i}")]
    if "mask" in values:
        (tmp_path / "mask").write_bytes(values["mask"])
        inputs += ["--mask", str(tmp_path / "mask")]
    assert rerun([str(tmp_path / "edited"), *inputs, "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again").read_bytes() == edited.data


def test_a_rerun_refuses_other_inputs_and_images_without_a_record(tiny_checkpoints, tmp_path, capsys):
    model = tiny_checkpoints["edit-plus"]
    spec = resolve_model(model)
    edited = InProcessStages(model).edit(parse(spec.request_model(), {"image": [PHOTO], "prompt": "p", "seed": 1, "num_inference_steps": 2}))
    (tmp_path / "edited").write_bytes(edited.data)
    (tmp_path / "other").write_bytes(SECOND)
    (tmp_path / "plain").write_bytes(PHOTO)
    for edited_file, given, message in [
        ("edited", "other", "image: is not the file the image was made from"),
        ("plain", "plain", "image: carries no provenance record"),
    ]:
        with pytest.raises(SystemExit) as exited:
            rerun([str(tmp_path / edited_file), "--image", str(tmp_path / given), "--out", str(tmp_path / "again")])
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_a_chained_edit_reruns_link_by_link_from_the_first_link_s_inputs(tiny_checkpoints, tmp_path):
    model = tiny_checkpoints["edit-plus"]
    request_model = resolve_model(model).request_model()
    chain = json.dumps(["add snow", {"prompt": "make it night", "seed": 4}])
    values = {"image": [PHOTO], "prompt": "make it autumn", "seed": 2, "num_inference_steps": 2, "chain": chain, "output_format": "webp"}
    links = chain_links(request_model, parse(request_model, values), values)
    stages = InProcessStages(model)
    made = [stages.edit(links[0])]
    for link in links[1:]:  # as serve/chained_edit.py runs them
        made.append(stages.edit(with_input(link, made[-1].data), made[-1].provenance))
    record = metadata.read(made[-1].data)
    assert record["parameters"]["prompt"] == "make it night" and record["derived_from"]["parameters"]["prompt"] == "add snow"
    assert record["derived_from"]["derived_from"]["inputs_sha256"]["image"] == [provenance.sha256(PHOTO)]
    (tmp_path / "edited").write_bytes(made[-1].data)
    (tmp_path / "in").write_bytes(PHOTO)
    assert rerun([str(tmp_path / "edited"), "--image", str(tmp_path / "in"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again").read_bytes() == made[-1].data
