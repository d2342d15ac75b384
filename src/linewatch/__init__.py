"""linewatch: real-time visual quality control for production lines (STPM anomaly detection)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("linewatch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
