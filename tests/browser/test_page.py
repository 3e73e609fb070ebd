"""The editing page at GET / in a real headless Chromium (Debian's, through chromedriver), against
`python -m serve` with the tiny model: upload, instruct, watch the progress bar and previews, get the
result; an empty instruction shows its error by the field. Screenshots go to the test's temp dir."""

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from deployments.checkpoints.loader import resolve_model
from deployments.settings.limits import Limits
from tests.browser.support import open_page, served_page, shown, wait_for_fields
from tests.helpers import image_bytes, random_image
from tests.serve.support import adapter_settings


@pytest.fixture(scope="module")
def page_url(tiny_checkpoints):
    checkpoint = tiny_checkpoints["edit-plus"]
    yield from served_page(checkpoint, adapter_settings(checkpoint))


def test_edit_by_hand_with_progress_previews_and_result(page_url, browser, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(96, 64, seed=2)))
    open_page(browser, page_url)
    browser.find_element(By.ID, "files").send_keys(str(photo))
    browser.find_element(By.ID, "prompt").send_keys("배경을 해변으로 바꿔줘")
    browser.find_element(By.TAG_NAME, "summary").click()
    wait_for_fields(browser)
    browser.find_element(By.NAME, "num_inference_steps").send_keys("40")
    browser.find_element(By.NAME, "size").send_keys("256x256")
    browser.execute_script(  # record the progress bar as the page updates it
        "window.seen = []; setInterval(() => seen.push(document.getElementById('progress').value), 10)"
    )
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda b: b.execute_script("return document.getElementById('progress').value > 0"))
    browser.save_screenshot(str(tmp_path / "1-in-progress.png"))
    WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "status").text.startswith("Done"))
    browser.save_screenshot(str(tmp_path / "2-done.png"))

    seen = browser.execute_script("return window.seen")
    assert len({v for v in seen if 0 < v < 40}) >= 3, "the progress bar did not move"
    assert browser.find_element(By.ID, "after").get_attribute("src").startswith("data:image/png;base64,")
    assert browser.find_element(By.ID, "before").get_attribute("src").startswith("blob:")
    assert "256x256" in browser.find_element(By.ID, "status").text and "% changed" in browser.find_element(By.ID, "status").text  # the quality report
    assert '"num_inference_steps": "40"' in browser.find_element(By.ID, "params").text
    assert browser.find_element(By.ID, "download").get_attribute("download") == "edited.png"


def test_an_empty_instruction_shows_its_error_by_the_field(page_url, browser, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(64, 64, seed=3)))
    open_page(browser, page_url)
    browser.find_element(By.ID, "files").send_keys(str(photo))
    browser.find_element(By.ID, "submit").click()
    error = browser.find_element(By.CSS_SELECTOR, '.error[data-for="prompt"]')
    WebDriverWait(browser, 30).until(lambda b: error.text)
    browser.save_screenshot(str(tmp_path / "3-error.png"))
    assert "non-empty instruction" in error.text
    time.sleep(0.2)
    assert browser.find_element(By.ID, "panes").get_attribute("hidden") is not None  # no result shown


def test_the_page_shows_the_fields_of_the_served_family(page_url, browser):
    open_page(browser, page_url)
    browser.find_element(By.TAG_NAME, "summary").click()
    WebDriverWait(browser, 30).until(lambda b: "Qwen-Image-Edit" in b.find_element(By.ID, "model").text)
    assert shown(browser, "true_cfg_scale") and shown(browser, "size")
    assert not shown(browser, "guidance_scale") and not shown(browser, "image_guidance_scale")


def test_the_page_fields_are_the_declared_parameters(page_url, browser, tiny_checkpoints):
    """The advanced settings list the family's declared fields with the ranges and defaults the server
    enforces (the expectation comes from the declaration; serve/config.yaml's limits are the defaults)."""
    declared = resolve_model(tiny_checkpoints["edit-plus"]).request_model(Limits()).model_json_schema()["properties"]
    open_page(browser, page_url)
    wait_for_fields(browser)
    rendered = {
        field.get_attribute("name"): field for field in browser.find_elements(By.CSS_SELECTOR, "#fields [name]")
    }
    # one image per edit; adapters and mask apart; no chain (the page streams, a chain is not streamed)
    assert set(rendered) == set(declared) - {"image", "prompt", "n", "lora", "mask", "chain"}
    for name, field in rendered.items():
        schema = next((o for o in declared[name].get("anyOf", []) if o.get("type") != "null"), declared[name])
        if "enum" in schema:
            options = [option.get_attribute("value") for option in field.find_elements(By.TAG_NAME, "option")]
            assert options == schema["enum"] and field.get_attribute("value") == declared[name]["default"], name
        if "maximum" in schema:
            # as JavaScript numbers (the seed's 2**63 - 1 has no exact double)
            assert float(field.get_attribute("min")) == float(schema["minimum"]), name
            assert float(field.get_attribute("max")) == float(schema["maximum"]), name
            default, placeholder = declared[name].get("default"), field.get_attribute("placeholder")
            assert float(placeholder) == default if default is not None else placeholder == "(random)", name


def test_the_page_offers_the_adapters_and_applies_the_ticked_ones(page_url, browser, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(64, 64, seed=2)))
    open_page(browser, page_url)
    browser.find_element(By.TAG_NAME, "summary").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "[data-adapter]"))
    offered = [tick.get_attribute("data-adapter") for tick in browser.find_elements(By.CSS_SELECTOR, "[data-adapter]")]
    assert sorted(offered) == ["broken", "detail", "lightning-4step", "style"]
    browser.find_element(By.ID, "files").send_keys(str(photo))
    browser.find_element(By.ID, "prompt").send_keys("make it autumn")
    browser.find_element(By.CSS_SELECTOR, '[data-adapter="lightning-4step"]').click()
    browser.find_element(By.CSS_SELECTOR, '[data-scale-of="lightning-4step"]').send_keys("0.5")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "status").text.startswith("Done"))
    assert '"lora": "[{\\"name\\":\\"lightning-4step\\",\\"scale\\":0.5}]"' in browser.find_element(By.ID, "params").text


def painted_mask(browser) -> np.ndarray:
    """The alpha channel of the mask the page would send now (its maskBlob), (H, W)."""
    data_url = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "maskBlob().then((blob) => { const r = new FileReader(); r.onload = () => done(r.result); r.readAsDataURL(blob); });"
    )
    mask = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert mask.format == "PNG" and mask.mode == "RGBA"
    return np.asarray(mask)[..., 3]


def drag(browser, element, start: tuple[int, int], by: tuple[int, int]) -> None:
    """A pointer drag over `element`, from `start` (pixels from its centre) by `by`."""
    ActionChains(browser).move_to_element_with_offset(element, *start).click_and_hold().move_by_offset(*by).release().perform()


def open_editor(browser, page_url: str, tmp_path, seed: int):
    """The page with a 96x64 photo chosen and its mask editor shown; returns the editor's canvas."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(96, 64, seed=seed)))
    open_page(browser, page_url)
    wait_for_fields(browser)
    browser.find_element(By.ID, "files").send_keys(str(photo))
    view = browser.find_element(By.ID, "mask-view")
    WebDriverWait(browser, 30).until(lambda b: view.is_displayed())
    return view


def edit_in_two_steps(browser, prompt: str) -> str:
    """Types `prompt`, asks for 2 steps, edits, and returns the status once done."""
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    browser.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.NAME, "num_inference_steps").send_keys("2")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "status").text.startswith("Done"))
    return browser.find_element(By.ID, "status").text


def test_a_painted_stroke_becomes_the_mask_and_erasing_takes_it_back(page_url, browser, tmp_path):
    view = open_editor(browser, page_url, tmp_path, seed=5)
    assert view.size == {"width": 480, "height": 320}  # shown 5x: 5 screen pixels per image pixel

    drag(browser, view, (-140, 0), (200, 0))  # screen x 100..300 at y 160: image x 20..60 at y 32
    browser.save_screenshot(str(tmp_path / "4-painted.png"))
    alpha = painted_mask(browser)
    assert alpha.shape == (64, 96)  # the image's size, as OpenAI's masks
    assert (alpha[32, 20:61] == 0).all(), "the stroke is not transparent"
    ys, xs = np.nonzero(alpha == 0)
    assert xs.min() >= 16 and xs.max() <= 64 and ys.min() >= 28 and ys.max() <= 36  # nothing but the stroke (24 px brush)
    assert (alpha[alpha > 0] == 255).all()

    browser.find_element(By.ID, "eraser").click()
    drag(browser, view, (-150, 0), (100, 0))  # image x 18..38
    alpha = painted_mask(browser)
    assert (alpha[32, 20:36] == 255).all() and (alpha[32, 42:61] == 0).all()

    assert "320x224" in edit_in_two_steps(browser, "remove the line")  # the image's framing at the model's area
    assert '"mask": "(painted)"' in browser.find_element(By.ID, "params").text


def test_extending_the_canvas_outpaints_to_the_chosen_aspect_ratio(page_url, browser, tmp_path):
    open_editor(browser, page_url, tmp_path, seed=6)
    Select(browser.find_element(By.ID, "extend")).select_by_visible_text("16:9")
    fields = {name: browser.find_element(By.NAME, name).get_attribute("value") for name in ("size", "placement", "strength")}
    assert fields == {"size": "128x64", "placement": "center", "strength": "1"}  # 96x64 centred on 16:9, in multiples of 16
    assert browser.execute_script("return [document.getElementById('mask-view').width, document.getElementById('mask-view').height]") == [128, 64]
    status = edit_in_two_steps(browser, "extend the scene")
    browser.save_screenshot(str(tmp_path / "5-outpainted.png"))
    assert "128x64" in status
