"""Where the project's offline toolchain lives, and the environment that points tools at it.

The Makefile exports the same variables; this module makes `pytest`, `ape run` and `conet` work
when started directly, without `make`.
"""

from __future__ import annotations

import os
from pathlib import Path

SOLC_VERSION = "0.8.28"


def project_root() -> Path:
    """The directory holding ape-config.yaml: `CONET_PROJECT_ROOT`, else the nearest parent of the
    working directory that has one, else the source tree this package was installed from."""
    explicit = os.environ.get("CONET_PROJECT_ROOT")
    if explicit:
        return Path(explicit).resolve()
    for candidate in (Path.cwd(), *Path.cwd().parents):
        if (candidate / "ape-config.yaml").is_file():
            return candidate
    return Path(__file__).resolve().parents[1]


def configure_environment(root: Path | None = None) -> Path:
    """Point py-solc-x at the in-repo solcjs wrapper and put the npm binaries (anvil) on PATH.

    Values already set by the caller win. Returns the project root used.
    """
    root = root or project_root()
    os.environ.setdefault("SOLCX_BINARY_PATH", str(root / ".solcx"))
    npm_bin = str(root / "node_modules" / ".bin")
    path = os.environ.get("PATH", "")
    if npm_bin not in path.split(os.pathsep):
        os.environ["PATH"] = npm_bin + os.pathsep + path
    return root


def solc_binary(root: Path | None = None) -> Path:
    """The wrapper executable py-solc-x and slither run."""
    root = root or project_root()
    return Path(os.environ.get("SOLCX_BINARY_PATH", root / ".solcx")) / f"solc-v{SOLC_VERSION}"
