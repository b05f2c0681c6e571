"""The report opens in a real browser, offline, with every chart shown; train draws its own loss chart."""

import os
import shutil

from helpers import require_tool

CHROMIUM = "/usr/bin/chromium"


def test_report_opens_in_a_headless_browser_with_every_chart(comparison, tmp_path):
    require_tool(os.path.exists(CHROMIUM), f"no browser: {CHROMIUM} is missing (make browser, as root; CI runs it)")
    from playwright.sync_api import sync_playwright

    _, out, _ = comparison
    page_file = tmp_path / "report.html"
    shutil.copy(out / "report.html", page_file)  # alone in its folder: everything it shows is inside it
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(page_file.as_uri())
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
            rows = page.evaluate("document.querySelectorAll('table')[0].rows.length")
            text = page.inner_text("body")
        finally:
            browser.close()
    assert [alt for alt, _ in images] == ["loss curves", "peak memory", "training speed", "held-out loss"]
    assert all(loaded for _, loaded in images)
    assert rows == 5  # the header, the base model, lora, adapter, bitfit
    assert "method bitfit has nothing to train" in text and "reference" in text


def test_a_training_run_draws_its_loss_chart(trained_run):
    chart = trained_run.output_dir / "loss.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
