"""The simulated Qualcomm Cloud AI 100 backend: device specs, partitioning, memory plan, cost model."""
