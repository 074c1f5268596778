"""Backends that run compiled programs: the host executor (reference numerics) and, later, the AI 100 simulator."""
