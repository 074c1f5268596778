"""qeff-compiler: compile MosaicML MPT models for a Qualcomm Cloud AI 100-class accelerator.

Public API (see DESIGN.md): `capture`, `PassManager`, `Program`, `QeffError` and its subclasses in
`qeff_compiler.errors`.
"""

from qeff_compiler.capture import capture
from qeff_compiler.errors import QeffError
from qeff_compiler.ir import Program
from qeff_compiler.passes import PassManager

__version__ = "0.1.0"

__all__ = ["PassManager", "Program", "QeffError", "__version__", "capture"]
