"""SI billing: EIP-712 cumulative vouchers, the payee's ledger and batch settlement, the meter."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offchain.si.billing import (
    BYTES_PER_MB,
    BadVoucherSignature,
    DecreasingVoucher,
    ExpiredVoucher,
    Ledger,
    Meter,
    Prices,
    StaleVoucher,
    Voucher,
    VoucherDomain,
    WrongDomain,
    WrongPayee,
    ceil_div,
    sign_voucher,
)

PAYER_KEY = b"\x11" * 32
OTHER_KEY = b"\x22" * 32
NODE_KEY = b"\x33" * 32
PAYER = Account.from_key(PAYER_KEY).address
OTHER = Account.from_key(OTHER_KEY).address
NODE = Account.from_key(NODE_KEY).address
CASH = to_checksum_address("0x5FbDB2315678afecb367f032d93F642f64180aa3")
OTHER_CASH = to_checksum_address("0x" + "77" * 20)
NOTE_CHAIN = keccak(b"note chain USDC #1")
DOMAIN = VoucherDomain(chain_id=43113, verifying_contract=CASH, note_chain_id=NOTE_CHAIN)
NOW = 1_700_000_000
LATER = NOW + 3_600


def voucher(amount: int, nonce: int, *, key: bytes = PAYER_KEY, payee: str = NODE, expiry: int = LATER) -> Voucher:
    return sign_voucher(key, domain=DOMAIN, payee=payee, cumulative_amount=amount, nonce=nonce, expiry=expiry)


def ledger() -> Ledger:
    return Ledger(payee=NODE, domain=DOMAIN)


def test_typed_data_is_standard_eip712() -> None:
    v = voucher(1234, 1)
    data = v.typed_data()
    assert data["domain"] == {
        "name": "CoNET-SI Billing",
        "version": "1",
        "chainId": 43113,
        "verifyingContract": CASH,
        "salt": NOTE_CHAIN,
    }
    assert [f["name"] for f in data["types"]["Voucher"]] == ["payer", "payee", "cumulativeAmount", "nonce", "expiry"]
    # the signature is over the plain EIP-712 hash any wallet computes (eth_signTypedData_v4)
    signable = encode_typed_data(full_message=data)
    assert Account.recover_message(signable, signature=v.signature) == PAYER
    assert len(v.signature) == 65
    type_hash = keccak(b"Voucher(address payer,address payee,uint256 cumulativeAmount,uint256 nonce,uint256 expiry)")
    struct = keccak(
        type_hash
        + bytes(12)
        + bytes.fromhex(PAYER[2:])
        + bytes(12)
        + bytes.fromhex(NODE[2:])
        + (1234).to_bytes(32, "big")
        + (1).to_bytes(32, "big")
        + LATER.to_bytes(32, "big")
    )
    assert signable.body == struct


def test_valid_voucher_accepted_and_repeat_idempotent() -> None:
    book = ledger()
    v = voucher(100, 1)
    assert book.accept(v, now=NOW)
    assert not book.accept(v, now=NOW)
    assert book.owed() == {PAYER: 100}
    assert book.accepted_total(PAYER) == 100


def test_forged_signature_refused() -> None:
    book = ledger()
    signed_by_other = replace(voucher(100, 1, key=OTHER_KEY), payer=PAYER)
    with pytest.raises(BadVoucherSignature):
        book.accept(signed_by_other, now=NOW)
    raised = replace(voucher(100, 1), cumulative_amount=1_000_000)  # altered after signing
    with pytest.raises(BadVoucherSignature):
        book.accept(raised, now=NOW)
    for junk in (b"", b"\x00" * 65, b"\xff" * 65, voucher(100, 1).signature[:64]):
        with pytest.raises(BadVoucherSignature):
            book.accept(replace(voucher(100, 1), signature=junk), now=NOW)
    assert book.owed() == {}


def test_wrong_payee_refused() -> None:
    with pytest.raises(WrongPayee):
        ledger().accept(voucher(100, 1, payee=OTHER), now=NOW)


@pytest.mark.parametrize(
    "other",
    [
        VoucherDomain(chain_id=43114, verifying_contract=CASH, note_chain_id=NOTE_CHAIN),
        VoucherDomain(chain_id=43113, verifying_contract=CASH, note_chain_id=keccak(b"another note chain")),
        VoucherDomain(chain_id=43113, verifying_contract=OTHER_CASH, note_chain_id=NOTE_CHAIN),
    ],
)
def test_wrong_domain_refused(other: VoucherDomain) -> None:
    v = sign_voucher(PAYER_KEY, domain=other, payee=NODE, cumulative_amount=5, nonce=1, expiry=LATER)
    with pytest.raises(WrongDomain):
        ledger().accept(v, now=NOW)
    # and relabelling it with this ledger's domain breaks the signature, which covers the domain
    with pytest.raises(BadVoucherSignature):
        ledger().accept(replace(v, domain=DOMAIN), now=NOW)


def test_expired_refused() -> None:
    with pytest.raises(ExpiredVoucher):
        ledger().accept(voucher(100, 1, expiry=NOW), now=NOW)
    assert ledger().accept(voucher(100, 1, expiry=NOW + 1), now=NOW)


def test_decreasing_and_stale_refused() -> None:
    book = ledger()
    book.accept(voucher(100, 5), now=NOW)
    with pytest.raises(DecreasingVoucher):
        book.accept(voucher(99, 6), now=NOW)
    with pytest.raises(StaleVoucher):
        book.accept(voucher(150, 4), now=NOW)  # an older serial
    with pytest.raises(StaleVoucher):
        book.accept(voucher(150, 5), now=NOW)  # the same serial for different terms
    assert book.owed() == {PAYER: 100}
    assert book.accept(voucher(100, 6, expiry=LATER + 10), now=NOW)  # equal amount, fresher: replaces
    assert book.latest[PAYER].expiry == LATER + 10
    assert book.owed() == {PAYER: 100}


def test_settle_batch_carries_deltas_and_skips_expired() -> None:
    book = ledger()
    book.accept(voucher(100, 1), now=NOW)
    book.accept(voucher(40, 1, key=OTHER_KEY, expiry=NOW + 10), now=NOW)
    batch = book.settle_batch(now=NOW)
    assert sorted((i.payer, i.amount, i.settled_total) for i in batch) == sorted([(PAYER, 100, 100), (OTHER, 40, 40)])
    assert book.owed() == {}
    assert book.settle_batch(now=NOW) == []  # nothing new, nothing carried
    book.accept(voucher(130, 2), now=NOW)
    book.accept(voucher(45, 2, key=OTHER_KEY, expiry=NOW + 20), now=NOW)
    batch = book.settle_batch(now=NOW + 30)  # OTHER's voucher has expired: cannot be redeemed
    assert [(i.payer, i.amount) for i in batch] == [(PAYER, 30)]
    assert book.owed() == {OTHER: 5}
    book.accept(voucher(47, 3, key=OTHER_KEY, expiry=NOW + 100), now=NOW + 30)
    assert [(i.payer, i.amount) for i in book.settle_batch(now=NOW + 30)] == [(OTHER, 7)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["accept", "settle"]), st.booleans(), st.integers(0, 10**9)),
        min_size=1,
        max_size=25,
    )
)
def test_settlement_deltas_exact_to_the_unit(steps: list[tuple[str, bool, int]]) -> None:
    """Whatever the interleaving, the settled deltas sum to the latest cumulative amount per payer,
    each batch carries exactly what was promised since the last, and nothing is ever settled twice."""
    book = ledger()
    keys = {PAYER: PAYER_KEY, OTHER: OTHER_KEY}
    totals = dict.fromkeys(keys, 0)
    nonces = dict.fromkeys(keys, 0)
    carried = dict.fromkeys(keys, 0)
    last_settled = dict.fromkeys(keys, 0)
    for op, first, increment in steps:
        payer = PAYER if first else OTHER
        if op == "accept":
            totals[payer] += increment
            nonces[payer] += 1
            assert book.accept(voucher(totals[payer], nonces[payer], key=keys[payer]), now=NOW)
        else:
            for item in book.settle_batch(now=NOW):
                assert item.amount == totals[item.payer] - last_settled[item.payer] > 0
                carried[item.payer] += item.amount
                last_settled[item.payer] = item.settled_total
        assert {p: totals[p] - carried[p] for p in keys if totals[p] > carried[p]} == book.owed()
    for item in book.settle_batch(now=NOW):
        carried[item.payer] += item.amount
    assert book.owed() == {}
    for payer in keys:
        assert carried[payer] == totals[payer] == book.settled.get(payer, 0)


def test_meter_integer_formula_rounds_up_once_per_batch() -> None:
    meter = Meter(Prices(per_mb_outbound=10_000, per_mb_hour_storage=100))
    assert meter.charge() == 0
    assert meter.charge(bytes_carried=BYTES_PER_MB) == 10_000
    assert meter.charge(bytes_carried=1) == 1  # a fraction of a unit rounds up
    assert meter.charge(bytes_carried=150) == 2  # 1.5 units → 2
    assert meter.charge(byte_seconds_stored=BYTES_PER_MB * 3_600) == 100  # 1 MB for an hour
    assert meter.charge(byte_seconds_stored=BYTES_PER_MB * 36) == 1  # 1 MB for 36 s = exactly one unit
    # carried and stored together round once: 0.5 + 0.5 units = 1, not 2
    assert meter.charge(bytes_carried=50, byte_seconds_stored=BYTES_PER_MB * 18) == 1
    # a huge batch stays exact (Python integers, no floats)
    big = 10**15
    assert meter.charge(bytes_carried=big) == big * 10_000 // BYTES_PER_MB
    assert Meter(Prices(0, 0)).charge(bytes_carried=10**9, byte_seconds_stored=10**12) == 0
    with pytest.raises(ValueError):
        meter.charge(bytes_carried=-1)
    with pytest.raises(ValueError):
        Prices(per_mb_outbound=-1, per_mb_hour_storage=0)


@given(st.integers(0, 10**12), st.integers(0, 10**15), st.integers(0, 10**6), st.integers(0, 10**6))
def test_meter_is_the_exact_ceiling(carried: int, stored: int, out_price: int, store_price: int) -> None:
    charge = Meter(Prices(out_price, store_price)).charge(bytes_carried=carried, byte_seconds_stored=stored)
    exact_times_denominator = carried * out_price * 3_600 + stored * store_price
    denominator = BYTES_PER_MB * 3_600
    assert (charge - 1) * denominator < exact_times_denominator <= charge * denominator


def test_ceil_div() -> None:
    assert [ceil_div(n, 3) for n in range(7)] == [0, 1, 1, 1, 2, 2, 2]


def test_voucher_field_validation() -> None:
    with pytest.raises(ValueError):
        voucher(-1, 1)
    with pytest.raises(ValueError):
        voucher(1 << 256, 1)
    with pytest.raises(ValueError):
        VoucherDomain(chain_id=1, verifying_contract=CASH, note_chain_id=b"short")
    with pytest.raises(ValueError):
        sign_voucher(PAYER_KEY, domain=DOMAIN, payee="nobody", cumulative_amount=1, nonce=1, expiry=LATER)
