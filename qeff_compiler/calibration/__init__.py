"""Calibration: measure activation maxima (`measure`) and store them as a table file (`table`).

The two halves sit on different layers: passes read tables (`table`), while measuring runs the pass manager
(`measure`), so a pass never imports the driver that imports it.
"""

from qeff_compiler.calibration.measure import (
    CALIBRATION_PIPELINE,
    CALIBRATION_TEXT,
    DEFAULT_MAX_TOKENS,
    activation_maxima,
    calibrate,
    calibration_file,
)
from qeff_compiler.calibration.table import load_calibration, save_calibration

__all__ = [
    "CALIBRATION_PIPELINE",
    "CALIBRATION_TEXT",
    "DEFAULT_MAX_TOKENS",
    "activation_maxima",
    "calibrate",
    "calibration_file",
    "load_calibration",
    "save_calibration",
]
