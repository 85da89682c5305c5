// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Events and errors of the MeshCredit token.
interface IMeshCredit {
    /// @notice The faucet is not enabled on this deployment (not a dev chain).
    error FaucetDisabled();
    /// @notice `account` used the faucet too recently; it may again at `availableAt`.
    error FaucetCooldown(address account, uint256 availableAt);

    /// @notice `account` received `amount` credits from the faucet.
    event FaucetDripped(address indexed account, uint256 amount);
}
