// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

/// @title Payout
/// @notice Pure payout math of the job market, mirrored by meshcompute.core.payout in Python.
library Payout {
    uint256 internal constant BPS = 10_000;

    /// @notice Split a reward into the worker's pay and the protocol fee. The fee is rounded up,
    /// so rounding never favours the payee.
    function split(uint256 reward, uint256 feeBps) internal pure returns (uint256 workerPay, uint256 fee) {
        fee = Math.mulDiv(reward, feeBps, BPS, Math.Rounding.Ceil);
        // unchecked: feeBps <= BPS (checked at deployment), so fee <= reward.
        unchecked {
            workerPay = reward - fee;
        }
    }

    /// @notice Split a slashed collateral. The client gets its reward back from the escrow; from
    /// the collateral it gets back only the audit fee it spent on the verdict, so it ends where it
    /// started and never gains from a slash (a client gaining from slashes would profit from
    /// getting honest workers slashed). The remainder goes to the protocol.
    function slashSplit(uint256 collateral, uint256 auditFee)
        internal
        pure
        returns (uint256 compensation, uint256 remainder)
    {
        compensation = collateral < auditFee ? collateral : auditFee;
        // unchecked: compensation <= collateral.
        unchecked {
            remainder = collateral - compensation;
        }
    }
}
