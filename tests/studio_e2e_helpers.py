"""Helpers of the studio's browser test: the system Chromium driven by Playwright, screenshots saved as
test artifacts, and readings taken in the pages (plot points, progress, a job's end)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (installed by .ci/run); Playwright downloads nothing
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def artifacts_dir() -> Path:
    """Where screenshots go: $CAFFE_TEST_ARTIFACTS, default ``test-artifacts/studio/`` (git-ignored)."""
    folder = Path(os.environ.get("CAFFE_TEST_ARTIFACTS") or ROOT / "test-artifacts" / "studio")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sync_playwright() -> Any:
    """Playwright's sync API; its absence fails the test (never a skip: CI must run it)."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError as e:
        pytest.fail(f"the studio browser test needs Playwright (pip install -e '.[test]'): {e}")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the studio browser test needs the system Chromium at {CHROMIUM} (apt-get install chromium)")
    return start()


@contextmanager
def browser_page(artifacts: Path, timeout_ms: int = 60_000) -> Iterator[tuple[Any, list[str]]]:
    """A page of a fresh headless system Chromium that accepts downloads, and the list of the uncaught
    JavaScript errors of its pages. A failing test leaves ``failure.png`` in ``artifacts``. Actions wait up to
    ``timeout_ms`` (generous: the suite's other worker shares the cores, and a wait only lasts when failing)."""
    (artifacts / "failure.png").unlink(missing_ok=True)  # from an earlier run
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            try:
                yield page, errors
            except BaseException:
                with suppress(Exception):
                    page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
                raise
        finally:
            browser.close()


@dataclass
class Shots:
    """Numbered full-page screenshots of each step, in the artifacts folder."""

    folder: Path
    paths: list[Path] = field(default_factory=list)

    def __call__(self, page: Any, name: str) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        path = self.folder / f"{len(self.paths) + 1:02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)
        return path


def paste(page: Any, selector: str, text: str) -> None:
    """Put ``text`` into a text field at once, as a paste does (the field's value, then its input and change
    events): Playwright's ``fill`` inserts it character by character, which took Chromium 35 s for a 43 KB
    DetectNet network on this project's 2-core machine, past the 30 s timeout that actions then had."""
    page.eval_on_selector(
        selector,
        """(field, text) => {
            field.focus();
            field.value = text;
            field.dispatchEvent(new Event("input", {bubbles: true}));
            field.dispatchEvent(new Event("change", {bubbles: true}));
        }""",
        text,
    )


def plot_points(page: Any, div_id: str) -> int:
    """Number of points of the first trace of the Plotly graph ``div_id`` (0 before it is drawn)."""
    return page.evaluate(
        "(id) => { const d = document.getElementById(id); return d && d.data && d.data.length ? "
        "d.data[0].x.length : 0; }",
        div_id,
    )


def progress_percent(page: Any) -> float:
    """Width of the training progress bar, in percent."""
    return float(page.evaluate("() => parseFloat(document.getElementById('model-progress').style.width) || 0"))


def wait_until_ended(page: Any, seconds: float) -> None:
    """Wait until a job page shows an ended job: the exit status appears when the page reloads at the end."""
    page.wait_for_selector("#job-returncode", state="attached", timeout=seconds * 1000)


def job_log(jobs_dir: Path, job_id: str, chars: int = 3000) -> str:
    """The tail of a job's log, for failure messages."""
    path = jobs_dir / job_id / "log.txt"
    return path.read_text(errors="replace")[-chars:] if path.is_file() else f"(no log at {path})"


def create_and_finish(page: Any, jobs_dir: Path, kind: str, seconds: float) -> str:
    """Submit a studio form (``kind``: dataset or model), follow its job's page until the job ends and check it is
    Done (its log in the message otherwise); returns the job's id."""
    import re

    page.click(f"#create-{kind}")
    page.wait_for_url(re.compile(rf"/{kind}s/[\w-]+$"))
    job_id = page.get_attribute(f"#{kind}-page", "data-job-id")
    wait_until_ended(page, seconds)
    assert page.text_content("#job-status") == "Done", job_log(jobs_dir, job_id)
    return job_id
