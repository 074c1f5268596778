"""The package version, in a module of its own so the artifact writer can record it without importing the API."""

__version__ = "0.1.0"
