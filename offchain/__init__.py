"""CoNET off-chain: every node role and protocol, and the only code that talks to the chain."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("conet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
