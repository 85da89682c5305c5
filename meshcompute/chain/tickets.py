"""EIP-712 messages signed off chain: the market's assignment tickets and ERC-2612 permits.

The domain binds each signature to one chain id and one contract address, so a ticket or
permit cannot be replayed on another chain or against another deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount

JOB_MARKET_DOMAIN_NAME = "MeshJobMarket"
CREDIT_DOMAIN_NAME = "Mesh Credit"
DOMAIN_VERSION = "1"

_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


@dataclass(frozen=True)
class AssignTicket:
    """The market's permission for ``worker`` to take ``job_ids`` until ``lease_expiry``."""

    worker: str
    job_ids: tuple[int, ...]
    audit_bps: int
    lease_expiry: int

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.worker, list(self.job_ids), self.audit_bps, self.lease_expiry)

    def typed_data(self, chain_id: int, job_market: str) -> dict[str, Any]:
        return {
            "types": {
                "EIP712Domain": _DOMAIN_FIELDS,
                "AssignTicket": [
                    {"name": "worker", "type": "address"},
                    {"name": "jobIds", "type": "uint256[]"},
                    {"name": "auditBps", "type": "uint16"},
                    {"name": "leaseExpiry", "type": "uint40"},
                ],
            },
            "primaryType": "AssignTicket",
            "domain": {
                "name": JOB_MARKET_DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": chain_id,
                "verifyingContract": job_market,
            },
            "message": {
                "worker": self.worker,
                "jobIds": list(self.job_ids),
                "auditBps": self.audit_bps,
                "leaseExpiry": self.lease_expiry,
            },
        }


def sign_ticket(
    ticket: AssignTicket, signer: LocalAccount, *, chain_id: int, job_market: str
) -> bytes:
    """The assigner's 65-byte signature over ``ticket`` for one chain and contract."""
    message = encode_typed_data(full_message=ticket.typed_data(chain_id, job_market))
    return bytes(signer.sign_message(message).signature)


def recover_ticket_signer(
    ticket: AssignTicket, signature: bytes, *, chain_id: int, job_market: str
) -> str:
    message = encode_typed_data(full_message=ticket.typed_data(chain_id, job_market))
    return str(Account.recover_message(message, signature=signature))


@dataclass(frozen=True)
class PermitSignature:
    value: int
    deadline: int
    v: int
    r: bytes
    s: bytes


def sign_permit(
    owner: LocalAccount,
    *,
    spender: str,
    value: int,
    nonce: int,
    deadline: int,
    chain_id: int,
    token: str,
) -> PermitSignature:
    """An ERC-2612 permit letting ``spender`` move ``value`` of ``owner``'s credits."""
    typed = {
        "types": {
            "EIP712Domain": _DOMAIN_FIELDS,
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {
            "name": CREDIT_DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": token,
        },
        "message": {
            "owner": owner.address,
            "spender": spender,
            "value": value,
            "nonce": nonce,
            "deadline": deadline,
        },
    }
    signed = owner.sign_message(encode_typed_data(full_message=typed))
    return PermitSignature(
        value=value,
        deadline=deadline,
        v=signed.v,
        r=signed.r.to_bytes(32, "big"),
        s=signed.s.to_bytes(32, "big"),
    )
