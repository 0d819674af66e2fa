"""Cost of an SI envelope against the bare cryptography it cannot do without, measured in the same run.

    python bench/si_envelope.py              # 1 KiB and 64 KiB of content
    python bench/si_envelope.py --size 4096  # other sizes (repeatable)

For each content size: seal (sign, pad, two ECIES layers), open_outer (node), open_inner (recipient,
signature check). The baseline is one ECDH plus one AES-256-GCM encryption of the same number of
bytes, with the same libraries: the least any scheme that encrypts to a public key must spend, so
the ratio is what two layers, padding to the bucket, and the signature cost on top of that. Times
are the best of several rounds, which filters out noise from other processes on the machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial

import click
from coincurve import PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offchain.si import KeyPair, open_inner, open_outer, seal, sealed_size

KIB = 1024
ROUNDS = 5


def best_time(operation: Callable[[], object], seconds: float) -> float:
    """Seconds per call: the fastest of `ROUNDS` rounds of about `seconds / ROUNDS` each."""
    calls = 1
    while True:  # grow a round until it lasts long enough to time reliably
        start = time.perf_counter()
        for _ in range(calls):
            operation()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / ROUNDS / 4:
            break
        calls *= 2
    calls = max(1, int(calls * (seconds / ROUNDS) / elapsed))
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(calls):
            operation()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def baseline(size: int) -> Callable[[], object]:
    """One ECDH and one AES-256-GCM encryption of `size` bytes, nothing else."""
    recipient = PrivateKey().public_key
    ephemeral = PrivateKey().secret
    data = os.urandom(size)
    key = os.urandom(32)
    nonce = os.urandom(12)

    def run() -> object:
        recipient.multiply(ephemeral)
        return AESGCM(key).encrypt(nonce, data, None)

    return run


@click.command()
@click.option("--size", "sizes", type=int, multiple=True, help="Content size in bytes (repeatable).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Time spent per measurement.")
def main(sizes: tuple[int, ...], seconds: float) -> None:
    sender, recipient, node = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    click.echo(
        f"{'content':>8} {'wire':>9} {'seal µs':>9} {'node µs':>9} {'recip µs':>9} {'total µs':>9} "
        f"{'MB/s':>7} {'base µs':>9} {'ratio':>6}"
    )
    for size in sizes or (KIB, 64 * KIB):
        content = os.urandom(size)
        envelope = seal(sender, recipient.public_key, node.public_key, content)
        inner = open_outer(envelope, node).inner
        assert open_inner(inner, recipient).content == content
        assert len(envelope) == sealed_size(size)

        sealing = best_time(partial(seal, sender, recipient.public_key, node.public_key, content), seconds)
        node_side = best_time(partial(open_outer, envelope, node), seconds)
        recipient_side = best_time(partial(open_inner, inner, recipient), seconds)
        bare = best_time(baseline(size), seconds)
        total = sealing + node_side + recipient_side
        click.echo(
            f"{size:>8} {len(envelope):>9} {sealing * 1e6:>9.0f} {node_side * 1e6:>9.0f} "
            f"{recipient_side * 1e6:>9.0f} {total * 1e6:>9.0f} {size / total / 1e6:>7.1f} "
            f"{bare * 1e6:>9.0f} {total / bare:>6.1f}"
        )


if __name__ == "__main__":
    main()
