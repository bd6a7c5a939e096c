"""The quickstart notebook in a real JupyterLab, driven in Debian's Chromium by Playwright (no browser download).

Starts JupyterLab on a loopback port (token disabled: only this machine can reach it) with throw-away
config/runtime/settings folders, opens a copy of quickstart.ipynb in Chromium with a fresh profile, runs
all cells (WORKBENCH_SMALL=1 unless set otherwise), and checks the HeadExplorer: its grid is a plotly
figure, the dropdown recolours it, a click on a head updates the pattern view. Every request that would
leave the machine is blocked and recorded: the dashboard must not need one. A screenshot is saved in the
test's tmp_path; WORKBENCH_SCREENSHOT=path also copies it there (how docs/head_explorer.png is made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
RUN_ALL_TIMEOUT_MS = 900_000  # the quickstart takes ~1 min on a quiet 2-core machine; far longer on a loaded one
SETTINGS = {  # user settings of the throw-away JupyterLab: no kernel dialog, no news (no request leaves the machine)
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

pytestmark = [
    pytest.mark.browser, pytest.mark.model, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; .ci/run installs it)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright; "
                               "no browser download: the test drives /usr/bin/chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the quickstart notebook; shut down afterwards."""
    root, home = tmp_path / "notebooks", tmp_path / "jupyter"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # JupyterLab autosaves: never touch the repository's copy
    port = _free_port()
    env = {**os.environ, "WORKBENCH_SMALL": os.environ.get("WORKBENCH_SMALL", "1"), "WORKBENCH_PROGRESS": "0",
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTER_PLATFORM_DIRS": "1"}
    for plugin, settings in SETTINGS.items():
        path = home / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
         "--ServerApp.password=",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # jupyter asks for confirmation on the first SIGINT; the second stops it
        time.sleep(0.2)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()


def _accept_kernel_dialog(page) -> bool:
    """Accept JupyterLab's "Select Kernel" dialog (Python 3) if it is up; whether it was."""
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count():
        accept.first.click()
        return True
    return False


def _run_all(page, tries: int = 4) -> None:
    """Run > Run All Cells, accepting the kernel dialog if JupyterLab asks (it may, while the new kernel's
    session is still being set up), and again if the first code cell did not start."""
    first = page.locator(".jp-CodeCell .jp-InputPrompt").first
    expect = sync_api.expect
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=120_000)
    for _ in range(tries):
        _accept_kernel_dialog(page)
        _menu(page, "Run", "Run All Cells")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _accept_kernel_dialog(page):
                deadline = time.monotonic() + 20
            elif first.inner_text().strip() != "[ ]:":
                return
            time.sleep(0.25)
    raise AssertionError("Run All Cells did not start the notebook")


def _heatmap_image(page, scope: str) -> str:
    """The data URL of the image plotly draws a heatmap into (changes when the colours change)."""
    return page.locator(f"{scope} .heatmaplayer image").first.get_attribute("href")


def _cell_centre(page, scope: str, layer: int, head: int) -> tuple[float, float]:
    """Page coordinates of heatmap cell (layer, head) inside the plotly figure under ``scope``."""
    return page.locator(scope).first.evaluate(
        """(gd, [l, h]) => { const r = gd.getBoundingClientRect(), fl = gd._fullLayout;
               return [r.left + fl.xaxis._offset + fl.xaxis.d2p(h), r.top + fl.yaxis._offset + fl.yaxis.d2p(l)]; }""",
        [layer, head])


def _finished(page) -> bool:
    """Every code cell has run (numbered prompts) and the kernel is idle."""
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
    return (bool(prompts) and all(re.fullmatch(r"\[\d+\]:", t.strip()) for t in prompts)
            and page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() == 1)


def _show_explorer(page, explorer: str, grid: str, pattern: str, reloads: int = 2) -> None:
    """Wait until the HeadExplorer's grid and pattern are drawn; else save the notebook and reload the page.

    anywidget gives a widget model 2 s to initialise, and each plotly FigureWidget brings plotly.js
    (~4.6 MB) to parse: on a heavily loaded CPU the first view can time out and stay "Loading widget...".
    A reload (what a user would do) draws the kernel's live widgets from their full current state.
    """
    for attempt in range(reloads + 1):
        try:
            page.locator(explorer).wait_for(state="attached", timeout=30_000)
            page.locator(explorer).scroll_into_view_if_needed()
            page.locator(f"{grid} .gtitle").wait_for(timeout=30_000)
            page.locator(f"{pattern} .gtitle").filter(has_text="attention").wait_for(timeout=30_000)
            return
        except sync_api.TimeoutError:
            if attempt == reloads:
                raise
        page.locator("[data-command='docmanager:save']").first.click()
        time.sleep(2)
        page.reload()
        page.locator(".jp-NotebookPanel").wait_for(timeout=60_000)


def _until(condition, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def test_quickstart_in_jupyterlab(lab, tmp_path):
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright
    outside: list[str] = []

    def only_loopback(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a fresh --user-data-dir
            tmp_path / "chromium-profile", executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1500, "height": 2100})  # the whole dashboard fits
        page = browser.new_page()
        try:
            page.route("**/*", only_loopback)
            page.goto(f"{lab}/lab/tree/{NOTEBOOK.name}")
            expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
            _run_all(page)

            # the whole notebook ran, without an error
            _until(lambda: _finished(page), "the notebook did not finish", timeout=RUN_ALL_TIMEOUT_MS / 1000)
            outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            assert "Traceback" not in outputs, outputs[-3000:]

            explorer = ".wb-head-explorer"
            grid, pattern = f"{explorer} .wb-head-grid", f"{explorer} .wb-pattern"  # each is a plotly graph div
            _show_explorer(page, explorer, grid, pattern)
            expect(page.locator(f"{grid}.js-plotly-plot")).to_have_count(1)
            before = _heatmap_image(page, grid)
            page.locator(f"{explorer} .wb-colour-by select").select_option("previous_token")
            expect(page.locator(f"{grid} .gtitle")).to_contain_text("previous_token", timeout=30_000)
            _until(lambda: _heatmap_image(page, grid) != before, "the grid's colours did not change")

            layer, head = 11, 1  # any head but the first one shown (L11H1 is a previous-token head of smollm2-135m)
            expect(page.locator(f"{pattern} .gtitle")).not_to_contain_text(f"L{layer}H{head} ")
            page.locator(grid).scroll_into_view_if_needed()
            x, y = _cell_centre(page, grid, layer, head)
            page.mouse.move(x, y)
            page.mouse.click(x, y)
            expect(page.locator(f"{pattern} .gtitle")).to_contain_text(f"L{layer}H{head} attention", timeout=60_000)
            expect(page.locator(f"{explorer} .wb-head-info")).to_contain_text(f"L{layer}H{head}")
            expect(page.locator(f"{pattern} .heatmaplayer image")).to_have_count(1)
            page.mouse.move(1, 1)  # no hover label in the picture
            time.sleep(1)  # let plotly finish drawing before the picture

            shot = tmp_path / "head_explorer.png"
            page.locator(explorer).screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("WORKBENCH_SCREENSHOT"):
                shutil.copy(shot, os.environ["WORKBENCH_SCREENSHOT"])
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)  # for the failure report
            raise
        finally:
            browser.close()
    assert not outside, f"the notebook tried to reach the network: {outside[:5]}"
