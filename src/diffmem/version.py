"""The package version, below every module that records it (results' provenance, the CLI)."""

__version__ = "0.1.0"
