"""ABI and bytecode of any project contract, from the one build ape makes.

Code outside ape (the DLE VM, workers, benchmarks) reads contracts through `contract_artifact` so it
never compiles differently: the artifacts come from ape's own manifest (`.build/__local__.json`),
and when a source under `contracts/` differs from what that manifest was built from, `ape compile`
is run first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offchain.toolchain import configure_environment, project_root

MANIFEST = Path(".build") / "__local__.json"


class ArtifactError(RuntimeError):
    """A contract could not be compiled or is not part of the project."""


@dataclass(frozen=True)
class ContractArtifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    """Creation code: deploy it with ABI-encoded constructor arguments appended."""
    runtime_bytecode: bytes
    """The code that lives at the contract's address (immutables left as zeros)."""


_cache: dict[Path, tuple[float, dict[str, Any]]] = {}


def contract_artifact(name: str, root: Path | None = None) -> ContractArtifact:
    """The compiled `name` (a contract's name, e.g. "CoNETToken"), compiling first if stale."""
    manifest = _manifest(root or project_root())
    contract = manifest.get("contractTypes", {}).get(name)
    if contract is None:
        known = ", ".join(sorted(manifest.get("contractTypes", {})))
        raise ArtifactError(f"no contract named {name!r} in the project (known: {known})")
    return ContractArtifact(
        name=name,
        abi=contract["abi"],
        bytecode=_hex(contract.get("deploymentBytecode")),
        runtime_bytecode=_hex(contract.get("runtimeBytecode")),
    )


def _hex(code: dict[str, str] | None) -> bytes:
    value = (code or {}).get("bytecode") or "0x"
    return bytes.fromhex(value.removeprefix("0x"))


def _manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    manifest = _cached(path) if path.is_file() else None
    if manifest is None or _stale(root, manifest):
        _compile(root)
        manifest = _cached(path)
    return manifest


def _cached(path: Path) -> dict[str, Any]:
    """The parsed manifest, parsed again only when ape has rewritten it."""
    mtime = path.stat().st_mtime
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, _read(path))
        _cache[path] = cached
    return cached[1]


def _read(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _stale(root: Path, manifest: dict[str, Any]) -> bool:
    """True when a source file is missing from the manifest or differs from what was compiled."""
    sources: dict[str, Any] = manifest.get("sources", {})
    on_disk = {p.relative_to(root).as_posix(): p for p in (root / "contracts").rglob("*.sol")}
    if set(on_disk) != set(sources):
        return True
    return any(sources[key].get("content") != path.read_text() for key, path in on_disk.items())


def _compile(root: Path) -> None:
    configure_environment(root)
    ape = Path(sys.executable).with_name("ape")
    result = subprocess.run(
        [str(ape), "compile"],
        cwd=root,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise ArtifactError(f"ape compile failed:\n{result.stdout}\n{result.stderr}")


def standard_json_input(root: Path | None = None) -> dict[str, Any]:
    """A solc standard-JSON input for every project source with the settings ape compiled them with,
    for tools that drive the compiler themselves (slither)."""
    root = root or project_root()
    manifest = _manifest(root)
    settings = dict(manifest["compilers"][0]["settings"])
    settings["outputSelection"] = {"*": {"*": ["abi", "evm.bytecode", "evm.deployedBytecode"], "": ["ast"]}}
    sources = {key: {"content": source["content"]} for key, source in sorted(manifest["sources"].items())}
    return {"language": "Solidity", "sources": sources, "settings": settings}
