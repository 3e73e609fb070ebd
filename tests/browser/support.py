"""Helpers shared by the page tests."""

from selenium.webdriver.common.by import By

from cluster.bench import served_app


def served_page(model: str):
    """For a module fixture: the page's URL on `python -m serve` with `model`, stopped afterwards."""
    with served_app(model) as app:
        yield app.base + "/"


def shown(browser, name: str) -> bool:
    """Whether the form field `name` is visible on the page."""
    return browser.find_element(By.NAME, name).is_displayed()
