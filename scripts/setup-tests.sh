#!/usr/bin/env bash
# Installs everything the tests need: system packages (when run as root), then the Python extras.
# README's second command (and `.ci/run`) is: bash scripts/setup-tests.sh && bash scripts/lint.sh && python3 -m pytest -q
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a real OpenSSH server (device tests), Debian's CNCF distribution registry and
# skopeo (registry tests); espeak-ng and fonts-dejavu-core (speech and rendered text for the real-model
# tests, tests/test_real_*.py); chromium (headless, for the HTML report test and the web target); npm (fetches
# onnxruntime-web for the web target's tests, tests/ortweb.py). Installed only when missing; the tests start them on 127.0.0.1 themselves.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in openssh-server openssh-client docker-registry skopeo apache2-utils espeak-ng fonts-dejavu-core chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  command -v npm >/dev/null || need+=(npm)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    # no services are started by the package scripts inside containers; the tests start their own
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

# the core takes ranges (pyproject.toml); CI's single environment is pinned by constraints/tests.txt
python3 -m pip install -q --disable-pip-version-check -e '.[test]' -c constraints/tests.txt

# The extra environments some tests use, built once and cached in ~/.cache/edgepack-tests (tests/testenvs.py):
# the managed tflite toolchain (tests/test_toolchain_env.py) and Python 3.12 + numpy 2 for the core.
python3 tests/testenvs.py
# onnxruntime-web (npm pack, pinned in edgepack/devices/browser.py) for the web target's tests, cached beside them
python3 tests/ortweb.py
