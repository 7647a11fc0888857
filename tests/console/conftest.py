"""Fixtures of the console tests: real brokers, a real gateway and one headless Chromium per module.

Without Debian's ``chromium`` and ``chromium-driver`` (or selenium) the browser tests skip
with the reason; with SHOAL_REQUIRE_BROWSER=1 (CI) that skip is a failure instead.
``SHOAL_CONSOLE_SHOTS=DIR`` makes the tests save the screenshots of docs/console.md there.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.harness import LocalCluster, env_flag
from tests.security.procs import start_gateway

WAIT_S = 20.0


def _unavailable(reason: str):
    if env_flag("SHOAL_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (SHOAL_REQUIRE_BROWSER=1 makes this a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def browser_paths() -> tuple[str, str]:
    """Chromium and its driver from the system's packages, or a skip that says what to install."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        _unavailable("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)")
    return binary, driver


class Console:
    """One Chromium session pointed at a gateway's console; every wait polls with a deadline."""

    def __init__(self, driver, base_url: str):
        self.driver = driver
        self.base = base_url
        self.shots = os.environ.get("SHOAL_CONSOLE_SHOTS")

    def open(self, fragment: str = "/") -> None:
        self.driver.get(f"{self.base}/console/#{fragment}")

    def wait(self, what, message: str, timeout: float = WAIT_S):
        """Poll ``what()`` until it returns something truthy; fail with ``message`` and the page text."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        deadline = time.monotonic() + timeout
        while True:
            try:
                found = what()
            except (StaleElementReferenceException, WebDriverException):
                found = None  # the page replaced the element between finding and reading it
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{message}; page shows:\n{self.body_text()[:3000]}")
            time.sleep(0.05)

    def body_text(self) -> str:
        return self.driver.find_element("tag name", "body").text

    def texts(self, css: str) -> list[str]:
        return [el.text for el in self.driver.find_elements("css selector", css)]

    def text(self, css: str) -> str | None:
        found = self.texts(css)
        return found[0] if found else None

    def wait_text(self, css: str, expected: str | None = None, timeout: float = WAIT_S) -> str:
        """The text of ``css`` once it is shown (and equals ``expected`` when given)."""
        return self.wait(
            lambda: (t := self.text(css)) is not None and (expected is None or t == expected) and (t or " "),
            f"{css} never showed {expected!r}", timeout,
        )

    def rows(self, table_css: str = "table") -> dict[str, dict[str, str]]:
        """``data-key -> {data-col: text}`` of the table rows (read in one script call)."""
        return self.driver.execute_script(
            """const out = {};
            for (const tr of document.querySelectorAll(arguments[0] + ' tbody tr')) {
              const row = {};
              for (const td of tr.querySelectorAll('td')) row[td.dataset.col] = td.innerText;
              out[tr.dataset.key] = row;
            }
            return out;""",
            table_css,
        )

    def logs(self) -> list[dict]:
        """Browser console entries since the last call."""
        return self.driver.get_log("browser")

    def resources(self) -> list[str]:
        return self.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")

    def shot(self, name: str, scroll_to: str | None = None) -> None:
        """Save console-NAME.png (palette PNG, to keep it small) when SHOAL_CONSOLE_SHOTS is set."""
        if not self.shots:
            return
        from PIL import Image

        if scroll_to:
            self.driver.execute_script("document.querySelector(arguments[0]).scrollIntoView()", scroll_to)
        path = Path(self.shots) / f"console-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)


def make_console(base_url: str):
    """A started Chromium (headless, 1280x900) on the console of ``base_url``."""
    binary, driver_path = browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    return Console(driver, base_url)


@pytest.fixture(scope="module")
def console_cluster(request, tmp_path_factory):
    """Three brokers with the module's ``TOPICS`` and ``EXTRA`` cluster.yaml sections, and a gateway.

    A module with ``REPLICATED = True`` gets a replicated cluster (factor 3) on the session's etcd.
    """
    browser_paths()  # skip before starting anything
    name = request.module.__name__.rsplit(".", 1)[-1]
    root = tmp_path_factory.mktemp(name)
    replicated = {}
    if getattr(request.module, "REPLICATED", False):
        etcd = request.getfixturevalue("etcd_server")
        replicated = {"name": root.name.replace("_", "-"), "metadata": {"etcd": [etcd.url], "lease_ttl_ms": 2000},
                      "replication_factor": 3, "min_insync_replicas": 2}
    cluster = LocalCluster(root, 3, request.module.TOPICS, **replicated)
    extra = getattr(request.module, "EXTRA", {})
    if extra:
        import yaml

        cluster.config.update(extra)
        cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    cluster.start()
    gateway, url = start_gateway(cluster.config_path, root, env=getattr(request.module, "GATEWAY_ENV", None))
    yield cluster, url
    gateway.stop()
    cluster.stop()


@pytest.fixture(scope="module")
def console(console_cluster):
    """One browser session for the whole module."""
    session = make_console(console_cluster[1])
    yield session
    session.driver.quit()
