"""zdc-sim: fast simulation of the ALICE Zero Degree Calorimeter (ZN) response."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zdc-sim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
