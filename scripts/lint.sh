#!/usr/bin/env bash
# Lint and types for the package (config in pyproject.toml: [tool.ruff], [tool.mypy]); part of README's second
# command and .ci/run. ruff: ~0.1 s; mypy: ~27 s of CPU cold, a few seconds with its cache, which lives outside
# the checkout (beside the test fixtures) so a fresh clone reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m ruff check edgepack
python3 -m mypy --cache-dir "${EDGEPACK_TEST_CACHE:-$HOME/.cache/edgepack-tests}/mypy"
