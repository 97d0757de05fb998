"""Headless Chromium for the report tests: find it, install it where we can (Debian packages
`chromium` and `chromium-driver`, as root with apt-get), and say clearly why not otherwise.

    driver, why_not = open_browser()      # a selenium Chrome driver, or None and the reason
"""
from __future__ import annotations

import os
import shutil
import subprocess

BINARIES = ("chromium", "chromium-browser", "google-chrome")
_tried_install = False


def _find() -> tuple:
    browser = next((shutil.which(b) for b in BINARIES if shutil.which(b)), None)
    return browser, shutil.which("chromedriver")


def _install() -> str:
    """apt-get install chromium chromium-driver (once per session); '' on success, else why not."""
    global _tried_install
    if _tried_install:
        return "installing chromium failed earlier in this session"
    _tried_install = True
    if not shutil.which("apt-get"):
        return "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is not installed and installing it needs root (apt-get install chromium chromium-driver)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    for attempt in (cmd, ["apt-get", "update", "-q"], cmd):       # a stale package list: update, retry
        r = subprocess.run(attempt, capture_output=True, text=True, env=env, timeout=900)
        if attempt is cmd and r.returncode == 0:
            return ""
    return f"apt-get install chromium chromium-driver failed: {r.stderr.strip().splitlines()[-1:]}"


def open_browser(width: int = 1300, height: int = 1000):
    """(driver, '') with browser console logging on, or (None, reason)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    browser, driver = _find()
    if not (browser and driver):
        why = _install()
        browser, driver = _find()
        if not (browser and driver):
            return None, why or "chromium or chromedriver still missing after apt-get install"
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver), options=opts), ""
    except Exception as e:                                            # noqa: BLE001 — report any start failure
        return None, f"chromium did not start: {str(e).splitlines()[0]}"
