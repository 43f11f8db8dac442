"""The pypds version (one place, read by the package, the CLI and the network user agent)."""

__version__ = "0.1.0"
