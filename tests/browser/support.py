from selenium.webdriver.common.by import By


def shown(browser, name: str) -> bool:
    """Whether the form field `name` is visible on the page."""
    return browser.find_element(By.NAME, name).is_displayed()
