"""The DLE VM: blocks, headers and state of per-asset chains, executed on an EVM engine.

This package depends on nothing in `offchain`: a chain's program arrives as bytecode.
"""
