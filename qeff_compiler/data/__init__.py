"""Package data: the tiny MPT trained by tools/train_fixture.py, shipped because no model hub is reachable, and
its draft model for speculative decoding (`train_fixture.py --draft`: same corpus and tokenizer, smaller)."""

from pathlib import Path

TINY_MPT: Path = Path(__file__).parent / "tiny-mpt-pystdlib"
TINY_MPT_VALIDATION_TEXT: Path = TINY_MPT / "validation.txt"
TINY_MPT_DRAFT: Path = Path(__file__).parent / "tiny-mpt-pystdlib-draft"
