"""The error tree: every error is a MeshError and also the fitting builtin."""

from __future__ import annotations

import pytest

from meshcompute.errors import (
    ChainError,
    ChainUnavailable,
    ConfigError,
    ContractRevert,
    DeploymentNotFound,
    MeshError,
    TransactionRejected,
    TransactionTimeout,
)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigError("MESH_X: bad"), ValueError),
        (ChainError("x"), RuntimeError),
        (ChainUnavailable("down"), ConnectionError),
        (TransactionTimeout("0xab", 1), TimeoutError),
        (TransactionRejected("nonce too low"), RuntimeError),
        (ContractRevert("Error", {"reason": "no"}), RuntimeError),
        (DeploymentNotFound("JobMarket on 1"), LookupError),
    ],
)
def test_errors_are_mesh_errors_and_builtins(error, builtin):
    assert isinstance(error, MeshError)
    assert isinstance(error, builtin)


def test_contract_revert_message_reads_like_a_call():
    error = ContractRevert(
        "NotAssignedWorker",
        {"jobId": 3, "caller": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"},
        contract="JobMarket",
    )

    assert str(error) == (
        "JobMarket reverted with "
        "NotAssignedWorker(jobId=3, caller=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266)"
    )


def test_contract_revert_without_data():
    assert str(ContractRevert("Revert")) == "contract reverted without reason"


def test_transaction_errors_keep_details():
    assert TransactionTimeout("0xab", 2).tx_hash == "0xab"
    assert TransactionRejected("intrinsic gas too low").node_message == "intrinsic gas too low"
