"""Package data: the tiny MPT trained by tools/train_fixture.py, shipped because no model hub is reachable."""

from pathlib import Path

TINY_MPT: Path = Path(__file__).parent / "tiny-mpt-pystdlib"
TINY_MPT_VALIDATION_TEXT: Path = TINY_MPT / "validation.txt"
