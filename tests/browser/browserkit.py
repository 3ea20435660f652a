"""Helpers for the browser tests: install checks, an offline page, painted plots, JupyterLab."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("PROMPTVIZ_CHROMIUM", "/usr/bin/chromium"))
APT_PACKAGES = ["chromium", "fonts-dejavu-core"]
REPO = Path(__file__).resolve().parents[2]


# --- what the tests need ------------------------------------------------------------

def _run(cmd: list[str], what: str) -> None:
    print(f"[browser tests] {what}: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}\n"
                    f"{done.stderr[-2000:]}", pytrace=False)


def ensure_chromium() -> Path:
    """``/usr/bin/chromium``, installed with apt-get first if missing and we are root."""
    if CHROMIUM.is_file():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}, which is missing. "
                    f"Install it with `sudo apt-get install -y {' '.join(APT_PACKAGES)}` "
                    "(Debian/Ubuntu) or point $PROMPTVIZ_CHROMIUM at a Chromium binary; "
                    "or leave these tests out with `-m 'not browser'`.", pytrace=False)
    _run(["apt-get", "update", "-q"], "apt-get update")
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
         "installing Chromium")
    if not CHROMIUM.is_file():
        pytest.fail(f"apt-get installed {APT_PACKAGES} but {CHROMIUM} is still missing",
                    pytrace=False)
    return CHROMIUM


def ensure_playwright() -> None:
    """Import Playwright for Python, pip-installing it into this interpreter if missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "playwright>=1.40"],
             "installing Playwright for Python")
        importlib.invalidate_caches()


class Offline:
    """Records every request a page makes; aborts all that leave ``allowed`` origins."""

    def __init__(self, allowed: tuple[str, ...] = ("file://",)) -> None:
        self.allowed = allowed
        self.blocked: list[str] = []
        self.console_errors: list[str] = []

    def attach(self, context) -> None:
        context.route("**/*", self._route)

    def watch(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.allowed) or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


class OfflinePage:
    """A page that opens a file from disk with every non-file request aborted and recorded."""

    def __init__(self, context, path: Path) -> None:
        self.path = path
        self.offline = Offline(allowed=("file://",))
        self.page = context.new_page()
        self.offline.attach(self.page)
        self.offline.watch(self.page)
        # "commit" returns at once: the pages then load side by side, so on a machine with
        # several cores parsing each file's embedded plotly.js (≈4.7 MB) overlaps
        self.page.goto(path.resolve().as_uri(), wait_until="commit")

    def loaded(self):
        self.page.wait_for_load_state("load", timeout=120_000)
        return self.page


# --- painted, not blank ---------------------------------------------------------------

#: Plotly figures that drew something: the figure's svg has a size, and its layers hold
#: traces (scatter / bar groups) or the bitmaps of heatmaps and images.
PLOT_STATE_JS = r"""el => {
  const svg = el.querySelector('svg.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const traces = el.querySelectorAll('g.trace, g.hm image, g.im image').length;
  const title = el.querySelector('.gtitle');
  // a shape nobody can see: no stroke and (for a line, or a transparent fill) no fill
  const clear = c => !c || /^rgba\(.*,\s*0\)$/.test(c.replace(/ /g, ''));
  const invisible = ((el._fullLayout || {}).shapes || []).filter(s => s.visible !== false &&
    (!(s.opacity > 0) || (!(s.line && s.line.width > 0) &&
                          (s.type === 'line' || clear(s.fillcolor))))).length;
  return {width: box.width, height: box.height, traces: traces, invisible_shapes: invisible,
          title: title ? title.textContent : '',
          data: JSON.stringify((el.data || []).map(t => [t.type, t.name, t.z, t.y, t.source]))};
}"""


def distinct_colours(png: bytes) -> int:
    """How many colours a screenshot holds (a blank area has one or two)."""
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return len(img.getcolors(maxcolors=1 << 20) or [])


def assert_painted(plot, shot: Path, min_colours: int = 8) -> dict:
    """The plotly element ``plot`` (a Playwright locator) drew traces; screenshot it to ``shot``."""
    state = plot.evaluate(PLOT_STATE_JS)
    assert state["width"] > 50 and state["height"] > 50, f"plot svg has no size: {state}"
    assert state["traces"] > 0, f"plot has no painted traces: {state['title']!r}"
    assert state["invisible_shapes"] == 0, \
        f"{state['invisible_shapes']} shapes drawn 0 px wide / transparent: {state['title']!r}"
    png = plot.screenshot(path=str(shot))
    colours = distinct_colours(png)
    assert colours >= min_colours, f"{shot.name}: the plot looks blank ({colours} colours)"
    return state


# --- JupyterLab -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on a loopback port over a temporary root directory."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root, self.home, self.port = root, home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "jupyterlab.log"
        bindir = str(Path(sys.executable).parent)
        env = {**os.environ,
               "JUPYTER_CONFIG_DIR": str(home / "config"),
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
               "JUPYTER_DATA_DIR": str(home / "data"),
               "IPYTHONDIR": str(home / "ipython"),
               "JUPYTER_PLATFORM_DIRS": "1",
               "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
               "PYTHONPATH": os.pathsep.join(
                   p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               "PROMPTVIZ_PROGRESS": "0"}
        # the page config turns off the news/update pop-ups (they would fetch from jupyter.org)
        settings = home / "config" / "labconfig"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "page_config.json").write_text(
            '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={self.port}", "--ServerApp.port_retries=0",
               "--IdentityProvider.token=", "--ServerApp.password=",
               "--ServerApp.disable_check_xsrf=True",
               f"--ServerApp.root_dir={root}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
               "--ServerApp.terminals_enabled=False",
               f"--LabApp.user_settings_dir={home / 'user-settings'}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")                 # CI runs as root
        self._log = open(self.log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({self.proc.returncode}):\n"
                            f"{self.log.read_text()[-3000:]}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"JupyterLab did not answer within {timeout:.0f} s:\n"
                    f"{self.log.read_text()[-3000:]}", pytrace=False)

    def stop(self) -> None:
        """Stop the server (it shuts its kernels down); kill it and its kernels if it hangs."""
        kernels = self.children()
        if self.proc.poll() is None:
            self.proc.terminate()                      # SIGTERM: a clean shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid, cmdline in kernels.items():           # a kernel the server left behind
            if cmdline and _cmdline(pid) == cmdline:   # the same process, not a reused id
                try:
                    os.kill(pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        self._log.close()

    def children(self) -> dict[int, bytes]:
        """The server's kernels: ``{pid: command line}`` of its child processes (``/proc``)."""
        pids = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.proc.pid:
                pid = int(stat.parent.name)
                pids[pid] = _cmdline(pid)
        return pids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
