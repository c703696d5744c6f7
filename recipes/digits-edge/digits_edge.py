"""Reuses the digits example's model and data (../digits): nothing is duplicated."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "digits"))

from digits_data import calibration, validation  # noqa: F401
from digits_model import build  # noqa: F401
