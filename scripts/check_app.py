"""Browser check of `latentdlm app`: start the app on a trained pipeline, drive every tab it shows in
headless Chromium (Selenium with Debian's chromium and chromium-driver: no browser download), take a
screenshot of each and fail if the page shows an error.

    apt-get install chromium chromium-driver && pip install selenium
    python scripts/check_app.py --model runs/ladder/c/diffusion-run/pipeline --out docs/app
    python scripts/check_app.py --model runs/ladder/title2story/diffusion-run/pipeline --out docs/app --prefix title2story-

Writes <out>/<prefix><tab>.png; exit 1 when a tab shows an error or never shows its result.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

STORY = "Anna wanted to learn to bake bread. She bought flour and yeast. Her first loaf was flat and hard. She tried again the next day. This time the bread came out perfect."
OTHER = "Tom missed the bus to school. He ran all the way there. He arrived just as the bell rang. His teacher smiled at him. Tom was proud he made it on time."
# tab -> (the inputs to type, by label; the button; the output's label; slider moves after the result)
TABS = {
    "Generate": ({}, "Generate", "samples", {}),
    "Interpolate": ({"text A": STORY, "text B": OTHER}, "Interpolate", "the whole path", {"position on the path (0 = text A)": 3}),
    "Vary": ({"text": STORY}, "Vary", "variations", {}),
    "Infill": ({"text with ___ where a sentence should be written":
                "Anna wanted to learn to bake bread. ___ Her first loaf was flat and hard. ___ This time the bread came out perfect."},
               "Fill the blanks", "filled text", {}),
    "Summarize": ({"document": "The Science Fair"}, "Summarize", "summary", {}),
}
CONDITION = {"source text (condition)": "The Science Fair"}  # Generate and Infill of a text-conditioned model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, app: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if app.poll() is not None:
            sys.exit(f"the app exited with code {app.returncode} before serving")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    sys.exit(f"the app did not answer on {url} within {timeout:.0f} s")


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def visible(driver, xpath: str, what: str):
    """The first element of `xpath` that is on screen (Gradio keeps hidden copies of some buttons)."""
    for element in driver.find_elements(By.XPATH, xpath):
        if element.is_displayed():
            return element
    raise LookupError(f"no visible {what}")


def field(driver, label: str, tag: str = "textarea"):
    """The input under the block labelled `label`."""
    block = "ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' block ')][1]"
    return visible(driver, f"//span[normalize-space()=\"{label}\"]/{block}//{tag}", f"{tag} labelled '{label}'")


def visible_errors(driver) -> list[str]:
    toasts = driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-body'], .toast-body")
    return [t.text for t in toasts if t.is_displayed() and ("error" in (t.get_attribute("class") or "").lower() or "Error" in t.text)]


def run_tab(driver, tab: str, out: Path, timeout: float, conditioned: bool) -> str:
    inputs, button, output, moves = TABS[tab]
    if tab in ("Generate", "Infill") and conditioned:
        inputs = {**inputs, **CONDITION}
    driver.execute_script("document.querySelectorAll(\"[data-testid='toast-body'], .toast-body\").forEach(e => e.remove())")
    visible(driver, f"//button[@role='tab' and normalize-space()='{tab}']", f"tab {tab}").click()
    time.sleep(1)
    for label, text in inputs.items():
        box = field(driver, label)
        box.clear()
        box.send_keys(text)
    visible(driver, f"//button[normalize-space()='{button}' and contains(@class, 'primary')]", f"button {button}").click()
    result, deadline = "", time.time() + timeout
    while time.time() < deadline and not result:
        time.sleep(2)
        errors = visible_errors(driver)
        if errors:
            driver.save_screenshot(str(out))
            raise RuntimeError(f"{tab}: the page shows an error: {errors[0]}")
        result = field(driver, output).get_attribute("value") or ""
    if not result:
        driver.save_screenshot(str(out))
        raise RuntimeError(f"{tab}: no result within {timeout:.0f} s")
    for label, value in moves.items():  # e.g. the interpolation slider: the text and map follow it
        number = field(driver, label, "input[@type='number']")
        number.send_keys(Keys.CONTROL, "a")
        number.send_keys(str(value), Keys.ENTER)
        time.sleep(4)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(out))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pipeline folder (or hub repo id)")
    parser.add_argument("--out", default="docs/app", help="folder for the screenshots")
    parser.add_argument("--prefix", default="", help="screenshot name prefix")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per tab (CPU sampling can be slow)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app = subprocess.Popen([sys.executable, "-m", "latentdlm.cli", "app", "--model", args.model, "--port", str(port)])
    failures = []
    try:
        wait_for_server(url, app, args.timeout)
        driver = browser()
        try:
            driver.get(url)
            time.sleep(3)
            tabs = [t.text.strip() for t in driver.find_elements(By.XPATH, "//button[@role='tab']") if t.is_displayed()]
            conditioned = "Summarize" in tabs
            print(f"tabs on the page: {', '.join(tabs)}")
            for tab in [t for t in TABS if t in tabs]:
                shot = out / f"{args.prefix}{tab.lower()}.png"
                try:
                    result = run_tab(driver, tab, shot, args.timeout, conditioned)
                    print(f"{tab}: ok -> {shot}\n  {result[:300]!r}")
                except (RuntimeError, LookupError) as exc:
                    failures.append(str(exc))
                    print(f"{tab}: FAILED: {exc} (screenshot {shot})")
        finally:
            driver.quit()
    finally:
        app.terminate()
        app.wait(timeout=30)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
