"""Revert data decoding: Solidity's built-in errors, the custom-error hook, unknown data."""

from __future__ import annotations

from eth_abi import encode

from meshcompute.chain.reverts import contract_revert, decode_builtin_error, revert_data_bytes
from meshcompute.errors import ContractRevert


def test_decode_error_string():
    data = bytes.fromhex("08c379a0") + encode(["string"], ["not yours"])
    assert decode_builtin_error(data) == ("Error", {"reason": "not yours"})


def test_decode_panic():
    data = bytes.fromhex("4e487b71") + encode(["uint256"], [0x11])
    name, args = decode_builtin_error(data)
    assert (name, args["code"]) == ("Panic", 0x11)
    assert "overflow" in args["meaning"]


def test_malformed_builtin_is_not_decoded():
    assert decode_builtin_error(bytes.fromhex("08c379a0") + b"\x01") is None


def test_custom_decoder_used_for_unknown_selector():
    error = contract_revert(
        bytes.fromhex("deadbeef"),
        decoder=lambda data: ("UnknownJob", {"jobId": 9}),
        contract="JobMarket",
    )
    assert (error.error_name, error.args_dict, error.data) == (
        "UnknownJob",
        {"jobId": 9},
        "0xdeadbeef",
    )


def test_undecoded_data_keeps_selector():
    error = contract_revert(bytes.fromhex("deadbeef01"), decoder=lambda data: None)
    assert error.error_name == "UnknownError"
    assert error.args_dict == {"selector": "0xdeadbeef"}


def test_no_data_is_plain_revert():
    error = contract_revert(None, tx_hash="0x12")
    assert isinstance(error, ContractRevert)
    assert str(error) == "contract reverted without reason in transaction 0x12"


def test_revert_data_shapes():
    assert revert_data_bytes("0xdeadbeef") == bytes.fromhex("deadbeef")
    assert revert_data_bytes({"data": "0x01"}) == b"\x01"
    assert revert_data_bytes(b"\x02") == b"\x02"
    assert revert_data_bytes("execution reverted") is None
    assert revert_data_bytes(None) is None
