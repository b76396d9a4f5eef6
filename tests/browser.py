"""Headless Chromium for the console's browser tests and screenshots: Debian's own build, driven by
Playwright (which cannot download a browser of its own here)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

CHROMIUM = Path(os.environ.get("REELHOOK_CHROMIUM", "/usr/bin/chromium"))
# No sandbox (tests may run as root), and none of Chromium's own traffic: the machine has no
# network beyond loopback, and a test must send nothing anywhere else.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]


def missing() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@asynccontextmanager
async def chromium(width: int = 1200, height: int = 800) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile (its own user-data dir, removed afterwards)."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="reelhook-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=ARGS,
                viewport={"width": width, "height": height},
            )
            try:
                yield context
            finally:
                await context.close()
