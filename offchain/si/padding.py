"""Padding to size buckets, so that a ciphertext's length tells an observer only its bucket.

    padded = len(data) (uint32, big-endian) ‖ data ‖ zero bytes

The length prefix makes the padding unambiguous for any content (content may itself end in zeros);
the zeros make it canonical, so `unpad` can insist on exactly one valid form per content and size.

`reserve` serves enclosing layers: a caller that will wrap the padded bytes in `reserve` bytes of
fixed overhead before they reach the layer that should be bucket-sized asks for a padded length of
`bucket - reserve`, and the outer plaintext then comes out exactly a bucket long.
"""

from __future__ import annotations

from dataclasses import dataclass

from offchain.si.errors import BadPadding, OversizedEnvelope

__all__ = ["DEFAULT_POLICY", "LENGTH_PREFIX_SIZE", "PaddingPolicy", "pad", "unpad"]

LENGTH_PREFIX_SIZE = 4
KIB = 1024
MIB = 1024 * KIB
_MIN_BUCKET = 64
_MAX_BUCKET = 1 << 31
"""Buckets stay below 2 GiB so every length fits the envelope's uint32 length fields."""


@dataclass(frozen=True)
class PaddingPolicy:
    """The size buckets plaintexts are padded to, smallest first.

    The default doubles from 1 KiB to 1 MiB: at most half of any padded message is padding, and
    eleven sizes leak under four bits. The largest bucket is also the size limit: anything larger
    is refused before any work is done on it.
    """

    buckets: tuple[int, ...] = tuple(KIB << i for i in range(11))

    def __post_init__(self) -> None:
        if not self.buckets:
            raise ValueError("a padding policy needs at least one bucket")
        if any(not _MIN_BUCKET <= size <= _MAX_BUCKET for size in self.buckets):
            raise ValueError(f"every bucket is between {_MIN_BUCKET} and {_MAX_BUCKET} bytes")
        if any(a >= b for a, b in zip(self.buckets, self.buckets[1:], strict=False)):
            raise ValueError("buckets must be strictly increasing")

    @classmethod
    def doubling(cls, smallest: int = KIB, largest: int = MIB) -> PaddingPolicy:
        """Buckets smallest, 2·smallest, 4·smallest, … up to `largest` (included if on the way)."""
        if smallest < _MIN_BUCKET or largest < smallest:
            raise ValueError(f"need {_MIN_BUCKET} <= smallest <= largest, got {smallest}, {largest}")
        sizes = []
        size = smallest
        while size <= largest:
            sizes.append(size)
            size *= 2
        return cls(tuple(sizes))

    @property
    def max_bucket(self) -> int:
        return self.buckets[-1]

    def is_bucket(self, size: int) -> bool:
        return size in self.buckets

    def bucket_for(self, size: int) -> int:
        """The smallest bucket that holds `size` bytes."""
        for bucket in self.buckets:
            if bucket >= size:
                return bucket
        raise OversizedEnvelope(f"{size} bytes do not fit the largest bucket of {self.max_bucket} bytes")


DEFAULT_POLICY = PaddingPolicy()


def pad(data: bytes, policy: PaddingPolicy = DEFAULT_POLICY, *, reserve: int = 0) -> bytes:
    """`data` padded to `bucket - reserve` bytes, for the smallest bucket that holds it with its prefix."""
    bucket = policy.bucket_for(LENGTH_PREFIX_SIZE + len(data) + reserve)
    size = bucket - reserve
    return len(data).to_bytes(LENGTH_PREFIX_SIZE, "big") + data + bytes(size - LENGTH_PREFIX_SIZE - len(data))


def unpad(padded: bytes, policy: PaddingPolicy = DEFAULT_POLICY, *, reserve: int = 0) -> bytes:
    """The content of a padding made by `pad` with the same policy and reserve; anything else is refused.

    A sender may choose a larger bucket than needed (to hide more), so any bucket is accepted, but
    the length, the prefix and every padding byte must be exactly as `pad` writes them.
    """
    if not policy.is_bucket(len(padded) + reserve):
        raise BadPadding(f"{len(padded)} + {reserve} bytes is not a size bucket")
    length = int.from_bytes(padded[:LENGTH_PREFIX_SIZE], "big")
    end = LENGTH_PREFIX_SIZE + length
    if end > len(padded):
        raise BadPadding(f"the length prefix says {length} bytes, only {len(padded) - LENGTH_PREFIX_SIZE} follow")
    if padded[end:].count(0) != len(padded) - end:
        raise BadPadding("padding bytes must be zero")
    return padded[LENGTH_PREFIX_SIZE:end]
