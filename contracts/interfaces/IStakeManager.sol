// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice Events, errors and the job-market-facing functions of the StakeManager.
interface IStakeManager {
    /// @notice Amount must be greater than zero.
    error ZeroAmount();
    /// @notice `staker` has `available` free stake but `required` was needed.
    error InsufficientFreeStake(address staker, uint256 available, uint256 required);
    /// @notice `staker` has `available` locked stake but `required` was to be released or slashed.
    error InsufficientLockedStake(address staker, uint256 available, uint256 required);
    /// @notice Nothing is unbonding for `staker`.
    error NothingToWithdraw(address staker);
    /// @notice The unbonding stake of `staker` is released only at `releaseAt`.
    error StillUnbonding(address staker, uint256 releaseAt);
    /// @notice Only the job market contract may lock, unlock or slash stake.
    error CallerNotJobMarket(address caller);
    /// @notice The job market address was already set (it can be set once).
    error JobMarketAlreadySet(address jobMarket);
    /// @notice The zero address was given where a contract was required.
    error ZeroAddress();
    /// @notice The amount does not fit the 128-bit stake accounting.
    error AmountTooLarge(uint256 amount);

    event Staked(address indexed staker, uint256 amount);
    event UnstakeRequested(address indexed staker, uint256 amount, uint256 releaseAt);
    event UnbondedWithdrawn(address indexed staker, uint256 amount);
    event StakeSlashed(address indexed staker, uint256 amount, address indexed recipient);
    event JobMarketSet(address indexed jobMarket);

    function token() external view returns (IERC20);
    function lock(address staker, uint256 amount) external;
    function unlock(address staker, uint256 amount) external;
    function slash(address staker, uint256 amount, address recipient) external;
    function unbondingDelay() external view returns (uint256);
    function freeStake(address staker) external view returns (uint256);
}
