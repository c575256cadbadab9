"""A picture of a report the way a reader sees it: headless Chromium renders the HTML to a PNG.

    fedattack report RUN_DIR --screenshot report.png

Needs a Chromium or Chrome binary on the PATH (Debian: `apt-get install chromium`); the
browser runs with a throw-away profile and without any network feature of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from fedattack.errors import FedattackError
from fedattack.report.store import check_writable

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def check_target(png: str | Path) -> None:
    """What `screenshot` needs, checked before a report is rendered: a browser, and a PNG path
    that is not a directory and whose folder can be created and written."""
    if find_browser() is None:
        raise FedattackError(f"--screenshot: no Chromium or Chrome on the PATH (looked for {', '.join(BROWSERS)}); "
                             "install one, e.g. apt-get install chromium")
    target = Path(png).expanduser()
    if target.is_dir():
        raise FedattackError(f"--screenshot: {png} is a directory; give a file path such as {target / 'report.png'}")
    check_writable(target.absolute().parent, "--screenshot")


def screenshot(page: str | Path, png: str | Path, *, width: int = 1300, height: int = 2400,
               timeout: float = 120.0) -> Path:
    """Render the HTML file `page` into `png` (width x height pixels, the top of the page)."""
    check_target(png)
    browser = find_browser()
    page, png = Path(page).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedattack-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", page.as_uri()]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FedattackError(f"--screenshot: {browser} did not finish within {timeout:g} s") from None
    if not png.is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FedattackError(f"--screenshot: {browser} wrote no image (exit {res.returncode}: {tail[0][:200]})")
    return png
