"""The package version, below every other module (results.environment() records it)."""

__version__ = "0.1.0"
