"""Best-effort set-up of the headless browser used by tests/test_browser.py.

Installs Debian's ``chromium`` when it is missing and we are root (as on CI).
The ``playwright`` Python package comes with the ``dev`` extra; its own browser
download is never used: the test drives /usr/bin/chromium.  Prints what it did; never fails the build,
the browser test itself reports what is missing (and fails on CI).
"""

import os
import shutil
import subprocess
import sys


def main():
    if shutil.which("chromium") is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        if shutil.which("apt-get"):
            print("installing Debian chromium for the browser test ...", flush=True)
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    print("chromium:", shutil.which("chromium") or "not found (browser test will skip outside CI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
