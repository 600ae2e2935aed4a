"""The status page in a real browser: Debian's chromium driven by Playwright (async API).

Playwright talks to the system browser (`/usr/bin/chromium`, apt package `chromium`):
nothing is downloaded. Every request the page makes and every console error is recorded,
so a test can assert that nothing left loopback and nothing broke. Screenshots go to
`$ROLLOUT_ARTIFACTS` (default `test-artifacts/` at the repository root, gitignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import ConsoleMessage, Page, Request, Response, async_playwright

CHROMIUM = "/usr/bin/chromium"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("ROLLOUT_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Watched:
    """A page and what it did: every request (URL, Authorization header) and console error."""

    page: Page
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)  # URL path -> answers

    def urls(self) -> list[str]:
        return [url for url, _ in self.requests]

    def data_requests(self) -> list[tuple[str, str | None]]:
        return [(url, auth) for url, auth in self.requests if "/-/page" in url]

    async def text(self, selector: str) -> str:
        return (await self.page.inner_text(selector)).strip()

    async def wait_text(self, selector: str, needle: str, *, timeout_s: float) -> str:
        """Wait (bounded) until `selector`'s text contains `needle`; returns the text."""
        return await self.wait_for(selector, lambda text: needle in text, timeout_s=timeout_s)

    async def wait_number(self, selector: str, at_least: int, *, timeout_s: float) -> int:
        """Wait (bounded) until the integer in `selector` is at least `at_least`."""
        text = await self.wait_for(
            selector, lambda t: t.isdigit() and int(t) >= at_least, timeout_s=timeout_s
        )
        return int(text)

    async def wait_for(
        self, selector: str, holds: Callable[[str], bool], *, timeout_s: float
    ) -> str:
        """Poll `selector`'s text from here, every 0.1 s, until `holds` or the time is up.

        Playwright's own wait_for_function evaluates a string, which the page's
        Content-Security-Policy (no unsafe-eval) forbids; reading text needs no eval.
        """
        deadline = time.monotonic() + timeout_s
        text = ""
        while True:
            locator = self.page.locator(selector)
            if await locator.count():
                text = (await locator.first.inner_text()).strip()
                if holds(text):
                    return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{selector}: {text!r} after {timeout_s} s")
            await asyncio.sleep(0.1)

    async def screenshot(self, name: str, size: dict[str, int]) -> Path:
        await self.page.set_viewport_size(size)
        path = artifacts_dir() / f"{name}-{size['width']}x{size['height']}.png"
        # caret="initial": hiding the caret injects a <style>, which the page's CSP refuses.
        await self.page.screenshot(path=str(path), full_page=True, caret="initial")
        return path

    async def scrolls_sideways(self) -> bool:
        return bool(
            await self.page.evaluate(
                "document.documentElement.scrollWidth > document.documentElement.clientWidth"
            )
        )


@contextlib.asynccontextmanager
async def open_page(url: str) -> AsyncIterator[Watched]:
    """Open `url` in a fresh headless chromium; closed on exit."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            watched = Watched(page)

            def on_request(request: Request) -> None:
                watched.requests.append((request.url, request.headers.get("authorization")))

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    watched.errors.append(message.text)

            def on_response(response: Response) -> None:
                path = urlsplit(response.url).path
                watched.statuses.setdefault(path, []).append(response.status)

            page.on("request", on_request)
            page.on("console", on_console)
            page.on("pageerror", lambda exc: watched.errors.append(str(exc)))
            page.on("response", on_response)
            await page.goto(url)
            yield watched
        finally:
            await browser.close()
