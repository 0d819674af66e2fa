"""DLE throughput: final note transfers per second with 100 notes in flight.

The group of issue 4: 1 CBDC + 5 witnesses + 1 validator, an archive group of 2. Three runs of the
same load (every note sends `--transfers` transfers one after another, all notes at once):

- in-process: every node on one `InProcessNetwork` (no sockets) — the protocol's own cost;
- 1 worker process: every node in one process, talking HTTP over loopback;
- 2 worker processes: the nodes split over two processes (archive 1, CBDC, witnesses 1-2 | archive 2,
  witnesses 3-5, validator), HTTP between and within them.

The load generator (signing transfers, checking each outcome's signatures) runs in this process.

The bound: signatures made and recovered per final transfer (counted in the in-process run, the EVM's
ecrecover of the user's signature included, once per execution) times the cost of one of each measured in
this run — what the machine could do if signatures were all there was. The ratio is throughput/bound.
Also the engines: one note transfer executed by pyrevm against py-evm.

The mainchain is not in the measured path (it is touched when a note opens, not per transfer), so the
archive nodes here use an in-memory stand-in for registration and the stake check.

    .venv/bin/python bench/dle.py [--notes 100] [--transfers 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dle_vm.signature as signature_module  # noqa: E402

COUNTS: Counter[str] = Counter()
_sign, _recover = signature_module.sign, signature_module.recover


def _counted_sign(secret: bytes, digest: bytes) -> bytes:
    COUNTS["sign"] += 1
    return _sign(secret, digest)


def _counted_recover(digest: bytes, signature: bytes) -> bytes:
    COUNTS["recover"] += 1
    return _recover(digest, signature)


from dle_vm.engine import BlockContext  # noqa: E402
from dle_vm.hashing import keccak  # noqa: E402
from dle_vm.pyevm_engine import PyEvmEngine  # noqa: E402
from dle_vm.revm_engine import RevmEngine  # noqa: E402
from offchain.dle.archive import ROLE_VALIDATOR, ROLE_WITNESS, ArchiveNode  # noqa: E402
from offchain.dle.client import DleClient  # noqa: E402
from offchain.dle.digests import Domains  # noqa: E402
from offchain.dle.local import LocalDle, address_of_secret  # noqa: E402
from offchain.dle.member import MemberNode, Timeouts  # noqa: E402
from offchain.dle.note import NoteSigner, NoteTerms, genesis_state, note_program  # noqa: E402
from offchain.dle.roles import ArchiveGroup  # noqa: E402
from offchain.dle.store import ChainStore  # noqa: E402
from offchain.dle.transport import HttpTransport, serve  # noqa: E402

# Every module that bound `sign` or `recover` counts them (dle_vm.block's Block.signers included).
for _module in list(sys.modules.values()):
    if (getattr(_module, "__name__", "") or "").startswith(("dle_vm", "offchain")):
        if getattr(_module, "sign", None) is _sign:
            _module.sign = _counted_sign  # type: ignore[attr-defined]
        if getattr(_module, "recover", None) is _recover:
            _module.recover = _counted_recover  # type: ignore[attr-defined]

DOMAINS = Domains(43112, b"\x11" * 20, b"\x22" * 20)
VALUE = 100_000_000
TIMEOUTS = Timeouts(vote=60, accept=60, final=60, archive=120)


class OpenMainchain:
    """Registration and the stake check, in memory (not on the measured path)."""

    def meets_minimum(self, address: bytes, role: int) -> bool:
        return True

    def capacity(self, address: bytes, role: int) -> int:
        return 1_000_000

    def register_chain(self, *args: Any) -> None:
        return None

    def report_equivocation(self, *args: Any) -> int:
        raise AssertionError("no fault in a benchmark")

    def report_fault(self, *args: Any) -> int:
        raise AssertionError("no fault in a benchmark")


def key(name: str) -> bytes:
    return keccak(b"dle bench " + name.encode())


ARCHIVES = [key("archive 1"), key("archive 2")]
CBDC = key("cbdc")
WITNESSES = [key(f"witness {i}") for i in range(5)]
VALIDATOR = key("validator")
ALL_NODES = [*ARCHIVES, CBDC, *WITNESSES, VALIDATOR]
SPLIT = [[ARCHIVES[0], CBDC, WITNESSES[0], WITNESSES[1]], [ARCHIVES[1], *WITNESSES[2:], VALIDATOR]]
GROUP = ArchiveGroup(0, 1, tuple(sorted(address_of_secret(s) for s in ARCHIVES)))


def holder(note: int) -> bytes:
    return key(f"holder {note}")


def terms_of(note: int) -> NoteTerms:
    return NoteTerms(
        note,
        DOMAINS.mainchain_id,
        DOMAINS.cash,
        VALUE,
        address_of_secret(holder(note)),
        address_of_secret(CBDC),
        (),
        bytes(20),
        5,
    )


async def load(client: DleClient, notes: int, transfers: int) -> tuple[float, int]:
    """Every note sends `transfers` transfers in sequence, all notes at once; (seconds, finals)."""
    program = note_program()
    signers = []
    for note in range(1, notes + 1):
        roles = (await client.roles(terms_of(note).chain)).roles
        full = replace(terms_of(note), witnesses=roles.witnesses, validators_pool=roles.validators[0])
        signers.append((full, NoteSigner(full, program)))
    expiry = int(time.time()) + 3600
    receiver = address_of_secret(key("receiver"))

    async def one(index: int) -> int:
        terms, signer = signers[index]
        for nonce in range(transfers):
            tx = signer.transfer(holder(terms.note), terms.holder, receiver, 1_000, nonce, expiry)
            outcome = await client.submit(terms.chain, [tx])
            assert outcome.receipts[0].success
        return transfers

    start = time.perf_counter()
    done = await asyncio.gather(*(one(i) for i in range(notes)))
    return time.perf_counter() - start, sum(done)


async def in_process(notes: int, transfers: int) -> tuple[float, int, Counter[str]]:
    with tempfile.TemporaryDirectory() as directory:
        dle = LocalDle(Path(directory), DOMAINS, OpenMainchain(), timeouts=TIMEOUTS)
        dle.add_archives(ARCHIVES)
        dle.add_member(CBDC)
        dle.add_witnesses(WITNESSES)
        dle.add_validators([VALIDATOR])
        for note in range(1, notes + 1):
            await dle.open_note(terms_of(note))
        client = dle.client(address_of_secret(ARCHIVES[0]), submit_timeout=120.0)
        engine_calls = _count_engine(dle)
        COUNTS.clear()
        seconds, finals = await load(client, notes, transfers)
        counts = Counter(COUNTS)
        counts["evm executions"] = engine_calls["txs"]
        return seconds, finals, counts


def _count_engine(dle: LocalDle) -> Counter[str]:
    calls: Counter[str] = Counter()
    apply = dle.engine.apply

    def counted(state: Any, transactions: Any, context: Any) -> Any:
        calls["txs"] += len(transactions)
        return apply(state, transactions, context)

    dle.engine.apply = counted  # type: ignore[method-assign]
    return calls


# -- worker processes ------------------------------------------------------------------------------


def worker(spec_path: str) -> None:
    """A process hosting some nodes over HTTP; prints READY once serving, runs until killed."""
    spec = json.loads(Path(spec_path).read_text())
    directory = {bytes.fromhex(a): url for a, url in spec["directory"].items()}
    engine = RevmEngine()

    async def main() -> None:
        runners = []
        for secret_hex in spec["nodes"]:
            secret = bytes.fromhex(secret_hex)
            address = address_of_secret(secret)
            # Each node signs its requests with its own key (offchain/dle/auth.py).
            transport = HttpTransport(directory, secret=secret)
            store = ChainStore(Path(spec["data"]) / f"{address.hex()[:8]}.sqlite")
            node: ArchiveNode | MemberNode
            if secret in ARCHIVES:
                node = ArchiveNode(
                    secret, transport, store, lambda: GROUP, DOMAINS, engine, OpenMainchain(), minted=BenchMints()
                )
                for w in WITNESSES:
                    node.pool.join(address_of_secret(w), ROLE_WITNESS)
                node.pool.join(address_of_secret(VALIDATOR), ROLE_VALIDATOR)
            else:
                node = MemberNode(secret, transport, store, lambda _g: GROUP, DOMAINS, engine, timeouts=TIMEOUTS)
            port = int(directory[address].rsplit(":", 1)[1])
            runners.append(await serve(node.handle, "127.0.0.1", port, address=address))
        print("READY", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def over_http(groups: list[list[bytes]], notes: int, transfers: int) -> tuple[float, int]:
    directory = {address_of_secret(s): f"http://127.0.0.1:{_free_port()}" for s in ALL_NODES}
    client_address = b"\xc1" * 20
    processes = []
    with tempfile.TemporaryDirectory() as data:
        try:
            for index, nodes in enumerate(groups):
                spec = Path(data) / f"worker-{index}.json"
                spec.write_text(
                    json.dumps(
                        {
                            "nodes": [s.hex() for s in nodes],
                            "directory": {a.hex(): url for a, url in directory.items()},
                            "data": data,
                        }
                    )
                )
                process = subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(spec)], stdout=subprocess.PIPE, text=True, cwd=ROOT
                )
                processes.append(process)
            for process in processes:
                assert process.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 120)
                assert line.startswith("READY"), line
            # One client drives every note, so it reads as the bench's operator: an archive node of the
            # group (a holder's wallet would sign as the holder, and read only its own notes).
            async with HttpTransport(directory, secret=ARCHIVES[0]) as transport:
                host = {a: a for a in GROUP.members}
                del host
                for note in range(1, notes + 1):
                    archive = GROUP.host_of(terms_of(note).chain)
                    await transport.call(archive, "open_note_bench", _encode_terms(note), timeout=120)
                client = DleClient(transport, lambda _g: GROUP, DOMAINS, submit_timeout=120.0)
                del client_address
                return await load(client, notes, transfers)
        finally:
            for process in processes:
                process.kill()
                process.wait(timeout=30)


def _encode_terms(note: int) -> bytes:
    from dle_vm.encoding import encode_rlp

    return encode_rlp(terms_of(note).to_rlp())


class BenchMints:
    """The benchmark's mainchain minted note n with `terms_of(n)` (every worker answers alike)."""

    async def terms(self, cash: bytes, asset_id: int) -> NoteTerms | None:
        return terms_of(asset_id) if cash == DOMAINS.cash else None


async def _open_note_bench(self: ArchiveNode, body: bytes) -> bytes:
    from dle_vm.encoding import decode_rlp

    return (await self.open_note(NoteTerms.from_rlp(decode_rlp(body)))).encode()


# The bench opens notes over HTTP through a method only the benchmark's archive nodes serve.
ArchiveNode._open_note_bench = _open_note_bench  # type: ignore[attr-defined]
import offchain.dle.archive as _archive  # noqa: E402

_archive._METHODS["open_note_bench"] = "_open_note_bench"


def signature_costs(rounds: int = 2000) -> tuple[float, float]:
    secret = key("cost")
    digest = keccak(b"digest")
    start = time.perf_counter()
    for _ in range(rounds):
        sig = _sign(secret, digest)
    signing = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds):
        _recover(digest, sig)
    return signing, (time.perf_counter() - start) / rounds


def engine_ratio(rounds: int = 30) -> tuple[float, float]:
    """Seconds per note transfer on py-evm and on pyrevm (the same transaction, same state)."""
    terms = replace(terms_of(1), witnesses=tuple(address_of_secret(w) for w in WITNESSES), validators_pool=b"\x05" * 20)
    revm = RevmEngine()
    context = BlockContext(terms.chain, 0, int(time.time()))
    state, _ = revm.apply(genesis_state(), [terms.initialize(CBDC)], context)
    tx = NoteSigner(terms, note_program()).transfer(
        holder(1), terms.holder, b"\x07" * 20, 1_000, 0, int(time.time()) + 3600
    )
    context = BlockContext(terms.chain, 1, int(time.time()))
    times = []
    for engine in (PyEvmEngine(), revm):
        engine.apply(state, [tx], context)
        start = time.perf_counter()
        for _ in range(rounds):
            _, (receipt,) = engine.apply(state, [tx], context)
            assert receipt.success
        times.append((time.perf_counter() - start) / rounds)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=int, default=100)
    parser.add_argument("--transfers", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    os.environ.setdefault("PYTHONHASHSEED", "0")
    pyevm, revm = engine_ratio()
    signing, recovering = signature_costs()
    seconds, finals, counts = asyncio.run(in_process(args.notes, args.transfers))
    per = {name: counts[name] / finals for name in ("sign", "recover", "evm executions")}
    cost = per["sign"] * signing + (per["recover"] + per["evm executions"]) * recovering
    bound = 1 / cost
    one_seconds, one_finals = asyncio.run(over_http([ALL_NODES], args.notes, args.transfers))
    two_seconds, two_finals = asyncio.run(over_http(SPLIT, args.notes, args.transfers))
    one, two = one_finals / one_seconds, two_finals / two_seconds
    inproc = finals / seconds
    print(
        f"notes in flight: {args.notes}; transfers each: {args.transfers}; "
        "group 1 CBDC + 5 witnesses + 1 validator, archive 2"
    )
    print(
        f"engines: py-evm {pyevm * 1e3:.2f} ms, pyrevm {revm * 1e3:.2f} ms per transfer: "
        f"pyrevm {pyevm / revm:.1f}x (goal >= 5x)"
    )
    print(f"signature costs: sign {signing * 1e6:.0f} us, recover {recovering * 1e6:.0f} us")
    print(
        f"per final transfer: {per['sign']:.1f} signatures made, {per['recover']:.1f} recovered, "
        f"{per['evm executions']:.1f} EVM executions (each recovers the user's signature)"
    )
    print(f"bound (one core, signatures only): {bound:,.0f} transfers/s")
    print(f"in-process: {inproc:,.1f} transfers/s = {inproc / bound:.2f} of the bound")
    print(f"1 worker process (HTTP): {one:,.1f} transfers/s = {one / bound:.2f} of the bound (goal >= 0.5)")
    print(f"2 worker processes (HTTP): {two:,.1f} transfers/s = {two / (2 * bound):.2f} of the 2-core bound")
    print(f"scaling 1 -> 2 processes: {two / one:.2f}x (goal >= 1.7x)")


if __name__ == "__main__":
    main()
