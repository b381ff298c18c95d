"""The HTML report rendered in a real headless Chromium: tables and plots visible, sorting works, no script error.

Needs the system's Chromium (``apt-get install chromium``; ``.ci/run`` installs it) and the ``playwright`` package
(dev extra; it drives the system browser, nothing is downloaded). Under CI (``CI=true``) a missing browser fails.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from PIL import Image
from torch import nn

from eval import report_html
from visq.doctor import doctor

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    path = os.environ.get("VISQ_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        why = "needs the system Chromium (apt-get install chromium) and playwright (pip install -e '.[dev]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test {why}; .ci/run installs both")
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    diag = doctor(model, "w4a8", calib=torch.randn(32, 16), bits=(2, 4, 8), progress=False)
    folder = tmp_path_factory.mktemp("report")
    Image.new("RGB", (40, 20), (200, 40, 40)).save(folder / "grid.png")
    metrics = {"float": {"psnr": 99.0}, "w4a8": {"psnr": 31.5, "weight_bits": 4.0}}
    recipe = diag.mixed(weight_bits=3.0)
    mixed = {s.site: recipe.spec_for(s.site)[1].bits for s in diag.sites}
    path = report_html.write(folder / "report.html", diag, metrics=metrics, images=[folder / "grid.png"], mixed=mixed)
    (folder / "broken.html").write_text("<html><body><p>x</p><script>notDefined();</script></body></html>")
    return path, diag


def test_page_is_self_contained(page_file):
    text = page_file[0].read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "data:image/png;base64," in text


def test_a_missing_browser_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("VISQ_CHROMIUM", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="system Chromium"):
        _browser()


def _open(browser, uri: str):
    page, errors = browser.new_page(), []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(uri)
    return page, errors


def test_report_renders_in_headless_chromium(page_file):
    from playwright.sync_api import sync_playwright

    path, diag = page_file
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
        try:
            _, broken_errors = _open(browser, (path.parent / "broken.html").as_uri())
            assert any("notDefined" in e for e in broken_errors)  # the error check does catch script errors
            page, errors = _open(browser, path.as_uri())
            assert page.evaluate("document.body.dataset.ready") == "1"  # the inline script ran to its end
            table = page.locator("#sites")
            assert table.is_visible() and table.locator("tbody tr").count() == len(diag.sites)
            assert page.locator("#metrics").is_visible()
            plots = page.locator("svg.plot")
            assert plots.count() == 1 + len(diag.histograms) and all(
                plots.nth(i).is_visible() for i in range(plots.count()))
            bars = page.locator("svg.plot").first.locator("rect")
            assert bars.count() == len(diag.sites) and bars.first.bounding_box()["width"] > 100
            assert page.locator("svg.hist line").count() > 0  # the quantization grid is drawn
            image = page.locator("img.grid")
            assert image.is_visible() and page.evaluate("document.querySelector('img.grid').naturalWidth") == 40
            header = table.locator("th", has_text="model MSE")
            header.click()  # descending
            shown = [float(v) for v in table.locator("tbody tr td:nth-child(7)").evaluate_all(
                "cells => cells.map(c => c.dataset.v)")]
            assert shown == sorted(shown, reverse=True)
            header.click()  # ascending
            shown = [float(v) for v in table.locator("tbody tr td:nth-child(7)").evaluate_all(
                "cells => cells.map(c => c.dataset.v)")]
            assert shown == sorted(shown)
            assert "mixed bits" in table.locator("thead").inner_text()
        finally:
            browser.close()
    assert errors == []
