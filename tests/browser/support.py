"""Helpers shared by the page tests."""

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cluster.bench.common import served_app


def served_page(model: str, lora: dict | None = None):
    """For a module fixture: the page's URL on `python -m serve` with `model` (and the LoRA settings
    `lora`), stopped afterwards."""
    with served_app(model, lora=lora) as app:
        yield app.base + "/"


def shown(browser, name: str) -> bool:
    """Whether the form field `name` is on the page and visible."""
    fields = browser.find_elements(By.NAME, name)
    return bool(fields) and fields[0].is_displayed()


def wait_for_fields(browser) -> None:
    """Waits until the page has rendered the served family's fields (from /v1/models)."""
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#fields [name]"))


def open_page(browser, url: str) -> None:
    """Opens the page and waits for its title: once in CI `get` returned with an empty title (a document
    not yet committed, or not the page); if so this fails showing what the browser has instead."""
    browser.get(url)
    try:
        WebDriverWait(browser, 30).until(lambda b: "Edit images" in b.title)
    except TimeoutException:
        raise AssertionError(f"the page did not open; the browser shows: {browser.page_source[:1000]!r}") from None
