"""The editing page serving an InstructPix2Pix model (`python -m serve`, tiny checkpoint) in Chromium:
it shows that family's guidance fields and no size, and edits at the input's size. Its own module so
that its server starts after the Qwen page's has stopped."""

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.support import open_page, served_page, shown, wait_for_fields
from tests.helpers import image_bytes, random_image


@pytest.fixture(scope="module")
def page_url(tiny_checkpoints):
    yield from served_page(tiny_checkpoints["ip2p"])


def test_an_instruct_pix2pix_edit_by_hand(page_url, browser, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(random_image(80, 48, seed=4)))
    open_page(browser, page_url)
    browser.find_element(By.TAG_NAME, "summary").click()
    WebDriverWait(browser, 30).until(lambda b: "InstructPix2Pix" in b.find_element(By.ID, "model").text)
    wait_for_fields(browser)
    assert shown(browser, "guidance_scale") and shown(browser, "image_guidance_scale")
    assert not shown(browser, "true_cfg_scale") and not shown(browser, "size")  # it edits at the input's size
    assert browser.find_element(By.NAME, "guidance_scale").get_attribute("placeholder") == "7.5"
    browser.find_element(By.ID, "files").send_keys(str(photo))
    browser.find_element(By.ID, "prompt").send_keys("make it snow")
    browser.find_element(By.NAME, "num_inference_steps").send_keys("6")
    browser.find_element(By.NAME, "guidance_scale").send_keys("6")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "status").text.startswith("Done"))
    browser.save_screenshot(str(tmp_path / "4-pix2pix.png"))
    assert "80x48" in browser.find_element(By.ID, "status").text
    params = browser.find_element(By.ID, "params").text
    assert '"guidance_scale": "6"' in params and "size" not in params
