"""Helpers shared by the page tests."""

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cluster.bench import served_app


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
