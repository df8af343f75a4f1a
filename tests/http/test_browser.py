"""The agent page in a real browser: headless Chromium through selenium.

The browser plays a support tool behind an authenticating proxy: the identity header such a
proxy would add is added by Chromium itself (DevTools ``Network.setExtraHTTPHeaders``), and
tokenproxy trusts it from 127.0.0.1. The agent opens the page, picks a ticket, and the
customer of that ticket shows in clear in the browser while another customer does not; the
cookie is invisible to page scripts (HttpOnly).

Skipped, with the reason, where Chromium or chromedriver is not installed (Debian:
``apt-get install chromium chromium-driver``; CI installs them).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from http_env import Env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test: needs chromium and chromedriver on PATH "
    "(apt-get install chromium chromium-driver)",
)


def _browse(proxy: str, agent: str, ticket: str, shown: int, hidden: int) -> dict[str, object]:
    """The browser session (blocking: run in a thread, the proxy shares the test's loop)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert CHROMIUM is not None and CHROMEDRIVER is not None
    with tempfile.TemporaryDirectory(prefix="tokenproxy-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={Path(profile) / 'profile'}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(20)
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd(
                "Network.setExtraHTTPHeaders", {"headers": {"X-Authenticated-User": agent}}
            )
            wait = WebDriverWait(driver, 10)
            driver.get(proxy + "/_tokenproxy/")
            signed_in = driver.find_element(By.TAG_NAME, "body").text
            driver.find_element(By.CSS_SELECTOR, f"input[name=ticket][value='{ticket}']").click()
            driver.find_element(By.ID, "cite").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "current"), ticket))
            cookies = {c["name"]: c for c in driver.get_cookies()}
            script_cookie = driver.execute_script("return document.cookie")
            driver.get(f"{proxy}/customers/{shown}")
            shown_text = driver.find_element(By.TAG_NAME, "body").text
            driver.get(f"{proxy}/customers/{hidden}")
            hidden_text = driver.find_element(By.TAG_NAME, "body").text
            driver.get(proxy + "/_tokenproxy/")
            driver.find_element(By.ID, "clear").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "current"), "No ticket"))
            driver.get(f"{proxy}/customers/{shown}")
            after_clear = driver.find_element(By.TAG_NAME, "body").text
        finally:
            driver.quit()
    return {
        "signed_in": signed_in,
        "cookies": cookies,
        "script_cookie": script_cookie,
        "shown": shown_text,
        "hidden": hidden_text,
        "after_clear": after_clear,
    }


async def test_agent_picks_a_ticket_in_the_browser(http_env: Env) -> None:
    await http_env.add_ticket("T-BROWSER-1", "lena", [1015])
    await http_env.add_ticket("T-BROWSER-2", "lena", [1010])
    result = await asyncio.wait_for(
        asyncio.to_thread(_browse, http_env.proxy_url, "lena", "T-BROWSER-1", 1015, 1014),
        timeout=60,
    )
    assert "Signed in as lena" in str(result["signed_in"])
    cookie = result["cookies"]["tokenproxy_ticket"]  # type: ignore[index]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP in the test
    assert "tokenproxy_ticket" not in str(result["script_cookie"])
    shown, hidden = await http_env.customer_row(1015), await http_env.customer_row(1014)
    assert shown["full_name"] in str(result["shown"])
    assert shown["phone"] in str(result["shown"])
    assert hidden["full_name"] not in str(result["hidden"])
    assert hidden["phone"] not in str(result["hidden"])
    assert shown["full_name"] not in str(result["after_clear"])
