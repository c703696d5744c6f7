"""Old import point of the optimize passes (effect.py): the numbers live in fidelity.py and metrics.py."""

from .fidelity import fidelity  # noqa: F401
from .metrics import first_output_top1 as top1  # noqa: F401
