"""SI envelopes: ECIES, padding, the two layers, the strict parser, and what each party can learn."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offchain.si import (
    DEFAULT_POLICY,
    BadMagic,
    BadPadding,
    BadSignature,
    EnvelopeError,
    InvalidKey,
    KeyPair,
    MalformedEnvelope,
    OversizedEnvelope,
    PaddingPolicy,
    TamperedEnvelope,
    TruncatedEnvelope,
    UnsupportedVersion,
    WrongRecipient,
    address_of,
    ecies,
    envelope,
    load_public_key,
    max_content_size,
    open_inner,
    open_outer,
    parse_envelope,
    seal,
    sealed_size,
)
from offchain.si.envelope import (
    DELIVER_OVERHEAD,
    HEADER_SIZE,
    KIND_DELIVER,
    LAYER_OVERHEAD,
    MAGIC,
    MESSAGE_OVERHEAD,
    VERSION,
    Layer,
)
from offchain.si.padding import LENGTH_PREFIX_SIZE, pad, unpad
from offchain.si.signature import SIGNATURE_SIZE, eip191_hash, message_digest, recover, sign

KIB = 1024
ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

SENDER = KeyPair.from_secret(keccak(b"sender"))
RECIPIENT = KeyPair.from_secret(keccak(b"recipient"))
NODE = KeyPair.from_secret(keccak(b"node"))
OTHER = KeyPair.from_secret(keccak(b"other"))
TIMESTAMP = 1_700_000_000_000
MESSAGE_ID = bytes(range(16))
CONTENT = b"Hello Bobo"
FIRST_BUCKET_CONTENT = KIB - DELIVER_OVERHEAD - LENGTH_PREFIX_SIZE - MESSAGE_OVERHEAD
"""The most content that fits the 1 KiB bucket."""


def sealed(content: bytes = CONTENT, **kwargs: Any) -> bytes:
    options: dict[str, Any] = {"timestamp_ms": TIMESTAMP, "message_id": MESSAGE_ID, **kwargs}
    return seal(SENDER, RECIPIENT.public_key_64, NODE.public_key_64, content, **options)


ENVELOPE = sealed()
INNER = open_outer(ENVELOPE, NODE).inner


def raw_message(
    *,
    sender: bytes = SENDER.address,
    signer: KeyPair = SENDER,
    recipient: bytes = RECIPIENT.address,
    content: bytes = CONTENT,
    signature: bytes | None = None,
) -> bytes:
    """The innermost plaintext, built by hand so a test can lie in any field."""
    digest = message_digest(
        sender=sender, recipient=recipient, timestamp_ms=TIMESTAMP, message_id=MESSAGE_ID, content=content
    )
    if signature is None:
        signature = sign(signer, digest)
    return sender + TIMESTAMP.to_bytes(8, "big") + MESSAGE_ID + len(content).to_bytes(4, "big") + content + signature


def inner_of(message: bytes, to: KeyPair = RECIPIENT) -> bytes:
    """An inner envelope around an arbitrary (already padded or not) plaintext, sealed for real."""
    return envelope._seal_layer(load_public_key(to.public_key), to.address, Layer.RECIPIENT, message)


def outer_of(plaintext: bytes, to: KeyPair = NODE, layer: Layer = Layer.NODE) -> bytes:
    return envelope._seal_layer(load_public_key(to.public_key), to.address, layer, plaintext)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, FIRST_BUCKET_CONTENT, FIRST_BUCKET_CONTENT + 1, 64 * KIB])
def test_round_trip(size: int) -> None:
    content = bytes(i % 251 for i in range(size))
    delivery = open_outer(sealed(content), NODE)
    assert delivery.recipient == RECIPIENT.checksum_address
    message = open_inner(delivery.inner, RECIPIENT)
    assert message.sender == SENDER.checksum_address
    assert message.recipient == RECIPIENT.checksum_address
    assert (message.timestamp_ms, message.message_id, message.content) == (TIMESTAMP, MESSAGE_ID, content)


@pytest.mark.parametrize("form", ["compressed", "uncompressed", "raw64"])
def test_every_public_key_form_reaches_the_same_wallet(form: str) -> None:
    def as_form(key: KeyPair) -> bytes:
        uncompressed = b"\x04" + key.public_key_64
        return {"compressed": key.public_key, "uncompressed": uncompressed, "raw64": key.public_key_64}[form]

    data = seal(SENDER.secret, as_form(RECIPIENT), as_form(NODE), CONTENT)
    message = open_inner(open_outer(data, NODE.secret).inner, RECIPIENT.secret)
    assert message.content == CONTENT


def test_defaults_are_fresh_id_and_current_time() -> None:
    a = open_inner(open_outer(seal(SENDER, RECIPIENT.public_key, NODE.public_key, CONTENT), NODE).inner, RECIPIENT)
    b = open_inner(open_outer(seal(SENDER, RECIPIENT.public_key, NODE.public_key, CONTENT), NODE).inner, RECIPIENT)
    assert a.message_id != b.message_id
    assert abs(a.timestamp_ms - time.time() * 1000) < 60_000


def test_sealing_twice_gives_unrelated_bytes() -> None:
    assert sealed() != sealed()
    assert sealed()[:HEADER_SIZE] == sealed()[:HEADER_SIZE]


def test_seal_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="message_id"):
        sealed(message_id=b"short")
    with pytest.raises(ValueError, match="timestamp"):
        seal(SENDER, RECIPIENT.public_key, NODE.public_key, CONTENT, timestamp_ms=-1)
    with pytest.raises(InvalidKey):
        seal(SENDER, RECIPIENT.public_key[:32], NODE.public_key, CONTENT)
    with pytest.raises(InvalidKey):
        seal(b"\x00" * 32, RECIPIENT.public_key, NODE.public_key, CONTENT)
    with pytest.raises(OversizedEnvelope):
        sealed(bytes(max_content_size() + 1))


# --- what each party learns ---------------------------------------------------------------------------


def test_a_relay_sees_only_the_node_address() -> None:
    parsed = parse_envelope(ENVELOPE)
    assert parsed.destination == NODE.checksum_address
    assert parsed.key_id == NODE.address
    for secret in (RECIPIENT.address, SENDER.address, RECIPIENT.public_key, SENDER.public_key, CONTENT, MESSAGE_ID):
        assert secret not in ENVELOPE
    with pytest.raises(WrongRecipient):
        open_outer(ENVELOPE, OTHER)


def test_a_node_learns_the_recipient_but_cannot_read_the_inner_content() -> None:
    delivery = open_outer(ENVELOPE, NODE)
    assert delivery.recipient == RECIPIENT.checksum_address
    node_plaintext = ecies.decrypt(
        NODE, parse_envelope(ENVELOPE).body, info=Layer.NODE.info, aad=ENVELOPE[:HEADER_SIZE]
    )
    assert node_plaintext == bytes([KIND_DELIVER]) + delivery.inner
    for secret in (SENDER.address, CONTENT, MESSAGE_ID):
        assert secret not in node_plaintext
    with pytest.raises(WrongRecipient):
        open_inner(delivery.inner, NODE)
    # Even ignoring the key id, the node's key does not decrypt the inner layer.
    inner = envelope._parse_inner(delivery.inner, DEFAULT_POLICY)
    with pytest.raises(TamperedEnvelope):
        ecies.decrypt(NODE, inner.body, info=Layer.RECIPIENT.info, aad=inner.header)


def test_a_different_recipient_key_fails() -> None:
    with pytest.raises(WrongRecipient):
        open_inner(INNER, OTHER)
    # Rewriting the key id to the other key's address does not help: the layer was sealed to RECIPIENT.
    start = len(MAGIC) + 1
    forged = INNER[:start] + OTHER.address + INNER[start + 20 :]
    with pytest.raises(TamperedEnvelope):
        open_inner(forged, OTHER)
    with pytest.raises(WrongRecipient):
        open_inner(forged, RECIPIENT)


def test_the_layers_do_not_open_as_each_other() -> None:
    # One key as both node and recipient (a server that is its own node) still keeps the layers apart.
    padded_message = pad(raw_message(recipient=NODE.address), reserve=DELIVER_OVERHEAD)
    as_inner = envelope._seal_layer(load_public_key(NODE.public_key), NODE.address, Layer.NODE, padded_message)
    with pytest.raises(TamperedEnvelope):
        open_inner(as_inner, NODE)
    wrong_layer = outer_of(bytes([KIND_DELIVER]) + INNER, layer=Layer.RECIPIENT)
    with pytest.raises(TamperedEnvelope):
        open_outer(wrong_layer, NODE)


# --- signatures -----------------------------------------------------------------------------------


def test_signature_is_personal_sign_over_the_digest() -> None:
    message = open_inner(INNER, RECIPIENT)
    digest = message_digest(
        sender=SENDER.address,
        recipient=RECIPIENT.address,
        timestamp_ms=TIMESTAMP,
        message_id=MESSAGE_ID,
        content=CONTENT,
    )
    assert Account.recover_message(encode_defunct(primitive=digest), signature=message.signature) == message.sender
    signed = Account.from_key(SENDER.secret).sign_message(encode_defunct(primitive=digest))
    assert signed.signature == message.signature
    assert signed.message_hash == eip191_hash(digest)
    assert len(message.signature) == SIGNATURE_SIZE


def test_a_signature_by_someone_else_than_the_claimed_sender_fails() -> None:
    forged = inner_of(pad(raw_message(signer=OTHER), reserve=DELIVER_OVERHEAD))
    with pytest.raises(BadSignature, match="did not sign"):
        open_inner(forged, RECIPIENT)


def test_a_message_resealed_to_a_third_party_fails() -> None:
    # RECIPIENT forwards SENDER's signed message to OTHER as if SENDER had written to OTHER.
    forwarded = inner_of(pad(raw_message(), reserve=DELIVER_OVERHEAD), to=OTHER)
    with pytest.raises(BadSignature):
        open_inner(forwarded, OTHER)


def test_non_canonical_signatures_fail() -> None:
    good = sign(SENDER, b"\x01" * 32)
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    high_s = r + (ORDER - s).to_bytes(32, "big") + bytes([v ^ 1])
    assert recover(b"\x01" * 32, good) == SENDER.address
    wrong_length = [good[:64], good + b"\x00"]
    wrong_value = [
        good[:64] + bytes([v - 27]),  # v as 0/1 rather than Ethereum's 27/28
        good[:64] + bytes([v + 2]),
        high_s,  # the same signature's malleable twin
        bytes(32) + good[32:],
        ORDER.to_bytes(32, "big") + good[32:],
        good[:32] + bytes(32) + good[64:],
    ]
    for bad in wrong_length + wrong_value:
        with pytest.raises(BadSignature):
            recover(b"\x01" * 32, bad)
    for bad in wrong_value:
        forged = inner_of(pad(raw_message(signature=bad), reserve=DELIVER_OVERHEAD))
        with pytest.raises(BadSignature):
            open_inner(forged, RECIPIENT)


# --- padding and buckets ---------------------------------------------------------------------------


def test_envelope_sizes_leak_only_the_bucket() -> None:
    assert LAYER_OVERHEAD == 90 and DELIVER_OVERHEAD == 91 and MESSAGE_OVERHEAD == 113
    for content_size, bucket in [(0, KIB), (FIRST_BUCKET_CONTENT, KIB), (FIRST_BUCKET_CONTENT + 1, 2 * KIB)]:
        data = sealed(bytes(content_size))
        assert len(data) == LAYER_OVERHEAD + bucket == sealed_size(content_size)
        assert len(open_outer(data, NODE).inner) == bucket - 1
    largest = sealed(bytes(max_content_size()))
    assert len(largest) == LAYER_OVERHEAD + 1024 * KIB
    assert open_inner(open_outer(largest, NODE).inner, RECIPIENT).content == bytes(max_content_size())


def test_default_buckets_double_from_1_kib_to_1_mib() -> None:
    assert DEFAULT_POLICY.buckets == tuple(KIB << i for i in range(11))
    assert PaddingPolicy.doubling(KIB, 1024 * KIB) == DEFAULT_POLICY
    assert PaddingPolicy.doubling(256, 1000).buckets == (256, 512)
    for bad in [(), (32,), (1024, 1024), (2048, 1024), (1 << 32,)]:
        with pytest.raises(ValueError):
            PaddingPolicy(bad)


def test_a_smaller_policy_bounds_everything() -> None:
    policy = PaddingPolicy.doubling(256, 4 * KIB)
    data = sealed(bytes(1000), policy=policy)
    assert len(data) == LAYER_OVERHEAD + 2 * KIB
    assert open_inner(open_outer(data, NODE, policy).inner, RECIPIENT, policy).content == bytes(1000)
    with pytest.raises(OversizedEnvelope):
        sealed(bytes(4 * KIB), policy=policy)
    with pytest.raises(OversizedEnvelope):
        parse_envelope(sealed(bytes(5 * KIB)), policy)


def test_pad_and_unpad() -> None:
    for size in (0, 1, KIB - 4, KIB - 3, 5000):
        data = bytes([0xFF]) * size
        padded = pad(data)
        assert len(padded) == DEFAULT_POLICY.bucket_for(size + 4)
        assert unpad(padded) == data
    assert unpad(pad(b"\x00\x00")) == b"\x00\x00"  # content ending in zeros survives
    assert len(pad(b"x", reserve=91)) == KIB - 91
    with pytest.raises(OversizedEnvelope):
        pad(bytes(1024 * KIB - 3))


def test_unpad_is_strict() -> None:
    padded = pad(b"content")
    with pytest.raises(BadPadding, match="bucket"):
        unpad(padded[:-1])
    with pytest.raises(BadPadding, match="bucket"):
        unpad(padded, reserve=1)
    with pytest.raises(BadPadding, match="zero"):
        unpad(padded[:-1] + b"\x01")
    with pytest.raises(BadPadding, match="length prefix"):
        unpad((KIB - 3).to_bytes(4, "big") + bytes(KIB - 4))
    assert unpad((KIB - 4).to_bytes(4, "big") + bytes(KIB - 4)) == bytes(KIB - 4)
    # A larger bucket than needed is a valid choice of the sender.
    assert unpad(b"\x00\x00\x00\x01x" + bytes(2 * KIB - 5)) == b"x"


# --- the strict parser --------------------------------------------------------------------------


def test_truncated_envelopes() -> None:
    for size in [0, 1, 3, 4, 5, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 10, len(ENVELOPE) - 1]:
        for parse in (parse_envelope, lambda data: open_outer(data, NODE), lambda data: open_inner(data, RECIPIENT)):
            with pytest.raises(TruncatedEnvelope):
                parse(ENVELOPE[:size])


def test_oversized_envelopes_are_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("no decryption for an oversized envelope")

    monkeypatch.setattr(ecies, "decrypt", forbidden)
    limit = LAYER_OVERHEAD + 1024 * KIB
    for data in (b"junk" * (limit // 4 + 1), ENVELOPE + bytes(limit)):
        with pytest.raises(OversizedEnvelope):
            parse_envelope(data)
        with pytest.raises(OversizedEnvelope):
            open_outer(data, NODE)
        with pytest.raises(OversizedEnvelope):
            open_inner(data, RECIPIENT)
    # A header announcing more than the limit is refused before the rest is read.
    announces_too_much = ENVELOPE[: HEADER_SIZE - 4] + (limit - HEADER_SIZE + 1).to_bytes(4, "big")
    with pytest.raises(OversizedEnvelope):
        parse_envelope(announces_too_much)
    with pytest.raises(OversizedEnvelope):
        open_inner(INNER[: HEADER_SIZE - 4] + (1024 * KIB).to_bytes(4, "big"), RECIPIENT)


def test_wrong_magic_and_version() -> None:
    for bad in (b"CNSJ", b"cnsi", b"\x00\x00\x00\x00"):
        with pytest.raises(BadMagic):
            parse_envelope(bad + ENVELOPE[4:])
    with pytest.raises(BadMagic):
        parse_envelope(b"GET / HTTP/1.1\r\n")
    for version in (0, 2, 255):
        data = MAGIC + bytes([version]) + ENVELOPE[5:]
        with pytest.raises(UnsupportedVersion):
            parse_envelope(data)
        with pytest.raises(UnsupportedVersion):
            open_outer(data, NODE)
        # A later version may lay everything out differently, so its length is not judged.
        with pytest.raises(UnsupportedVersion):
            parse_envelope(MAGIC + bytes([version]))
    assert ENVELOPE[4] == VERSION


def test_structural_errors() -> None:
    with pytest.raises(MalformedEnvelope, match="follow the body"):
        parse_envelope(ENVELOPE + b"\x00")
    body_too_short = MAGIC + bytes([VERSION]) + NODE.address + (10).to_bytes(4, "big") + bytes(10)
    with pytest.raises(MalformedEnvelope, match="at least"):
        parse_envelope(body_too_short)
    not_a_bucket = outer_of(bytes([KIND_DELIVER]) + INNER + b"\x00")
    with pytest.raises(MalformedEnvelope, match="not a size bucket"):
        parse_envelope(not_a_bucket)
    with pytest.raises(MalformedEnvelope, match="not a size bucket"):
        open_inner(inner_of(b"\x00" * 100), RECIPIENT)


def test_an_authentic_but_malformed_plaintext_is_refused() -> None:
    with pytest.raises(MalformedEnvelope, match="kind"):
        open_outer(outer_of(b"\x02" + INNER), NODE)
    # A node-layer plaintext of a bucket whose inner part is junk.
    with pytest.raises(BadMagic):
        open_outer(outer_of(bytes([KIND_DELIVER]) + bytes(KIB - 1)), NODE)
    # The recipient layer: bad padding, a message too short, a content length that does not add up.
    with pytest.raises(BadPadding):
        open_inner(inner_of(b"\xff" * (KIB - DELIVER_OVERHEAD)), RECIPIENT)
    with pytest.raises(TruncatedEnvelope):
        open_inner(inner_of(pad(bytes(MESSAGE_OVERHEAD - 1), reserve=DELIVER_OVERHEAD)), RECIPIENT)
    message = bytearray(raw_message())
    message[44:48] = (len(CONTENT) + 1).to_bytes(4, "big")
    with pytest.raises(MalformedEnvelope, match="announces"):
        open_inner(inner_of(pad(bytes(message), reserve=DELIVER_OVERHEAD)), RECIPIENT)


@pytest.mark.parametrize(
    "index",
    [HEADER_SIZE, HEADER_SIZE + 5, HEADER_SIZE + 33, HEADER_SIZE + 33 + 12 + 100, -1],
    ids=["ephemeral key prefix", "ephemeral key", "nonce", "ciphertext", "tag"],
)
def test_tampered_bodies(index: int) -> None:
    with pytest.raises(TamperedEnvelope):
        open_outer(flip(ENVELOPE, index), NODE)
    with pytest.raises(TamperedEnvelope):
        open_inner(flip(INNER, index), RECIPIENT)


def test_tampered_headers() -> None:
    with pytest.raises(WrongRecipient):
        open_outer(flip(ENVELOPE, 10), NODE)
    # The node forwards an inner envelope whose declared length it changed: caught as structure.
    with pytest.raises(TruncatedEnvelope):
        open_inner(flip(INNER, HEADER_SIZE - 1), RECIPIENT)


# --- ECIES and keys ---------------------------------------------------------------------------------


def test_hkdf_matches_rfc_5869_test_case_1() -> None:
    okm = ecies.hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    reference = hmac.new(hmac.new(b"s", b"k", hashlib.sha256).digest(), b"i\x01", hashlib.sha256).digest()
    assert ecies.hkdf_sha256(b"k", salt=b"s", info=b"i") == reference


def test_ecies_round_trip_and_binding() -> None:
    blob = ecies.encrypt(RECIPIENT.public_key, b"secret", info=b"info", aad=b"aad")
    assert len(blob) == ecies.ECIES_OVERHEAD + 6
    assert ecies.decrypt(RECIPIENT, blob, info=b"info", aad=b"aad") == b"secret"
    for key, info, aad in [(OTHER, b"info", b"aad"), (RECIPIENT, b"other", b"aad"), (RECIPIENT, b"info", b"other")]:
        with pytest.raises(TamperedEnvelope):
            ecies.decrypt(key, blob, info=info, aad=aad)
    with pytest.raises(TruncatedEnvelope):
        ecies.decrypt(RECIPIENT, blob[: ecies.ECIES_OVERHEAD - 1], info=b"info", aad=b"aad")


# Made by the first implementation (pycryptodome AES-GCM, hand-written HKDF) with a fixed ephemeral
# key and nonce: pins HKDF salt and info, the AAD, and the E ‖ nonce ‖ ciphertext ‖ tag layout.
KNOWN_BLOB = bytes.fromhex(
    "02b3c82426768c46023c5e7ce95036c4965e70691481ea80bc80d1f3f837200987000102030405060708090a0b"
    "b3bcf2f4876310aa2abc8b227d02d7defbf1d51bf33c51ef7aad98e7a2cf2a846538ab1172"
)


def test_ecies_wire_format_is_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    recipient = KeyPair.from_secret(bytes(range(1, 33)))
    info, aad, plaintext = b"CoNET-SI/v1/ecies/recipient", b"CNSI header", b"CoNET-SI known answer"
    assert ecies.decrypt(recipient, KNOWN_BLOB, info=info, aad=aad) == plaintext
    monkeypatch.setattr(ecies, "PrivateKey", lambda: PrivateKey(bytes(range(101, 133))))
    monkeypatch.setattr(os, "urandom", lambda size: bytes(range(size)))
    assert ecies.encrypt(recipient.public_key, plaintext, info=info, aad=aad) == KNOWN_BLOB


def test_addresses_are_ethereum_addresses() -> None:
    for key in (SENDER, RECIPIENT, NODE):
        assert key.checksum_address == Account.from_key(key.secret).address
        assert address_of(key.public_key) == address_of(key.public_key_64) == key.address
        assert key.address == keccak(key.public_key_64)[12:]


def test_invalid_keys() -> None:
    off_curve_x = next(x for x in range(1, 100) if _not_on_curve(x))
    for bad in [
        b"",
        RECIPIENT.public_key[:32],
        RECIPIENT.public_key_64[:63],
        b"\x04" + RECIPIENT.public_key_64 + b"\x00",
        b"\x05" + RECIPIENT.public_key[1:],
        b"\x06" + RECIPIENT.public_key_64,
        b"\x02" + off_curve_x.to_bytes(32, "big"),
        bytes(64),
    ]:
        with pytest.raises(InvalidKey):
            load_public_key(bad)
    for secret in (b"", bytes(31), bytes(32), ORDER.to_bytes(32, "big"), b"\xff" * 32):
        with pytest.raises(InvalidKey):
            KeyPair.from_secret(secret)
    assert SENDER.secret.hex() not in repr(SENDER)


def _not_on_curve(x: int) -> bool:
    p = 2**256 - 2**32 - 977
    y2 = (x**3 + 7) % p
    return pow(y2, (p - 1) // 2, p) != 1


def test_keypair_generate_and_of() -> None:
    key = KeyPair.generate()
    assert KeyPair.of(key) is key
    assert KeyPair.of(key.secret) == key
    assert PrivateKey(key.secret).public_key.format() == key.public_key


# --- fuzz ------------------------------------------------------------------------------------------

FLIP, TRUNCATE, EXTEND, SET = "flip", "truncate", "extend", "set"


@st.composite
def mutations(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for operation in draw(st.lists(st.sampled_from([FLIP, TRUNCATE, EXTEND, SET]), min_size=1, max_size=4)):
        if operation == TRUNCATE:
            del data[draw(st.integers(0, len(data))) :]
        elif operation == EXTEND:
            data += draw(st.binary(min_size=1, max_size=64))
        elif data:
            # Half the edits land in the header, where the parser's decisions are.
            index = draw(st.one_of(st.integers(0, min(HEADER_SIZE, len(data)) - 1), st.integers(0, len(data) - 1)))
            if operation == FLIP:
                data[index] ^= 1 << draw(st.integers(0, 7))
            else:
                data[index] = draw(st.integers(0, 255))
    return bytes(data)


HOSTILE_INPUTS = st.one_of(
    st.binary(max_size=2 * KIB),
    st.binary(max_size=2 * KIB).map(lambda tail: MAGIC + bytes([VERSION]) + tail),
    st.binary(max_size=64).map(lambda tail: MAGIC + bytes([VERSION]) + NODE.address + tail),
    mutations(INNER),
    mutations(ENVELOPE),
    mutations(pad(CONTENT)),
)

OPENERS: list[Callable[[bytes], object]] = [
    parse_envelope,
    lambda data: open_outer(data, NODE),
    lambda data: open_inner(data, RECIPIENT),
    lambda data: unpad(data),
    lambda data: unpad(data, reserve=DELIVER_OVERHEAD),
    lambda data: ecies.decrypt(NODE, data, info=Layer.NODE.info, aad=b""),
]


def only_envelope_errors(data: bytes) -> None:
    for opener in OPENERS:
        with contextlib.suppress(EnvelopeError):
            opener(data)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_INPUTS)
def test_fuzz_hostile_bytes_raise_only_envelope_errors(data: bytes) -> None:
    only_envelope_errors(data)


@settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2 * KIB), st.sampled_from(["node", "recipient", "padded", "message"]))
def test_fuzz_authentic_junk_raises_only_envelope_errors(junk: bytes, where: str) -> None:
    # A sender with the right keys can put anything inside the encryption; the strict parsing after
    # decryption must hold as well as the parser before it.
    if where == "node":
        with contextlib.suppress(EnvelopeError):
            open_outer(outer_of(junk), NODE)
        return
    if where == "recipient":
        plaintext = junk
    elif where == "padded":
        plaintext = pad(junk, reserve=DELIVER_OVERHEAD)
    else:
        plaintext = pad(raw_message()[: len(junk) % 200] + junk, reserve=DELIVER_OVERHEAD)
    with contextlib.suppress(EnvelopeError):
        open_inner(inner_of(plaintext), RECIPIENT)
