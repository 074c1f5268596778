"""The `qeffc` compiler driver."""
