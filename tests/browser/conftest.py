"""The browser tier: the system's Chromium (Debian's package, installed by `make browser`), driven headless by
Playwright, against one `metering serve` of `tests/browser/month.py` shared by the tier's tests. Tokens come
from `metering token` with the server's issuer key, as the CRM's identity provider would issue them."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    sync_playwright,
)

from tests.browser.month import NOW, write_month
from tests.helpers import DIRECT, Reply, metering_command

CHROMIUM_VARIABLE = "CHROMIUM"
"""Names the Chromium binary when it is not `chromium` on PATH."""
READY_TIMEOUT_SECONDS = 180.0
REQUEST_TIMEOUT_SECONDS = 30.0
SETTLED = 'main[aria-busy="false"]'
"""The page is done with what it was doing: shown, or told why not."""
API_PATH = "/v1/"


@dataclass(frozen=True, slots=True)
class Served:
    """The running `metering serve`: its address, and tokens of its issuer."""

    url: str
    issuer_key: Path

    def token(self, *arguments: str) -> str:
        printed = subprocess.run(
            metering_command("token", "--issuer-key", str(self.issuer_key), *arguments),
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return printed.stdout.strip()

    def call(self, path: str, token: str, accept: str = "application/json") -> Reply:
        """A request as any client makes it: the API's own answer, to compare the page with."""
        headers = {"Authorization": f"Bearer {token}", "Accept": accept}
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)
        try:
            with DIRECT.open(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as refused:
            return Reply(refused.code, refused.headers, refused.read())


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`metering serve` on the tier's month, on a free port; stopped with SIGTERM after the tier."""
    folder = tmp_path_factory.mktemp("usage-page")
    month = write_month(folder / "month.jsonl")
    log = folder / "serve.log"
    with log.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            metering_command(
                "serve", str(month), "--now", NOW, "--port", "0", "--issuer-key", str(folder / "key.pem")
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_SECONDS)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening on http://127.0.0.1:"):
        process.kill()
        process.wait()
        pytest.fail(f"metering serve did not listen, printed {line!r}; stderr:\n{log.read_text()[-4000:]}")
    try:
        yield Served(line.removeprefix("listening on ").strip(), folder / "key.pem")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def chromium_executable() -> str:
    """Debian's Chromium; the tier fails (never skips) without it: `make browser` installs it."""
    executable = os.environ.get(CHROMIUM_VARIABLE) or shutil.which("chromium")
    if executable is None:
        pytest.fail("no Chromium: `make browser` installs Debian's package (or set CHROMIUM to a binary)")
    return executable


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_executable(), headless=True)
    yield launched
    launched.close()


@dataclass
class UsagePageView:
    """One usage page open in its own browser context, with every API request it made and every console
    error it logged. (No slots: Playwright keeps state on the objects whose bound methods it is handed.)"""

    page: Page
    api_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def watch(self, base_url: str) -> None:
        self.page.on("request", lambda request: self._on_request(request, base_url))
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.console_errors.append(str(error)))

    def _on_request(self, request: Request, base_url: str) -> None:
        if API_PATH in request.url:
            self.api_requests.append(request.url.removeprefix(base_url))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def settle(self) -> None:
        self.page.wait_for_selector(SETTLED, state="attached")

    def text(self, selector: str) -> str:
        """The visible text, with the no-break spaces Intl puts in numbers and money made plain."""
        return self.page.inner_text(selector).replace("\u00a0", " ").replace("\u202f", " ")

    def values(self, selector: str) -> list[int]:
        """The exact values of the <data> elements under `selector`."""
        return [
            int(value)
            for value in self.page.eval_on_selector_all(f"{selector} data", "els => els.map(e => e.value)")
        ]


OpenPage = Callable[..., UsagePageView]


@pytest.fixture
def open_usage_page(browser: Browser, served: Served) -> Iterator[OpenPage]:
    """Opens the page as the CRM's iframe would: `/usage-page/#token=...&lang=...`, and waits until it has
    settled (each call in a fresh context: nothing cached, no other page's state)."""
    contexts: list[BrowserContext] = []

    def open_page(
        token: str | None,
        lang: str | None = None,
        *,
        locale: str = "en-US",
        before: Callable[[Page], None] | None = None,
    ) -> UsagePageView:
        context = browser.new_context(
            locale=locale, accept_downloads=True, viewport={"width": 960, "height": 900}
        )
        contexts.append(context)
        view = UsagePageView(context.new_page())

        view.watch(served.url)
        if before is not None:
            before(view.page)
        fragment = "&".join(
            f"{name}={quote(value)}"
            for name, value in (("token", token), ("lang", lang))
            if value is not None
        )
        view.page.goto(f"{served.url}/usage-page/" + (f"#{fragment}" if fragment else ""))
        view.settle()
        return view

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def tokens(served: Served) -> Callable[[str], str]:
    """A customer token per account, minted once per session."""
    minted: dict[str, str] = {}

    def token(account_id: str) -> str:
        if account_id not in minted:
            minted[account_id] = served.token("--account", account_id)
        return minted[account_id]

    return token
