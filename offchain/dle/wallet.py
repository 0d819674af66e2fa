"""A wallet on a note chain: reads the final head, signs note actions, submits them, and reads exits.

The wallet trusts no node: `DleClient` checks the roles record and every outcome against the archive
group's certificate (offchain/dle/client.py), and the head it reads balances and nonces from carries
that certificate too. The user's signature is the note program's EIP-712 message (NoteSigner); the
DLE transaction around it is sent in the name of the note's CBDC, the chain's creator of record, as
every note transaction is (offchain/dle/note.py).

The terms a wallet signs under are the note id, the mainchain id and the paying contract (the EIP-712
domain: CoNETCash, or the vault on an oDEX receipt chain — `Domains.payer_of`, the contract the chain id
derives from) and the CBDC (the transaction's sender); the CBDC is read from the chain's own state (the program's
`roles()` view), and the domain is checked against the program's `domainSeparator()` before anything
is signed, so a wallet cannot sign for another note by mistake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dle_vm.engine import Engine, default_engine
from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle.client import DleClient, DleError
from offchain.dle.digests import Domains
from offchain.dle.local import address_of_secret
from offchain.dle.messages import Outcome
from offchain.dle.note import ExitCertificate, NoteReader, NoteSigner, NoteTerms, Program, note_program
from offchain.dle.roles import ArchiveGroup, RolesError
from offchain.dle.transport import Transport

__all__ = ["DEFAULT_EXPIRY", "ExitResult", "NoteChain", "WalletError"]

DEFAULT_EXPIRY = 3600
"""Seconds a signed note message stays valid: long enough for a retry through a new creator."""


class WalletError(RuntimeError):
    """A note action that cannot be made, in the user's words."""


@dataclass(frozen=True)
class ExitResult:
    """An exit final on the note chain: the certificate CoNETCash pays on, and the group's signatures."""

    certificate: ExitCertificate
    signatures: bytes
    """Every member of the group's epoch, ascending: `CoNETCash.exit(certificate, epoch, signatures)`."""
    epoch: int
    outcome: Outcome


def _address(value: object) -> bytes:
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


@dataclass
class NoteChain:
    """One note's chain as a wallet uses it; `connect` builds it."""

    note: int
    chain: bytes
    group: int
    domains: Domains
    client: DleClient
    groups: Callable[[int], ArchiveGroup]
    reader: NoteReader
    program: Program
    terms: NoteTerms | None = None
    expiry: int = DEFAULT_EXPIRY
    clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def connect(
        cls,
        transport: Transport,
        groups: Callable[[int], ArchiveGroup],
        domains: Domains,
        note: int,
        chain: bytes,
        group: int,
        *,
        engine: Engine | None = None,
        submit_timeout: float = 20.0,
    ) -> NoteChain:
        """A wallet view of note `note`, whose chain `chain` is kept by archive group `group` (both from
        the mainchain: CoNETCash.chainOf and DleRegistry.chainOf)."""
        client = DleClient(transport, groups, domains, group=group, submit_timeout=submit_timeout)
        program = note_program()
        return cls(
            note, chain, group, domains, client, groups, NoteReader(engine or default_engine(), program), program
        )

    # -- reading --------------------------------------------------------------------------------------

    async def head(self) -> tuple[int, State]:
        """The final head's height and state (checked against the archive certificate)."""
        try:
            return await self.client.head(self.chain)
        except DleError as error:
            if error.code == "unknown-chain":
                raise WalletError(f"note {self.note}: its chain is not open (yet)") from error
            raise

    async def balance(self, account: bytes) -> int:
        _, state = await self.head()
        return self.reader.balance(state, self.chain, account)

    async def balances(self, accounts: list[bytes]) -> dict[bytes, int]:
        _, state = await self.head()
        return {a: self.reader.balance(state, self.chain, a) for a in accounts}

    async def signing_terms(self) -> NoteTerms:
        """The terms user messages are signed under, read from the chain and checked (see the module)."""
        if self.terms is not None:
            return self.terms
        _, state = await self.head()
        cbdc, _witnesses, _pool = self.reader.view(state, self.chain, "roles")
        # A note chain signs under CoNETCash, a receipt chain under the vault: the one its id derives from.
        try:
            cash = self.domains.payer_of(self.chain, self.note)
        except ValueError as error:
            # The same words as a domain mismatch below: callers (the SI verifier) match on them.
            raise WalletError(f"note {self.note}: the chain's program signs under another domain ({error})") from error
        terms = NoteTerms(
            note=self.note,
            mainchain_id=self.domains.mainchain_id,
            cash=cash,
            value=0,
            holder=bytes(20),
            cbdc=_address(cbdc),
            witnesses=(),
            validators_pool=bytes(20),
            transfer_fee_bps=0,
        )
        (separator,) = self.reader.view(state, self.chain, "domainSeparator")
        if bytes(separator) != terms.domain_separator() or terms.chain != self.chain:
            raise WalletError(f"note {self.note}: the chain's program signs under another domain than this wallet")
        self.terms = terms
        return terms

    async def _prepare(self, secret: bytes) -> tuple[NoteSigner, int, int, int]:
        """The signer, the key's next message nonce and next DLE transaction nonce on this chain (read
        apart: the CBDC's `initialize` moved its DLE nonce, not its message nonce), and an expiry."""
        terms = await self.signing_terms()
        _, state = await self.head()
        address = address_of_secret(secret)
        nonce = self.reader.nonce(state, self.chain, address)
        return (
            NoteSigner(terms, self.program),
            nonce,
            NoteReader.tx_nonce(state, address),
            int(self.clock()) + self.expiry,
        )

    async def _submit(self, tx: Transaction) -> Outcome:
        try:
            outcome = await self.client.submit(self.chain, [tx])
        except DleError as error:
            raise WalletError(f"note {self.note}: refused: {error.message}") from error
        if not all(receipt.success for receipt in outcome.receipts):
            raise WalletError(f"note {self.note}: the transaction failed in block {outcome.block.header.height}")
        return outcome

    # -- actions --------------------------------------------------------------------------------------

    async def transfer(self, secret: bytes, to: bytes, amount: int) -> Outcome:
        signer, nonce, tx_nonce, expiry = await self._prepare(secret)
        return await self._submit(
            signer.transfer(secret, address_of_secret(secret), to, amount, nonce, expiry, tx_nonce=tx_nonce)
        )

    async def authorize(self, secret: bytes, payee: bytes, limit: int) -> tuple[int, Outcome]:
        """Authorize `payee` to deduct up to `limit`; returns the authorization id (the nonce it was
        signed with) and the outcome."""
        signer, nonce, tx_nonce, expiry = await self._prepare(secret)
        holder = address_of_secret(secret)
        outcome = await self._submit(signer.authorize(secret, holder, payee, limit, nonce, expiry, tx_nonce=tx_nonce))
        return nonce, outcome

    async def revoke(self, secret: bytes, authorization: int) -> Outcome:
        """Revoke the holder's (`secret`'s) authorization `authorization`: nothing more can be drawn on it."""
        signer, nonce, tx_nonce, expiry = await self._prepare(secret)
        return await self._submit(
            signer.revoke(secret, address_of_secret(secret), authorization, nonce, expiry, tx_nonce=tx_nonce)
        )

    async def deduct(self, secret: bytes, holder: bytes, authorization: int, amount: int) -> Outcome:
        """As the payee (`secret`), deduct `amount` from `holder` under `authorization`."""
        signer, nonce, tx_nonce, expiry = await self._prepare(secret)
        payee = address_of_secret(secret)
        return await self._submit(
            signer.deduct(secret, payee, holder, authorization, amount, nonce, expiry, tx_nonce=tx_nonce)
        )

    async def deduct_to(self, secret: bytes, holder: bytes, authorization: int, to: bytes, amount: int) -> Outcome:
        """As the payee (`secret`), deduct `amount` from `holder` under `authorization`, paid to `to`."""
        signer, nonce, tx_nonce, expiry = await self._prepare(secret)
        payee = address_of_secret(secret)
        return await self._submit(
            signer.deduct_to(secret, payee, holder, authorization, to, amount, nonce, expiry, tx_nonce=tx_nonce)
        )

    async def certified_exit(self, nonce: int) -> tuple[ExitCertificate, bytes, int]:
        """Exit `nonce` of this chain, whoever made it, certified by every archive node of the chain's
        group: (certificate, signatures, epoch). The mainchain pays exits in order, so a holder pays the
        unpaid earlier ones with these first (`offchain/cash_cli.py`, `offchain/odex/cli.py`)."""
        try:
            return await self.client.exit_certificate(self.chain, nonce, self.group)
        except DleError as error:
            raise WalletError(f"note {self.note}: exit {nonce}: {error.message}") from error

    async def exit(self, secret: bytes, amount: int, receiver: bytes) -> ExitResult:
        """Burn `amount` of the holder's balance on the chain; the result is ready for CoNETCash.exit."""
        signer, nonce, tx_nonce, expiry = await self._prepare(secret)
        holder = address_of_secret(secret)
        outcome = await self._submit(signer.exit(secret, holder, receiver, amount, nonce, expiry, tx_nonce=tx_nonce))
        certificates = [c for r in outcome.receipts for c in ExitCertificate.from_logs(r.logs, self.program)]
        if len(certificates) != 1:
            raise WalletError(f"note {self.note}: the exit yielded {len(certificates)} certificates, not 1")
        (certificate,) = certificates
        group = self.groups(self.group)
        digest = self.domains.exit(certificate.encode())
        # The block may hold other exits batched with this one: take the signatures that certify ours.
        for signatures in outcome.exit_certificates:
            try:
                group.verify(digest, signatures)
            except RolesError:
                continue
            return ExitResult(certificate, signatures, group.epoch, outcome)
        raise WalletError(f"note {self.note}: no archive certificate of group {self.group} for the exit")
