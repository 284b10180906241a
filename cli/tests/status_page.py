"""Drives the control plane's status page in headless Chromium (Debian's
chromium and chromium-driver; selenium from PyPI pointed at that driver,
nothing downloaded at run time).

Usage: status_page.py STATUS_URL TOGGLE_URL SCREENSHOT_DIR

Loads the page, waits for demo/backend-1 to show UP, flips the backend's
/readyz (POST TOGGLE_URL), and asserts the page shows it DOWN — and the
change in its recent state changes — without a reload (the page's load
count in sessionStorage stays 1). Saves desktop and phone screenshots.
Exits non-zero with a message on any failure.
"""

import os
import sys
import time
import urllib.request

os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def main() -> int:
    status_url, toggle_url, shots = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(shots, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(status_url)
        row = 'tr[data-backend="demo/backend-1"][data-state="%s"]'
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, row % "up"),
            "backend-1 never showed UP")
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "live").text == "live",
            "the page never went live")
        urllib.request.urlopen(urllib.request.Request(toggle_url, method="POST"), timeout=5)
        flipped = time.monotonic()
        WebDriverWait(driver, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, row % "down"),
            "backend-1 never showed DOWN")
        took = time.monotonic() - flipped
        WebDriverWait(driver, 10).until(
            lambda d: "demo/backend-1" in d.find_element(By.ID, "changes").text,
            "the change is not in the recent state changes")
        loads = driver.execute_script("return sessionStorage.getItem('trackwireLoads')")
        if loads != "1":
            print(f"the page reloaded: load count {loads}", file=sys.stderr)
            return 1
        # Filters: only DOWN backends, then all again.
        driver.find_element(By.CSS_SELECTOR, '#state option[value="down"]').click()
        WebDriverWait(driver, 5).until(
            lambda d: not d.find_elements(By.CSS_SELECTOR, 'tr[data-state="up"]'),
            "the state filter left UP rows")
        driver.find_element(By.CSS_SELECTOR, '#state option[value=""]').click()
        driver.save_screenshot(os.path.join(shots, "status-page.png"))
        driver.set_window_size(390, 844)
        time.sleep(0.2)  # layout settles; the assertion above already passed
        driver.save_screenshot(os.path.join(shots, "status-page-phone.png"))
        print(f"ok: DOWN shown {took:.1f}s after the flip, without a reload")
        return 0
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
