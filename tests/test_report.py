"""report.html: valid, self-contained, its images real PNGs, and rendered by headless Chromium without errors."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from slingshot.report import SECTIONS, RunArtefacts, build_report
from slingshot.rundir import find_run

ARTEFACTS = Path(__file__).parent / "artefacts"


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if tag in ("script", "link") or (tag == "img" and not attributes.get("src", "").startswith("data:")):
            raise AssertionError(f"external resource or script in the report: <{tag} {attrs}>")
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data.strip())
            self._in_h2 = False


@pytest.fixture
def report_path(toy_trained_run, tmp_path):
    run = shutil.copytree(toy_trained_run, tmp_path / "run")
    return build_report(str(run))


def test_report_is_self_contained_html_with_real_images(report_path):
    text = report_path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    parser = _Collector()
    parser.feed(text)
    assert {"Summary", "Training curves", "Metrics", "Reliability"} <= set(parser.headings)
    assert len(parser.images) >= 3  # curves, confusion matrix, reliability diagram
    for source in parser.images:
        png = base64.b64decode(source.split(",", 1)[1])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    if sys.platform == "linux":  # the log carries resident memory per step: the curves gain a memory panel
        assert 'alt="training curves and memory"' in text


def test_curves_of_a_log_without_memory_figures_keep_two_panels(toy_trained_run, tmp_path):
    run = shutil.copytree(toy_trained_run, tmp_path / "run")
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    stripped = [{k: v for k, v in line.items() if k not in ("rss_mb", "peak_rss_mb")} for line in log]
    (run / "train_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in stripped))
    text = build_report(str(run)).read_text(encoding="utf-8")
    assert 'alt="training curves"' in text and "training curves and memory" not in text


def test_every_section_copes_with_a_run_that_lacks_its_artefacts(toy_trained_run, tmp_path):
    run = shutil.copytree(toy_trained_run, tmp_path / "run")
    (run / "predictions.jsonl").unlink()
    (run / "train_log.jsonl").unlink()
    artefacts = RunArtefacts.read(find_run(str(run)))
    assert all(section(artefacts) is None or isinstance(section(artefacts), str) for section in SECTIONS)
    assert "Summary" in build_report(str(run)).read_text(encoding="utf-8")


def test_comparison_appears_when_the_run_has_one(toy_trained_run, tmp_path):
    from slingshot.compare import compare_run
    from slingshot.recipe import CompareSection

    run = shutil.copytree(toy_trained_run, tmp_path / "run")
    compare_run(str(run), CompareSection(baselines=["majority"], latency_examples=2, bootstrap_samples=100))
    text = build_report(str(run)).read_text(encoding="utf-8")
    assert "Comparison (40 examples)" in text and "The fine-tuned model" in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium_without_console_errors(report_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    ARTEFACTS.mkdir(exist_ok=True)
    screenshot = ARTEFACTS / "report.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}", "--window-size=1100,2400",
               report_path.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", report_path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"<h2>Training curves</h2>", dom)
