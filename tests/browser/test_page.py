"""The editing page at GET / in a real headless Chromium (Debian's, through chromedriver), against
`python -m serve` with the tiny model: upload, instruct, watch the progress bar and previews, get the
result; an empty instruction shows its error by the field. Screenshots go to the test's temp dir."""

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from deployments.limits import Limits
from deployments.models import resolve_model
from tests.browser.support import served_page, shown, wait_for_fields
from tests.helpers import image_bytes, random_image
from tests.serve.support import adapter_settings


@pytest.fixture(scope="module")
def page_url(tiny_checkpoints):
    checkpoint = tiny_checkpoints["edit-plus"]
    yield from served_page(checkpoint, adapter_settings(checkpoint))


def test_edit_by_hand_with_progress_previews_and_result(page_url, browser, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(96, 64, seed=2)))
    browser.get(page_url)
    assert "Edit images" in browser.title
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
    assert "256x256" in browser.find_element(By.ID, "status").text
    assert '"num_inference_steps": "40"' in browser.find_element(By.ID, "params").text
    assert browser.find_element(By.ID, "download").get_attribute("download") == "edited.png"


def test_an_empty_instruction_shows_its_error_by_the_field(page_url, browser, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(64, 64, seed=3)))
    browser.get(page_url)
    browser.find_element(By.ID, "files").send_keys(str(photo))
    browser.find_element(By.ID, "submit").click()
    error = browser.find_element(By.CSS_SELECTOR, '.error[data-for="prompt"]')
    WebDriverWait(browser, 30).until(lambda b: error.text)
    browser.save_screenshot(str(tmp_path / "3-error.png"))
    assert "non-empty instruction" in error.text
    time.sleep(0.2)
    assert browser.find_element(By.ID, "panes").get_attribute("hidden") is not None  # no result shown


def test_the_page_shows_the_fields_of_the_served_family(page_url, browser):
    browser.get(page_url)
    browser.find_element(By.TAG_NAME, "summary").click()
    WebDriverWait(browser, 30).until(lambda b: "Qwen-Image-Edit" in b.find_element(By.ID, "model").text)
    assert shown(browser, "true_cfg_scale") and shown(browser, "size")
    assert not shown(browser, "guidance_scale") and not shown(browser, "image_guidance_scale")


def test_the_page_fields_are_the_declared_parameters(page_url, browser, tiny_checkpoints):
    """The advanced settings list the family's declared fields with the ranges and defaults the server
    enforces (the expectation comes from the declaration; serve/config.yaml's limits are the defaults)."""
    declared = resolve_model(tiny_checkpoints["edit-plus"]).request_model(Limits()).model_json_schema()["properties"]
    browser.get(page_url)
    wait_for_fields(browser)
    rendered = {
        field.get_attribute("name"): field for field in browser.find_elements(By.CSS_SELECTOR, "#fields [name]")
    }
    assert set(rendered) == set(declared) - {"image", "prompt", "n", "lora"}  # one image per edit; adapters apart
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
    browser.get(page_url)
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
