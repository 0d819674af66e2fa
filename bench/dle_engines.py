"""Transactions per second of the two DLE engines on the same blocks of token transfers.

    python bench/dle_engines.py                                # 1,000 transfers in blocks of 100
    python bench/dle_engines.py --transactions 5000 --block-size 500 --holders 50

The program is the differential test's ledger (`tests/programs/DleLedger.sol`), its genesis state
funds `--holders` accounts, and each transaction is a `transfer` between two of them. Both engines
run exactly the same blocks, each block on the previous one's post-state; a run fails if their state
roots differ. Engine time covers `Engine.apply` (loading the pre-state, executing, reading the
post-state back); the state root, computed from the post-state the same way for both, is timed
separately. Times are the best of a few rounds, which filters out noise from other processes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import click
import solcx
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from dle_vm.engine import BlockContext, Engine
from dle_vm.pyevm_engine import PyEvmEngine
from dle_vm.revm_engine import RevmEngine
from dle_vm.state import Account, State
from dle_vm.transaction import Message
from offchain.toolchain import SOLC_VERSION, configure_environment, project_root

ROUNDS = 3
PROGRAM = bytes.fromhex("d1e0" * 10)
GAS_LIMIT = 100_000
ISSUER_SLOT = 4
TOTAL_SUPPLY_SLOT = 2
FUNDS = 10**12


def runtime_code() -> bytes:
    """The ledger's runtime bytecode, compiled with the project's solc."""
    configure_environment()
    source = project_root() / "tests" / "programs" / "DleLedger.sol"
    out = solcx.compile_standard(
        {
            "language": "Solidity",
            "sources": {source.name: {"content": Path(source).read_text()}},
            "settings": {
                "evmVersion": "cancun",
                "optimizer": {"enabled": True, "runs": 200},
                "outputSelection": {"DleLedger.sol": {"DleLedger": ["evm.deployedBytecode.object"]}},
            },
        },
        solc_version=SOLC_VERSION,
    )
    return bytes.fromhex(out["contracts"][source.name]["DleLedger"]["evm"]["deployedBytecode"]["object"])


def genesis(code: bytes, holders: Sequence[bytes]) -> State:
    storage = {ISSUER_SLOT: 1, TOTAL_SUPPLY_SLOT: FUNDS * len(holders)}
    for holder in holders:
        storage[int.from_bytes(keccak(encode(["address", "uint256"], [holder, 0])), "big")] = FUNDS
    return State({PROGRAM: Account(nonce=1, code=code, storage=storage)})


def transfers(holders: Sequence[bytes], count: int, seed: int) -> list[Message]:
    rng = random.Random(seed)
    selector = keccak(text="transfer(address,uint256)")[:4]
    txs = []
    for _ in range(count):
        sender, receiver = rng.sample(list(holders), 2)
        data = selector + encode(["address", "uint256"], [receiver, rng.randrange(1, 1_000)])
        txs.append(Message(sender=sender, to=PROGRAM, data=data, gas_limit=GAS_LIMIT))
    return txs


def run(
    engine: Engine, state: State, blocks: Sequence[Sequence[Message]], chain_id: bytes
) -> tuple[float, float, State]:
    """(engine seconds, root seconds, final state) for applying `blocks` in order, best of ROUNDS."""
    best_engine = best_root = float("inf")
    final = state
    for _ in range(ROUNDS):
        current, engine_time, root_time = state, 0.0, 0.0
        for height, txs in enumerate(blocks, start=1):
            context = BlockContext(chain_id=chain_id, height=height, timestamp=1_700_000_000 + height)
            start = time.perf_counter()
            current, receipts = engine.apply(current, txs, context)
            engine_time += time.perf_counter() - start
            if not all(receipt.success for receipt in receipts):
                raise click.ClickException(f"{engine.name}: a transfer failed in block {height}")
            start = time.perf_counter()
            _ = current.root
            root_time += time.perf_counter() - start
        best_engine, best_root, final = min(best_engine, engine_time), min(best_root, root_time), current
    return best_engine, best_root, final


@click.command()
@click.option("--transactions", "count", default=1_000, show_default=True, help="Transfers in all.")
@click.option("--block-size", default=100, show_default=True, help="Transfers per block.")
@click.option("--holders", "holder_count", default=20, show_default=True, help="Funded accounts.")
@click.option("--seed", default=1, show_default=True)
def main(count: int, block_size: int, holder_count: int, seed: int) -> None:
    holders = [keccak(i.to_bytes(32, "big"))[12:] for i in range(holder_count)]
    state = genesis(runtime_code(), holders)
    txs = transfers(holders, count, seed)
    blocks = [txs[i : i + block_size] for i in range(0, count, block_size)]
    chain_id = keccak(b"bench")
    click.echo(f"{count} transfers among {holder_count} holders, {len(blocks)} blocks of up to {block_size}")
    results = {}
    for engine in (PyEvmEngine(), RevmEngine()):
        engine_time, root_time, final = run(engine, state, blocks, chain_id)
        results[engine.name] = (engine_time, final.root)
        click.echo(
            f"{engine.name:>8}: {count / engine_time:10,.0f} tx/s  ({engine_time / count * 1e6:7.1f} µs/tx; "
            f"state root {root_time / len(blocks) * 1e3:.2f} ms/block)"
        )
    (pyevm_time, pyevm_root), (revm_time, revm_root) = results["py-evm"], results["revm"]
    if pyevm_root != revm_root:
        raise click.ClickException("the engines reached different state roots")
    click.echo(f"revm / py-evm: {pyevm_time / revm_time:.1f}x")


if __name__ == "__main__":
    main()
