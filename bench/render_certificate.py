"""Open a certificate's HTML in headless Chromium with every host unresolvable, check that its
figure was drawn, and save a screenshot (issue 24: "the HTML renders offline").

    python bench/render_certificate.py DIR [--out PNG] [--height 1900]

DIR is a ``loka certify --out`` directory (``certificate.html`` inside). Chromium runs with
``--host-resolver-rules="MAP * ~NOTFOUND"``, so any script or style the page tried to fetch
would fail; the check reads the page after its scripts ran (``--dump-dom``) and requires
plotly's ``main-svg`` (the figure was drawn from the inlined plotly.js) and the verdict heading.
Needs a Chromium binary (Debian: ``apt-get install chromium``); it is not a test dependency.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="screenshot path (default: DIR/certificate.png)")
    parser.add_argument("--height", type=int, default=1900)
    args = parser.parse_args()
    page = (args.dir / "certificate.html").resolve()
    if not page.is_file():
        raise SystemExit(f"no certificate.html in {args.dir}; give a `loka certify --out` directory")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found on PATH (Debian: apt-get install chromium)")
    dom = subprocess.run(
        [browser, *OFFLINE, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    drawn = 'class="main-svg"' in dom
    heading = re.search(r"<h1[^>]*>\s*(PASS|FAIL|INCONCLUSIVE)\s*</h1>", dom)
    verdict = heading.group(1) if heading else None
    out = args.out or args.dir / "certificate.png"
    subprocess.run(
        [browser, *OFFLINE, f"--window-size=1280,{args.height}", f"--screenshot={out.resolve()}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    print(f"{page}: figure drawn offline: {drawn}; verdict heading: {verdict}; screenshot {out}")
    if not drawn or verdict is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
