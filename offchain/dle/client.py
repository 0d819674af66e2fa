"""A DLE client: submits transactions to a chain's creator and follows the chain's roles.

A wallet never trusts the node it talks to: it checks the roles record against the archive group's
certificate and every outcome against its members' and archive group's signatures before reporting a
transfer as final. When the creator does not answer, the client reports the timeout to the chain's
host archive node (then to the other archive nodes in turn, if the host does not act), which (after
every archive node probed the creator itself) promotes the first witness, and the same signed
transactions are submitted again: nonces make a transaction count once however often it is sent, so
nothing final is lost and nothing is applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle.digests import Domains
from offchain.dle.member import check_final
from offchain.dle.messages import ChainDump, ExitRequest, ExitSignature, Outcome, Submit, TimeoutReport
from offchain.dle.note import ExitCertificate
from offchain.dle.roles import ArchiveGroup, RolesError, RolesRecord, join_certificate
from offchain.dle.transport import PeerTimeout, PeerUnavailable, RemoteError, Transport

__all__ = ["DleClient", "DleError"]


class DleError(RuntimeError):
    """A submission that did not become final; `code` is the refusing node's reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DleClient:
    """Submits to note chains of one archive group epoch (or several, through `group_of`)."""

    def __init__(
        self,
        transport: Transport,
        group_of: Callable[[int], ArchiveGroup],
        domains: Domains,
        *,
        group: int = 0,
        submit_timeout: float = 10.0,
        archive_timeout: float = 30.0,
        attempts: int = 4,
        chain_group: Callable[[bytes], int] | None = None,
    ) -> None:
        """`group` is the archive group whose host serves every chain, unless `chain_group` is given: the
        group that keeps a chain (DleRegistry's record), for a client of chains of several groups."""
        self._transport = transport
        self._chain_group = chain_group
        self._group_of = group_of
        self._domains = domains
        self._group = group
        self._submit_timeout = submit_timeout
        self._archive_timeout = archive_timeout
        self._attempts = attempts
        self._roles: dict[bytes, RolesRecord] = {}

    def _host(self, chain: bytes) -> bytes:
        group = self._group if self._chain_group is None else self._chain_group(chain)
        return self._group_of(group).host_of(chain)

    async def roles(self, chain: bytes, *, refresh: bool = False) -> RolesRecord:
        """The chain's current roles, certified by its archive group."""
        if refresh or chain not in self._roles:
            record = RolesRecord.decode(await self._archive("roles", chain))
            record.verify(self._group_of(record.roles.group))
            self._roles[chain] = record
        return self._roles[chain]

    async def head(self, chain: bytes) -> tuple[int, State]:
        """The final head's height and state, checked against the archive certificate."""
        dump = ChainDump.decode(await self._archive("head", chain))
        block, certificate, state = dump.blocks[-1]
        group = self._group_of(dump.roles.roles.group)
        group.verify(self._domains.certificate(chain, block.header.height, block.hash), certificate)
        if state.root != block.header.state_root:
            raise DleError("bad-state", "the archive node sent a state that is not the head's")
        return block.header.height, state

    async def exit_certificate(self, chain: bytes, nonce: int, group_id: int) -> tuple[ExitCertificate, bytes, int]:
        """Exit `nonce` of `chain` certified by every archive node of group `group_id`'s current epoch
        (each asked with `exit_certificate`, each answer checked): (certificate, signatures ascending by
        signer, epoch), ready for `CoNETCash.exit`/`OdexVault.withdraw`. The mainchain pays a chain's exits
        in order: this is how the holder of a later exit gets an earlier one to pay it first."""
        group = self._group_of(group_id)
        body = ExitRequest(chain, nonce).encode()
        signatures: dict[bytes, bytes] = {}
        agreed: bytes | None = None
        for node in group.members:
            try:
                answer = ExitSignature.decode(
                    await self._transport.call(node, "exit_certificate", body, timeout=self._archive_timeout)
                )
            except RemoteError as error:
                raise DleError(error.code, f"archive node 0x{node.hex()}: {error.message}") from error
            except (PeerTimeout, PeerUnavailable) as error:
                raise DleError("archive-unavailable", str(error)) from error
            if agreed is None:
                agreed = answer.certificate
            if answer.certificate != agreed:
                raise DleError("certificate-mismatch", f"archive node 0x{node.hex()} records another exit {nonce}")
            signatures[node] = answer.signature
        if agreed is None:
            raise DleError("archive-unavailable", "the archive group has no member")
        certificate = ExitCertificate.decode(agreed)
        if certificate.chain != chain or certificate.nonce != nonce:
            raise DleError("certificate-mismatch", f"the archive group certified another exit than {nonce}")
        joined = join_certificate(signatures)
        try:
            group.verify(self._domains.exit(agreed), joined)
        except RolesError as error:
            raise DleError("not-certified", f"exit {nonce} is not certified by the whole group: {error}") from error
        return certificate, joined, group.epoch

    async def _archive(self, method: str, body: bytes) -> bytes:
        host = self._host(body[:32])
        try:
            return await self._transport.call(host, method, body, timeout=self._archive_timeout)
        except RemoteError as error:
            raise DleError(error.code, error.message) from error
        except (PeerTimeout, PeerUnavailable) as error:
            raise DleError("archive-unavailable", str(error)) from error

    async def _report_timeout(self, chain: bytes, group_id: int, report: bytes) -> None:
        """To the host archive node, then to every other archive node of the group in turn (each probes
        and coordinates itself), so a host that buries the report does not keep a dead creator."""
        group = self._group_of(group_id)
        start = group.members.index(group.host_of(chain))
        failure = DleError("archive-unavailable", "the archive group has no member")
        for node in group.members[start:] + group.members[:start]:
            try:
                await self._transport.call(node, "report_timeout", report, timeout=self._archive_timeout)
                return
            except RemoteError as error:
                failure = DleError(error.code, error.message)
            except (PeerTimeout, PeerUnavailable) as error:
                failure = DleError("archive-unavailable", str(error))
        raise failure

    async def submit(self, chain: bytes, transactions: Sequence[Transaction]) -> Outcome:
        """Submit and wait until final; raises `DleError` with the reason when refused."""
        body = Submit(chain, tuple(transactions)).encode()
        last: Exception | None = None
        for _ in range(self._attempts):
            record = await self.roles(chain)
            creator = record.roles.creator
            try:
                answer = await self._transport.call(creator, "submit", body, timeout=self._submit_timeout)
            except (PeerTimeout, PeerUnavailable) as error:
                last = error
                report = TimeoutReport(chain, record.roles.version, creator).encode()
                try:
                    await self._report_timeout(chain, record.roles.group, report)
                except DleError as refused:
                    if refused.code != "alive":
                        raise
                await self.roles(chain, refresh=True)
                continue
            except RemoteError as error:
                if error.code in ("not-creator", "stale-roles"):
                    last = error
                    await self.roles(chain, refresh=True)
                    continue
                raise DleError(error.code, error.message) from error
            outcome = Outcome.decode(answer)
            await self._check(chain, outcome)
            return outcome
        raise DleError("no-final", f"no final block after {self._attempts} attempts: {last}")

    async def _check(self, chain: bytes, outcome: Outcome) -> None:
        for refresh in (False, True):
            record = await self.roles(chain, refresh=refresh)
            try:
                check_final(
                    outcome.block, outcome.certificate, record.roles, self._group_of(record.roles.group), self._domains
                )
                return
            except RolesError as error:
                if refresh:
                    raise DleError("not-final", f"the outcome does not carry its signatures: {error}") from error
