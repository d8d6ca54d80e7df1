"""The console in a real browser (Debian's headless chromium through Selenium) against a real
`coe serve` process whose experts are fake OpenAI-compatible servers: the token prompt, every
panel, and a click-through from registering an expert to seeing it in the routing mix.

Each panel's screenshot is saved under $COE_TEST_ARTIFACTS (default
.pytest_cache/artifacts/console)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coe.testing import FakeUpstream
from tests.console.conftest import REPO, console_config
from tests.support.net import eventually, free_port, wait_healthy
from tests.support.processes import coe_processes

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "browser tests need Debian's chromium and chromium-driver (/usr/bin/chromium, "
        "/usr/bin/chromedriver): apt-get install chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra)")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "console-browser-admin-token-0123456789"
METRICS_TOKEN = "console-browser-metrics-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
WAIT_S = 20


def artefacts() -> Path:
    path = Path(os.environ.get("COE_TEST_ARTIFACTS", REPO / ".pytest_cache/artifacts/console"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class Site:
    def __init__(self, base_url: str, scribe: FakeUpstream, logs: Path):
        self.base_url = base_url
        self.scribe = scribe
        self.logs = logs

    def chat(self, text: str, model: str = "coe/auto") -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        resp = httpx.post(f"{self.base_url}/v1/chat/completions", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A gateway process (embedded store, in-process batch worker) with one expert, alpha,
    and a second fake expert, scribe, running but not registered."""
    tmp = tmp_path_factory.mktemp("console-browser")
    alpha, scribe = FakeUpstream("alpha"), FakeUpstream("scribe")
    alpha.start()
    scribe.start()
    config = tmp / "experts.yaml"
    config.write_text(yaml.safe_dump(console_config({"alpha": alpha.base_url}, "alpha")))
    port = free_port()
    try:
        env = {"COE_ADMIN_TOKEN": TOKEN, "COE_METRICS_TOKEN": METRICS_TOKEN}
        with coe_processes(tmp, env=env) as procs:
            procs.start("serve", "serve", "-c", str(config), "--port", str(port))
            base_url = f"http://127.0.0.1:{port}"
            try:
                wait_healthy(base_url)
            except RuntimeError:
                pytest.fail("the gateway did not start:\n" + procs.log("serve"))
            yield Site(base_url, scribe, tmp)
    finally:
        alpha.stop()
        scribe.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,800")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # The page itself 1280x800 (the window's own bars would take some of a window size).
    metrics = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S)


def visible(driver: WebDriver, css: str) -> WebElement:
    found: WebElement = wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))
    return found


def text_in(driver: WebDriver, css: str, text: str) -> None:
    wait(driver).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def type_into(driver: WebDriver, css: str, text: str) -> None:
    field = visible(driver, css)
    field.clear()
    field.send_keys(text)


def open_panel(driver: WebDriver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#nav a[data-panel="{name}"]').click()
    visible(driver, f"#panel-{name}")


def shot(driver: WebDriver, name: str) -> Path:
    path = artefacts() / f"console-{name}.png"
    driver.save_screenshot(str(path))
    return path


def sign_in(driver: WebDriver, site: Site, token: str) -> None:
    driver.get(f"{site.base_url}/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{site.base_url}/ui#mix")
    visible(driver, "#token-dialog")
    type_into(driver, "#token-input", token)
    driver.find_element(By.ID, "token-save").click()


def test_the_page_asks_for_the_token_once_and_keeps_it(site: Site, browser: WebDriver) -> None:
    sign_in(browser, site, "not-the-token-0123456789")
    text_in(browser, "#token-error", "not accepted")
    type_into(browser, "#token-input", TOKEN)
    browser.find_element(By.ID, "token-save").click()
    text_in(browser, "#session-info", "admin")
    assert not browser.find_element(By.ID, "token-dialog").is_displayed()

    browser.refresh()  # the token stays for this tab
    text_in(browser, "#session-info", "admin")
    assert not browser.find_element(By.ID, "token-dialog").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('coe.console.token')") == TOKEN


def rows(driver: WebDriver, table: str) -> list[str]:
    return [r.text for r in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def row_of(driver: WebDriver, table: str, expert: str) -> WebElement:
    css = f'#{table} tbody tr[data-expert="{expert}"]'
    found: WebElement = wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))
    return found


def test_register_an_expert_route_to_it_and_see_it_counted(site: Site, browser: WebDriver) -> None:
    sign_in(browser, site, TOKEN)
    text_in(browser, "#session-info", "admin")

    # Register scribe on the experts page, pointing at its fake server.
    open_panel(browser, "experts")
    row_of(browser, "experts-table", "alpha")
    type_into(browser, "#ex-name", "scribe")
    type_into(browser, "#ex-model", "scribe-model")
    type_into(browser, "#ex-endpoints", site.scribe.base_url)
    type_into(browser, "#ex-description", "Writes short poems and letters.")
    browser.find_element(By.ID, "expert-save").click()
    text_in(browser, "#expert-status", "Registered scribe")
    assert "scribe-model" in row_of(browser, "experts-table", "scribe").text
    listed = httpx.get(f"{site.base_url}/admin/experts", headers=AUTH).json()["data"]
    assert {e["name"]: e["model"] for e in listed}["scribe"] == "scribe-model"

    # Try a query that names it: the explained decision, then an answer from it.
    open_panel(browser, "try")
    type_into(browser, "#try-query", "please ask scribe to write a haiku about rivers")
    browser.find_element(By.ID, "try-route").click()
    text_in(browser, "#try-reason", "the query names scribe")
    first = browser.find_elements(By.CSS_SELECTOR, "#try-candidates tbody tr")[0]
    assert first.get_attribute("data-expert") == "scribe" and "chosen" in first.get_attribute(
        "class"
    )
    assert browser.find_element(By.ID, "try-router").text == "mention"
    browser.find_element(By.ID, "try-send").click()
    text_in(browser, "#try-answer", "[scribe] please ask scribe")
    assert browser.find_element(By.ID, "try-expert").text == "scribe"
    assert site.scribe.state.requests >= 1
    shot(browser, "try")

    # More traffic, so the panels have something to show.
    for text in ("scribe, a letter to my aunt", "what is the capital of France?", "hello"):
        site.chat(text)
    site.chat("a limerick, scribe", "coe/plain")

    # The routing mix counts it.
    open_panel(browser, "mix")
    scribe_row = row_of(browser, "mix-table", "scribe")
    cells = [c.text for c in scribe_row.find_elements(By.TAG_NAME, "td")]
    assert cells[:3] == ["auto", "mention", "scribe"]
    wait(browser).until(lambda d: int(row_of(d, "mix-table", "scribe").text.split()[3]) == 2)
    wait(browser).until(lambda d: d.find_element(By.ID, "mix-total-5").text == "5")
    shot(browser, "mix")

    # The recent requests list it with its decision.
    open_panel(browser, "requests")
    wait(browser).until(lambda d: len(rows(d, "requests-table")) == 5)
    oldest = rows(browser, "requests-table")[-1]  # the chat sent from the try panel
    assert "mention" in oldest and "the query names scribe" in oldest and "scribe" in oldest
    assert "200" in oldest
    shot(browser, "requests")

    # Its health as the gateway sees it, after answering.
    open_panel(browser, "health")
    text_in(browser, '#health-table tr[data-expert="scribe"]', "ok")
    assert "not called yet" not in row_of(browser, "health-table", "scribe").text
    shot(browser, "health")


def test_batches_show_their_progress(site: Site, browser: WebDriver) -> None:
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "coe/auto", "messages": [{"role": "user", "content": f"q {i}"}]},
        }
        for i in range(4)
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    upload = httpx.post(
        f"{site.base_url}/v1/files",
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", text.encode())},
    )
    assert upload.status_code == 200, upload.text
    body = {
        "input_file_id": upload.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch = httpx.post(f"{site.base_url}/v1/batches", json=body).json()

    sign_in(browser, site, TOKEN)
    open_panel(browser, "batches")
    row = f'#batches-table tr[data-batch="{batch["id"]}"]'
    text_in(browser, row, "completed")
    text_in(browser, row, "4 / 0 / 4")
    fill = browser.find_element(By.CSS_SELECTOR, f"{row} .bar-fill")
    width = browser.execute_script("return arguments[0].style.width", fill)
    assert width == "100%"
    shot(browser, "batches")


def test_edit_and_remove_an_expert(site: Site, browser: WebDriver) -> None:
    def registered() -> dict[str, Any]:
        data = httpx.get(f"{site.base_url}/admin/experts", headers=AUTH).json()["data"]
        return {e["name"]: e for e in data}

    if "scribe" not in registered():
        body = {"name": "scribe", "model": "scribe-model", "endpoints": [site.scribe.base_url]}
        httpx.post(f"{site.base_url}/admin/experts", json=body, headers=AUTH).raise_for_status()
    sign_in(browser, site, TOKEN)
    open_panel(browser, "experts")
    row_of(browser, "experts-table", "scribe").find_element(By.CSS_SELECTOR, "button.edit").click()
    text_in(browser, "#expert-form-title", "Edit scribe")
    assert not browser.find_element(By.ID, "ex-name").is_enabled()
    type_into(browser, "#ex-description", "Writes verse on demand.")
    type_into(browser, "#ex-timeout", "30")
    browser.find_element(By.ID, "expert-save").click()
    text_in(browser, "#expert-status", "Saved scribe")
    text_in(browser, '#experts-table tr[data-expert="scribe"]', "Writes verse on demand.")
    edited = registered()["scribe"]
    assert edited["description"] == "Writes verse on demand."
    assert edited["limits"]["timeout_s"] == 30 and edited["model"] == "scribe-model"
    shot(browser, "experts")

    remove = row_of(browser, "experts-table", "scribe").find_element(By.CSS_SELECTOR, ".remove")
    remove.click()
    wait(browser).until(ec.alert_is_present()).accept()
    text_in(browser, "#expert-status", "Removed scribe")
    assert eventually(lambda: "scribe" not in registered(), what="scribe removed")
    assert not browser.find_elements(By.CSS_SELECTOR, '#experts-table tr[data-expert="scribe"]')


def test_the_metrics_token_shows_the_data_but_cannot_edit(site: Site, browser: WebDriver) -> None:
    sign_in(browser, site, METRICS_TOKEN)
    text_in(browser, "#session-info", "read-only")
    row_of(browser, "mix-table", "alpha")
    open_panel(browser, "experts")
    text_in(browser, "#expert-error", "needs the admin token")
    assert not rows(browser, "experts-table")
