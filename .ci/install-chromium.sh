#!/usr/bin/env bash
# Debian's `chromium` for tests/test_browser.py, which reads the built book in a headless browser.
# Called by `make test`'s set-up. Installs only as root with apt-get (a CI machine); elsewhere it
# says what to run and the browser test skips - unless VLMLIB_REQUIRE_BROWSER=1 (set by .ci/run),
# where a browser that cannot be installed is an error.
set -uo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi

cannot() {
    echo "install-chromium: $1; the browser test (tests/test_browser.py) will skip." >&2
    echo "install-chromium: to run it: apt-get update && apt-get install -y chromium (as root)" >&2
    if [ "${VLMLIB_REQUIRE_BROWSER:-0}" = 1 ]; then
        echo "install-chromium: VLMLIB_REQUIRE_BROWSER=1: failing instead" >&2
        exit 1
    fi
    exit 0
}

[ "$(id -u)" = 0 ] || cannot "not root, so not installing Debian's chromium package"
command -v apt-get >/dev/null 2>&1 || cannot "no apt-get (not Debian/Ubuntu)"

echo "install-chromium: apt-get install chromium (a few minutes the first time)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine: refresh them, then install.
apt-get update -q >/dev/null || cannot "apt-get update failed"
apt-get install -y -q chromium >/dev/null || cannot "apt-get install chromium failed"
command -v chromium >/dev/null 2>&1 || cannot "chromium is still not on PATH after installing"
echo "install-chromium: $(chromium --version 2>/dev/null)" >&2
