"""DLE transactions, headers and blocks: one canonical RLP encoding, and decoders that refuse every
other byte string with an `EncodingError` (never another exception)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import rlp
from coincurve import PrivateKey
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from dle_vm.block import Block, Header, TransactionsRootError, transactions_root
from dle_vm.encoding import (
    EncodingError,
    FieldCountError,
    FieldLengthError,
    FieldTypeError,
    IntegerError,
    MalformedRLPError,
    RLPItem,
    TrailingBytesError,
    decode_rlp,
    encode_rlp,
)
from dle_vm.signature import BadSignature, address_of, recover, sign
from dle_vm.state import State
from dle_vm.transaction import Transaction

addresses = st.binary(min_size=20, max_size=20)
hashes = st.binary(min_size=32, max_size=32)
uint64 = st.integers(0, 2**64 - 1)

signatures = st.one_of(st.just(b""), st.binary(min_size=65, max_size=65))
transactions = st.builds(
    lambda chain, nonce, to, data, gas, signature: Transaction(
        chain, nonce if signature else 0, to, data, gas, signature
    ),
    hashes,
    uint64,
    addresses,
    st.binary(max_size=200),
    uint64,
    signatures,
)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    txs = tuple(draw(st.lists(transactions, max_size=4)))
    header = draw(
        st.builds(
            Header,
            chain_id=hashes,
            height=uint64,
            parent_hash=hashes,
            state_root=hashes,
            transactions_root=st.just(transactions_root(txs)),
            timestamp=uint64,
            poh_tick=uint64,
            group_id=st.integers(0, 2**256 - 1),
        )
    )
    signatures = tuple(draw(st.lists(st.binary(min_size=65, max_size=65), max_size=3)))
    return Block(header=header, transactions=txs, signatures=signatures)


def header(**changes: Any) -> Header:
    fields: dict[str, Any] = {
        "chain_id": b"\x01" * 32,
        "height": 7,
        "parent_hash": b"\x02" * 32,
        "state_root": b"\x03" * 32,
        "transactions_root": transactions_root(()),
        "timestamp": 1_700_000_000,
        "poh_tick": 99,
        "group_id": 1,
    }
    return Header(**{**fields, **changes})


TX_SECRET = keccak(b"encoding test sender")
TX = Transaction.signed(TX_SECRET, b"\xcc" * 32, 7, b"\xbb" * 20, b"\x01\x02", 100_000)


# -- round trips -------------------------------------------------------------------------------------


@given(transactions)
def test_transaction_round_trip(tx: Transaction) -> None:
    assert Transaction.decode(tx.encode()) == tx
    assert tx.hash == keccak(tx.encode())
    # The layout is plain RLP of the six fields, so Ethereum tools read it.
    serialize = rlp.sedes.big_endian_int.serialize
    assert rlp.decode(tx.encode()) == [
        tx.chain_id,
        serialize(tx.nonce),
        tx.to,
        tx.data,
        serialize(tx.gas_limit),
        tx.signature,
    ]


@given(blocks())
def test_block_and_header_round_trip(block: Block) -> None:
    assert Block.decode(block.encode()) == block
    assert Header.decode(block.header.encode()) == block.header
    assert block.hash == block.header.hash == keccak(block.header.encode())
    # A decoded block keeps its parts' bytes as their encodings: they must be what encoding gives.
    decoded = Block.decode(block.encode())
    assert decoded.header.encode() == rlp.encode(decoded.header.to_rlp())
    assert [tx.encode() for tx in decoded.transactions] == [rlp.encode(tx.to_rlp()) for tx in block.transactions]


def test_signatures_are_not_part_of_the_header_hash() -> None:
    block = Block(header=header(), transactions=())
    signed = block.with_signatures([b"\x01" * 65, b"\x02" * 65])
    assert signed.hash == block.hash and signed.encode() != block.encode()


def test_the_transactions_root_is_the_hash_of_the_encoded_list() -> None:
    assert transactions_root(()) == keccak(b"\xc0")
    assert transactions_root((TX, TX)) == keccak(rlp.encode([TX.to_rlp(), TX.to_rlp()]))
    block = Block(header=header(transactions_root=transactions_root((TX,))), transactions=(TX,))
    # ... which is the block's own transaction list exactly as it is encoded inside the block.
    assert keccak(rlp.encode(rlp.decode(block.encode())[1])) == block.header.transactions_root


rlp_items = st.recursive(st.binary(max_size=70), lambda children: st.lists(children, max_size=5), max_leaves=20)


@given(rlp_items)
def test_the_codec_is_rlp(item: RLPItem) -> None:
    assert encode_rlp(item) == rlp.encode(item)
    assert decode_rlp(encode_rlp(item)) == item


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=80), rlp_items.map(rlp.encode)), st.data())
def test_the_decoder_accepts_exactly_what_pyrlp_accepts(data: bytes, draw: st.DataObject) -> None:
    if data and draw.draw(st.booleans()):  # corrupt one byte of a valid encoding
        position = draw.draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes([draw.draw(st.integers(0, 255))]) + data[position + 1 :]
    try:
        expected = rlp.decode(data, strict=True)
    except rlp.exceptions.DecodingError:
        with pytest.raises((MalformedRLPError, TrailingBytesError)):
            decode_rlp(data)
    else:
        assert decode_rlp(data) == expected


def test_nesting_is_bounded() -> None:
    assert decode_rlp(nested_lists(15)) == nested_python(15)
    with pytest.raises(MalformedRLPError, match="nested deeper"):
        decode_rlp(nested_lists(16))


def nested_python(depth: int) -> RLPItem:
    item: RLPItem = []
    for _ in range(depth):
        item = [item]
    return item


# -- the strict decoders -----------------------------------------------------------------------------

DECODERS: list[Callable[[bytes], object]] = [Transaction.decode, Header.decode, Block.decode, State.decode]


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(DECODERS))
def test_random_bytes_decode_or_raise_an_encoding_error(data: bytes, decode: Callable[[bytes], object]) -> None:
    try:
        value = decode(data)
    except EncodingError:
        return
    assert value.encode() == data  # type: ignore[attr-defined]


@settings(max_examples=300)
@given(blocks(), st.data())
def test_mutated_blocks_decode_to_themselves_or_raise_an_encoding_error(block: Block, data: st.DataObject) -> None:
    encoded = bytearray(block.encode())
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = Block.decode(bytes(encoded))
    except EncodingError:
        return
    assert decoded.encode() == bytes(encoded)


def nested_lists(depth: int) -> bytes:
    """A valid RLP list nested `depth` levels deep: [[[...[]...]]]."""
    encoded = b"\xc0"
    for _ in range(depth):
        encoded = rlp.codec.length_prefix(len(encoded), 0xC0) + encoded
    return encoded


def tx_fields(**changes: RLPItem) -> list[RLPItem]:
    fields: dict[str, RLPItem] = {
        "chain": TX.chain_id,
        "nonce": b"\x07",
        "to": TX.to,
        "data": TX.data,
        "gas": b"\x01\x86\xa0",
        "signature": TX.signature,
    }
    fields.update(changes)
    return list(fields.values())


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", MalformedRLPError),
        (b"\xf8", MalformedRLPError),
        (b"\x81\x05", MalformedRLPError),  # a single byte below 0x80 in the long form
        (nested_lists(5_000), MalformedRLPError),  # deeper than Python recursion goes
        (TX.encode() + b"\x00", TrailingBytesError),
        (rlp.encode(tx_fields()[:5]), FieldCountError),
        (rlp.encode([*tx_fields(), b""]), FieldCountError),
        (rlp.encode(TX.to), FieldTypeError),
        (rlp.encode(tx_fields(data=[b"x"])), FieldTypeError),
        (rlp.encode(tx_fields(chain=b"\xcc" * 31)), FieldLengthError),
        (rlp.encode(tx_fields(signature=b"\x01" * 64)), FieldLengthError),
        (rlp.encode(tx_fields(nonce=b"\x00\x07")), IntegerError),  # leading zero
        (rlp.encode(tx_fields(to=b"\xbb" * 21)), FieldLengthError),
        (rlp.encode(tx_fields(gas=b"\x00\x01")), IntegerError),  # leading zero
        (rlp.encode(tx_fields(gas=b"\x01" * 9)), IntegerError),  # above uint64
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_transaction_decoder_errors(data: bytes, error: type[EncodingError]) -> None:
    with pytest.raises(error):
        Transaction.decode(data)


def test_header_and_block_decoder_errors() -> None:
    fields = header().to_rlp()
    with pytest.raises(FieldCountError):
        Header.decode(rlp.encode(fields[:7]))
    with pytest.raises(FieldLengthError):
        Header.decode(rlp.encode([b"\x01" * 31, *fields[1:]]))
    with pytest.raises(IntegerError):
        Header.decode(rlp.encode([*fields[:7], b"\x01" * 33]))  # group id above uint256
    with pytest.raises(TrailingBytesError):
        Header.decode(header().encode() + b"\xc0")
    block = Block(header=header(), transactions=(), signatures=(b"\x05" * 65,))
    parts = block.to_rlp()
    with pytest.raises(FieldLengthError):
        Block.decode(rlp.encode([parts[0], parts[1], [b"\x05" * 64]]))
    with pytest.raises(FieldCountError):
        Block.decode(rlp.encode(parts[:2]))
    with pytest.raises(FieldTypeError):
        Block.decode(rlp.encode([parts[0], b"", parts[2]]))
    # A header that does not commit to the transactions the block carries.
    with pytest.raises(TransactionsRootError):
        Block.decode(rlp.encode([parts[0], [TX.to_rlp()], parts[2]]))


def test_constructors_refuse_what_decoders_refuse() -> None:
    with pytest.raises(FieldLengthError):
        Transaction(b"\x00" * 31, 0, TX.to, b"", 0, b"")
    with pytest.raises(IntegerError):
        Transaction(TX.chain_id, 0, TX.to, b"", -1, b"")
    with pytest.raises(EncodingError):
        Transaction(TX.chain_id, 1, TX.to, b"", 0, b"")  # a system transaction has nonce 0
    with pytest.raises(IntegerError):
        header(height=2**64)
    with pytest.raises(TransactionsRootError):
        Block(header=header(), transactions=(TX,))


# -- signatures --------------------------------------------------------------------------------------


def test_members_sign_the_header_hash_and_signers_recover() -> None:
    keys = [PrivateKey(bytes([i]) * 32) for i in (1, 2, 3)]
    block = Block(header=header(), transactions=())
    signed = block.with_signatures(sign(key.secret, block.hash) for key in keys)
    assert signed.signers() == tuple(address_of(key.public_key) for key in keys)
    assert all(signature[64] in (27, 28) for signature in signed.signatures)
    digest = keccak(b"another digest")
    assert Block.decode(signed.encode()).signers(digest) != signed.signers()


def test_non_canonical_signatures_are_refused() -> None:
    digest = keccak(b"x")
    signature = sign(b"\x07" * 32, digest)
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(signature[32:64], "big")
    high_s = signature[:32] + (order - s).to_bytes(32, "big") + bytes([55 - signature[64]])
    with pytest.raises(BadSignature, match="lower half"):
        recover(digest, high_s)
    with pytest.raises(BadSignature, match="27 or 28"):
        recover(digest, signature[:64] + b"\x00")
    with pytest.raises(BadSignature):
        recover(digest, signature[:64])
