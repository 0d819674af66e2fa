"""SI billing on the DLE note chains, on a real devnet: authorizations checked on chain, bills settled.

One DLE devnet for the module (anvil, the contracts, every DLE node its own process: offchain/devnet/dle.py),
an SI recipient node process started with `--devnet DIR --settle-every 1` and an SI relay process.

1. A holder buys a note (`conet cash buy`), authorizes the SI node on its note chain (the wallet), and
   registers through the relay: a registration naming an authorization that is not on the chain, one
   whose authorization pays someone else on the chain, and one claiming another limit are refused
   (403, nothing registered); the true one is answered 200. A sender's messages are fetched and
   acknowledged, billed once and vouched; the node's settler deducts the bill in ONE transaction: the
   holder's balance drops by exactly the bill plus the 0.05% fee, the node's rises by the bill, the
   authorization's `spent` is the bill, `conet si earnings` shows it settled with its block; rounds
   after it (on schedule and on SIGUSR1) submit nothing.
2. Retries are idempotent, in process against the same devnet: a submission that never reached the DLE
   is resubmitted byte for byte and lands once; a crash between the final answer and the node's
   record is resolved from the chain (spent, nonce) after a restart without a second deduction; a
   revoked authorization and an unreachable DLE are refused at registration.
3. Without the DLE: `--settle-every` needs `--devnet`; `NodeState.settlement_due` marks nothing and
   `record_settlement` adds a settled total once, also across a reopen.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from offchain.cli import main as conet
from offchain.devnet import dle as devnet
from offchain.dle.note import NoteSigner
from offchain.dle.transport import HttpTransport
from offchain.dle.wallet import NoteChain
from offchain.si.billing import Meter, Prices, sign_voucher
from offchain.si.client import ClientProfile, NodeRefused, PaymentTerms, SIClient
from offchain.si.directory import NodeInfo, StaticDirectory
from offchain.si.ecies import KeyPair
from offchain.si.node import NodeConfig, NodeState, earnings
from offchain.si.node import main as node_main
from offchain.si.registration import (
    AuthorizationRejected,
    AuthorizationUnverifiable,
    PayPayload,
    RequestKind,
    sign_authorization,
    sign_request,
)
from offchain.si.settlement import (
    NoteChains,
    NoteChainVerifier,
    SettlementJournal,
    Settler,
    settlement_history,
)

pytestmark = pytest.mark.anvil

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
USD = 10**6
DAY = 86400
PRICE = USD  # per MB carried: one mock dollar
BUCKET = 1023  # a short message's inner envelope (N1), the smallest bucket
START_TIMEOUT = 60.0


# -- processes --------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A `python -m` process that prints `… listening on http://HOST:PORT` once it serves."""

    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen[str] | None = None
    url: str = ""

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self.args, "--port", "0"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        line = _first_line(self.process, START_TIMEOUT)
        match = re.search(r"listening on (http://\S+)", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {line!r}; log:\n{self.log.read_text()}")
        self.url = match.group(1)

    def signal(self, signum: int) -> None:
        assert self.process is not None and self.process.poll() is None, f"{self.name} is not running"
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline() if process.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


@dataclass
class World:
    state: devnet.DevnetState
    client: devnet.DevnetClient
    node_key: KeyPair
    node: Proc
    node_data: Path
    relay: Proc
    directory: StaticDirectory
    tmp: Path

    @property
    def devnet_dir(self) -> Path:
        return Path(self.state.directory)

    def node_info(self) -> NodeInfo:
        return NodeInfo(self.node_key.address, self.node.url, self.node_key.public_key_64)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("si-settlement")
    directory = tmp / "devnet"
    state = devnet.up(directory, log=lambda line: None)
    procs: list[Proc] = []
    try:
        node_key = KeyPair.generate()
        key_file = tmp / "node.key"
        key_file.write_text(node_key.secret.hex())
        node_data = tmp / "node-data"
        node = Proc(
            "si-node",
            [
                "offchain.si.node", "--key-file", str(key_file), "--data-dir", str(node_data),
                "--devnet", str(directory), "--settle-every", "1", "--price-outbound", str(PRICE),
                "--price-storage", "0", "--bill-threshold", str(10**9), "--keepalive", "1",
            ],
            tmp / "node.log",
        )  # fmt: skip
        procs.append(node)
        node.start()
        nodes = StaticDirectory([NodeInfo(node_key.address, node.url, node_key.public_key_64)])
        nodes.save(tmp / "nodes.json")
        relay_key = tmp / "relay.key"
        relay_key.write_text(KeyPair.generate().secret.hex())
        relay = Proc(
            "si-relay",
            ["offchain.si.relay", "--key-file", str(relay_key), "--directory", str(tmp / "nodes.json")],
            tmp / "relay.log",
        )
        procs.append(relay)
        relay.start()
        yield World(state, devnet.DevnetClient.open(directory), node_key, node, node_data, relay, nodes, tmp)
    finally:
        for proc in reversed(procs):
            proc.stop()
        devnet.down(directory, log=lambda line: None)
        left = [n.name for n in state.nodes if n.running()]
        assert not left and not state.anvil_running(), left


# -- helpers ----------------------------------------------------------------------------------------------


def cli(*args: str) -> str:
    result = CliRunner().invoke(conet, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"conet {' '.join(args)}:\n{result.output}"
    return result.output


def buy_note(world: World, name: str, dollars: int) -> tuple[KeyPair, int, bytes]:
    """A fresh holder with gas buys a note through `conet cash buy`: (holder, note, chain id)."""
    holder = KeyPair.generate()
    key_file = world.tmp / f"{name}.key"
    key_file.write_text(holder.secret.hex())
    key_file.chmod(0o600)
    devnet.load_wallet(world.client, key_file=key_file)
    out = cli("cash", "--devnet", str(world.devnet_dir), "--key-file", str(key_file), "buy", str(dollars))
    match = re.search(r"note (\d+): chain 0x([0-9a-f]{64}) open", out)
    assert match is not None, out
    return holder, int(match.group(1)), bytes.fromhex(match.group(2))


def run(coroutine: Any, timeout: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def on_note(world: World, note: int, work: Callable[[NoteChain], Any]) -> Any:
    async with world.client.transport() as transport:
        chain = world.client.note_chain(transport, note)
        chain.expiry = 7 * DAY  # the authorizations it signs run a week (the SI node wants at least an hour)
        return await work(chain)


async def read_chain(chain: NoteChain, holder: bytes, payees: list[bytes], nonce: int) -> dict[str, Any]:
    """Balances of the holder and payees, the authorization (holder, nonce), and the payees' nonces."""
    height, state = await chain.head()
    ((payee, expiry, revoked, limit, spent),) = chain.reader.view(state, chain.chain, "authorizationOf", holder, nonce)
    return {
        "height": height,
        "holder": chain.reader.balance(state, chain.chain, holder),
        "payees": [chain.reader.balance(state, chain.chain, p) for p in payees],
        "nonces": [chain.reader.nonce(state, chain.chain, p) for p in payees],
        "authorization": (payee, int(expiry), bool(revoked), int(limit), int(spent)),
        "fee": lambda amount: int(chain.reader.view(state, chain.chain, "feeOf", amount)[0]),
    }


def wait_until(what: str, condition: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# -- 1. the node process: registration on chain, one deduction per bill -----------------------------------


def test_registration_is_checked_on_the_note_chain_and_the_bill_settles_in_one_deduction(world: World) -> None:
    holder, note, note_chain = buy_note(world, "holder", 20)
    stranger = KeyPair.generate()
    node = world.node_key

    async def authorize(chain: NoteChain) -> tuple[int, int, int, dict[str, Any]]:
        elsewhere, _ = await chain.authorize(holder.secret, stranger.address, 5 * USD)
        mine, _ = await chain.authorize(holder.secret, node.address, 5 * USD)
        before = await read_chain(chain, holder.address, [node.address], mine)
        return elsewhere, mine, before["authorization"][1], before

    elsewhere, mine, expiry, before = run(on_note(world, note, authorize))
    assert (elsewhere, mine) == (0, 1)
    cash, chain_id = world.client.domains.cash, world.client.domains.mainchain_id

    def terms(nonce: int, limit: int = 5 * USD) -> PaymentTerms:
        return PaymentTerms(chain_id, cash, note_chain, limit, nonce, expiry)

    async def register_and_use() -> tuple[list[NodeRefused], int]:
        refusals = []
        async with SIClient(holder, ClientProfile(world.relay.url)) as client:
            # Each is signed by the holder and passes every offline check; only the chain says no.
            for bad in (terms(7), terms(elsewhere), terms(mine, limit=4 * USD)):
                with pytest.raises(NodeRefused) as caught:
                    await client.register(world.node_info(), bad)
                refusals.append(caught.value)
            assert earnings(world.node_data)[1] == []  # nothing was registered
            registered = await client.register(world.node_info(), terms(mine))
            assert registered.node == node.address and registered.per_mb_outbound == PRICE

            async with SIClient(KeyPair.generate(), ClientProfile(world.relay.url), directory=world.directory) as alice:
                for text in (b"one", b"two", b"three", b"four"):
                    await alice.send(client.communication_address(), text)
            received = await client.fetch_all()
            assert sorted(r.message.content for r in received) == [b"four", b"one", b"three", b"two"]
            assert await client.ack([r.id for r in received]) == 4
            assert client.profile.vouched_total == 0  # under the bill threshold: not billed yet
            await client.fetch()  # bills what was carried, and the client pays it with one voucher
            assert client.profile.vouched_total == client.profile.billed_total
            return refusals, client.profile.vouched_total

    refusals, bill = run(register_and_use())
    assert [(r.status, r.code) for r in refusals] == [(403, "authorization_rejected")] * 3
    assert "no authorization 7" in refusals[0].message
    assert "pays another payee" in refusals[1].message
    assert "limit 5000000" in refusals[2].message and "claims 4000000" in refusals[2].message
    assert holder.checksum_address.lower() not in " ".join(r.message.lower() for r in refusals)
    assert bill == Meter(Prices(PRICE, 0)).charge(bytes_carried=4 * BUCKET) == 4092

    # The node's settler (every second) deducts it: one transaction, recorded once final.
    def settled() -> Any:
        lines = [c for c in earnings(world.node_data)[1] if c.client == holder.checksum_address]
        return lines if lines and lines[0].settled == bill else None

    (line,) = wait_until("the bill to be settled on the note chain", settled)
    assert (line.billed, line.vouched, line.settled, line.owed, line.unpaid) == (bill, bill, bill, 0, 0)
    after = run(on_note(world, note, lambda chain: read_chain(chain, holder.address, [node.address], mine)))
    fee = before["fee"](bill)
    assert fee == 3  # 0.05% of 4,092, rounded up
    assert before["holder"] - after["holder"] == bill + fee
    assert after["payees"][0] - before["payees"][0] == bill and after["nonces"] == [1]
    assert after["authorization"][4] == bill  # spent

    history = settlement_history(world.node_data)
    assert history is not None and not history.in_flight
    (deduction,) = history.settled
    assert (deduction.amount, deduction.fee, deduction.authorization, deduction.payee_nonce) == (bill, fee, mine, 0)
    assert deduction.height is not None and deduction.height <= after["height"]
    report = json.loads(cli("si", "earnings", "--data-dir", str(world.node_data), "--json"))
    (client_line,) = report["clients"]
    assert (client_line["settled"], client_line["owed"]) == (bill, 0) and report["owed_to_node"] == 0
    assert [(d["amount"], d["fee"], d["block"]) for d in report["deductions"]] == [(bill, fee, deduction.height)]
    text = cli("si", "earnings", "--data-dir", str(world.node_data))
    assert f"settled on the note chains: {bill} in 1 deductions" in text

    # Nothing new: rounds on schedule and on demand (SIGUSR1) submit nothing.
    settled_in = max(r.number for r in history.recent if r.settled)
    world.node.signal(signal.SIGUSR1)

    def demanded() -> Any:
        now = settlement_history(world.node_data)
        assert now is not None
        later = [r for r in now.recent if r.number > settled_in]
        return now if any(r.trigger == "demand" for r in later) and len(later) >= 2 else None

    quiet = wait_until("a round on SIGUSR1", demanded)
    assert all(r.submitted == 0 for r in quiet.recent if r.number > settled_in)
    assert [d.amount for d in quiet.settled] == [bill]
    again = run(on_note(world, note, lambda chain: read_chain(chain, holder.address, [node.address], mine)))
    assert (again["height"], again["holder"], again["nonces"]) == (after["height"], after["holder"], [1])
    assert "on the note chain" in world.node.log.read_text()


# -- 2. retries, in process ---------------------------------------------------------------------------------


class SimulatedCrash(Exception):
    """The node dies between the DLE's final answer and its own record."""


class CrashOnRecord:
    """A node state whose first `record_settlement` dies (as the process would)."""

    def __init__(self, state: NodeState) -> None:
        self.inner = state
        self.crashed = False

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        return await self.inner.run(function, *args)

    def settlement_due(self, *, now: int) -> Any:
        return self.inner.settlement_due(now=now)

    def record_settlement(self, *args: Any) -> int:
        if not self.crashed:
            self.crashed = True
            raise SimulatedCrash("killed after the final answer, before recording it")
        return self.inner.record_settlement(*args)


def test_retries_are_idempotent_and_bad_authorizations_are_refused(world: World, tmp_path: Path) -> None:
    holder, note, note_chain = buy_note(world, "holder2", 10)
    node = KeyPair.generate()  # an in-process node this time
    domains = world.client.domains
    config = NodeConfig(chain_id=domains.mainchain_id, cash=domains.cash, prices=Prices(1_000, 0))
    state = NodeState(tmp_path / "node.db", node=node.address, config=config)

    async def scenario() -> None:
        chains = await asyncio.to_thread(NoteChains.from_devnet, world.devnet_dir)
        try:
            await go(chains)
        finally:
            await chains.aclose()

    async def go(chains: NoteChains) -> None:
        chain = await chains.open(note_chain)
        chain.expiry = 7 * DAY
        # Authorization 0 is revoked on the chain; authorization 2 is the one the node works under.
        revoked, _ = await chain.authorize(holder.secret, node.address, USD)
        signer = NoteSigner(await chain.signing_terms(), chain.program)
        await chain.client.submit(
            chain.chain, [signer.revoke(holder.secret, holder.address, revoked, 1, int(time.time()) + 600)]
        )
        mine, _ = await chain.authorize(holder.secret, node.address, USD)
        start = await read_chain(chain, holder.address, [node.address], mine)
        expiry = start["authorization"][1]

        def authorization(nonce: int) -> Any:
            return sign_authorization(
                holder, chain_id=domains.mainchain_id, cash=domains.cash, note_chain=note_chain,
                payee=node.address, limit=USD, nonce=nonce, expiry=expiry,
            )  # fmt: skip

        verifier = NoteChainVerifier(chains, node.address)
        now = int(time.time())
        with pytest.raises(AuthorizationRejected, match="revoked"):
            await verifier.verify(authorization(revoked), now=now)
        _, group = world.client.chain_of(note)
        unreachable = NoteChains(HttpTransport({}), chains.groups, domains, lambda _chain: (note, group))
        with pytest.raises(AuthorizationUnverifiable):
            await NoteChainVerifier(unreachable, node.address).verify(authorization(mine), now=now)
        await verifier.verify(authorization(mine), now=now)
        request = sign_request(
            holder, node=node.address, kind=RequestKind.REGISTER, session_key=KeyPair.generate().public_key
        )
        state.register(request, authorization(mine), storage_reading=0, now=now)

        def bill_and_vouch(carried: int, nonce: int) -> int:
            state.add_carried(holder.address, carried)
            bill = state.bill(holder.address, storage_reading=0, now=int(time.time()), force=True)
            assert bill is not None
            voucher = sign_voucher(
                holder.secret, domain=state.domain(note_chain), payee=node.checksum_address,
                cumulative_amount=bill.cumulative_due, nonce=nonce, expiry=expiry,
            )  # fmt: skip
            payload = PayPayload(voucher.cumulative_amount, voucher.nonce, voucher.expiry, voucher.signature)
            return state.pay(holder.address, payload, now=int(time.time()))[0]

        assert bill_and_vouch(1_000_000, 1) == 1_000  # one MB at 1,000 units
        journal = SettlementJournal(tmp_path / "settlement.db")
        settler = Settler(state, chains, node, journal)

        # A. The first submission never reaches the DLE: left in flight, then the same bytes land once.
        real_submit = chain.client.submit

        async def lost(*args: Any, **kwargs: Any) -> Any:
            raise TimeoutError("simulated: no answer from the creator")

        chain.client.submit = lost  # type: ignore[method-assign]
        first = await settler.settle()
        chain.client.submit = real_submit  # type: ignore[method-assign]
        assert (first.submitted, len(first.settled), first.pending) == (1, 0, 1)
        (entry,) = journal.in_flight()
        assert entry.uncertain and (entry.amount, entry.payee_nonce) == (1_000, 0)
        assert (await read_chain(chain, holder.address, [node.address], mine))["nonces"] == [0]
        second = await settler.settle()
        assert (second.submitted, [s.amount for s in second.settled], second.pending) == (1, [1_000], 0)
        assert second.settled[0].height is not None and second.settled[0].fee == start["fee"](1_000)
        assert state.paid(state.account(holder.address))[1] == 1_000  # type: ignore[arg-type]

        # B. Final on the chain, then the node dies before recording: the restarted settler finds it
        # final from the chain (spent and nonce) and records it, deducting nothing twice.
        assert bill_and_vouch(500_000, 2) == 1_500
        with pytest.raises(SimulatedCrash):
            await Settler(CrashOnRecord(state), chains, node, journal).settle()
        landed = await read_chain(chain, holder.address, [node.address], mine)
        assert landed["payees"] == [1_500] and landed["nonces"] == [2] and landed["authorization"][4] == 1_500
        assert [c.owed for c in state.owed_by_clients()] == [500]  # not recorded yet
        journal.close()
        journal = SettlementJournal(tmp_path / "settlement.db")  # the restart
        resolved = await Settler(state, chains, node, journal).settle()
        assert (resolved.submitted, [(s.amount, s.height) for s in resolved.settled]) == (0, [(500, None)])
        (line,) = state.owed_by_clients()
        assert (line.vouched, line.settled, line.owed) == (1_500, 1_500, 0)
        account = state.account(holder.address)
        assert account is not None and account.settled_under_auth == 1_500
        idle = await Settler(state, chains, node, journal).settle()
        assert (idle.submitted, idle.settled, idle.failed) == (0, [], [])
        end = await read_chain(chain, holder.address, [node.address], mine)
        assert end["height"] == landed["height"] and end["payees"] == [1_500]
        assert start["holder"] - end["holder"] == 1_500 + start["fee"](1_000) + start["fee"](500)
        assert [d.amount for d in journal.settled()] == [1_000, 500]
        journal.close()

    try:
        run(scenario())
    finally:
        state.close()


def test_settling_needs_a_dle_and_the_default_stays_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "node.key"
    key_file.write_text(KeyPair.generate().secret.hex())
    args = ["--port", "0", "--key-file", str(key_file), "--data-dir", str(tmp_path / "data"), "--settle-every", "5"]
    assert node_main(args) == 1
    assert "--settle-every needs --devnet" in capsys.readouterr().err


def test_the_node_state_records_a_settlement_once(tmp_path: Path) -> None:
    """`settlement_due` marks nothing; `record_settlement` adds a settled total once, whatever the retries."""
    node, holder = KeyPair.generate(), KeyPair.generate()
    chain, expiry, now = b"\x07" * 32, int(time.time()) + DAY, int(time.time())
    state = NodeState(tmp_path / "node.db", node=node.address, config=NodeConfig(prices=Prices(1_000, 0)))
    try:
        authorization = sign_authorization(
            holder, chain_id=43112, cash=bytes(20), note_chain=chain, payee=node.address, limit=10**6, nonce=4,
            expiry=expiry,
        )  # fmt: skip
        request = sign_request(
            holder, node=node.address, kind=RequestKind.REGISTER, session_key=KeyPair.generate().public_key
        )
        state.register(request, authorization, storage_reading=0, now=now)
        state.add_carried(holder.address, 2_000_000)
        assert state.bill(holder.address, storage_reading=0, now=now, force=True) is not None
        voucher = sign_voucher(
            holder.secret, domain=state.domain(chain), payee=node.checksum_address, cumulative_amount=2_000, nonce=1,
            expiry=expiry,
        )  # fmt: skip
        state.pay(holder.address, PayPayload(2_000, 1, expiry, voucher.signature), now=now)
        (due,) = state.settlement_due(now=now)
        assert (due.holder, due.authorization_nonce, due.amount, due.settled_total) == (
            holder.checksum_address, 4, 2_000, 2_000,
        )  # fmt: skip
        assert state.settlement_due(now=now) == [due]  # nothing was marked
        assert state.settlement_due(now=expiry) == []  # an expired voucher cannot be redeemed
        with pytest.raises(ValueError, match="vouched"):
            state.record_settlement(chain, holder.address, 4, 2_001)
        assert state.record_settlement(chain, holder.address, 4, 2_000) == 2_000
        assert state.record_settlement(chain, holder.address, 4, 2_000) == 0  # a retry adds nothing
        assert state.record_settlement(chain, holder.address, 4, 1_000) == 0
        assert state.settlement_due(now=now) == [] and state.settle_batch(now=now) == []
        account = state.account(holder.address)
        assert account is not None and account.settled_under_auth == 2_000
    finally:
        state.close()
    reopened = NodeState(tmp_path / "node.db", node=node.address, config=NodeConfig(prices=Prices(1_000, 0)))
    try:
        (line,) = reopened.owed_by_clients()
        assert (line.vouched, line.settled, line.owed) == (2_000, 2_000, 0)
    finally:
        reopened.close()
