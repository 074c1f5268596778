"""Real-card hand-off: the files Qualcomm's `qaic-compile` needs to build a Cloud AI 100 binary of a compiled model."""
