// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IStakeManager} from "./interfaces/IStakeManager.sol";

/// @title StakeManager
/// @notice Holds provider stake. Stake is free, locked as collateral for a running job, or
/// unbonding. Only the job market contract can lock, unlock and slash; a staker can always
/// take back free stake after the unbonding delay, which is longer than the job market's
/// challenge, audit and appeal windows together (checked by the job market at deployment).
/// @dev Solvency: token.balanceOf(this) == sum over stakers of (free + locked + unbonding).
contract StakeManager is AccessControl, ReentrancyGuardTransient, IStakeManager {
    using SafeERC20 for IERC20;

    struct Stake {
        uint128 free;
        uint128 locked;
    }

    struct Unbonding {
        uint128 amount;
        uint64 releaseAt;
    }

    IERC20 private immutable _token;
    uint256 private immutable _unbondingDelay;
    address private _jobMarket;

    mapping(address staker => Stake) private _stakes;
    mapping(address staker => Unbonding) private _unbonding;
    mapping(address staker => uint256) private _totalSlashed;

    /// @param token_ the MeshCredit token
    /// @param admin may set the job market address, once
    /// @param unbondingDelay_ seconds between an unstake request and the withdrawal
    constructor(IERC20 token_, address admin, uint256 unbondingDelay_) {
        if (address(token_) == address(0) || admin == address(0)) revert ZeroAddress();
        _token = token_;
        _unbondingDelay = unbondingDelay_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    modifier onlyJobMarket() {
        if (msg.sender != _jobMarket) revert CallerNotJobMarket(msg.sender);
        _;
    }

    /// @notice Set the job market contract. Only the admin, only once.
    function setJobMarket(address jobMarket_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_jobMarket != address(0)) revert JobMarketAlreadySet(_jobMarket);
        if (jobMarket_ == address(0)) revert ZeroAddress();
        _jobMarket = jobMarket_;
        emit JobMarketSet(jobMarket_);
    }

    // ---------------------------------------------------------------- staker actions

    /// @notice Deposit `amount` credits as free stake. Needs an allowance.
    function stake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Stake storage s = _stakes[msg.sender];
        // Bound the whole position (free + locked + unbonding) by uint128, so the unchecked
        // moves between those buckets in unstake, lock and unlock can never wrap.
        uint256 position = uint256(s.free) + s.locked + _unbonding[msg.sender].amount;
        if (amount > type(uint128).max - position) revert AmountTooLarge(amount);
        s.free += uint128(amount);
        emit Staked(msg.sender, amount);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Move `amount` of free stake into unbonding; it can be withdrawn after the delay.
    /// A new request adds to what is already unbonding and restarts the delay for all of it.
    function unstake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Stake storage s = _stakes[msg.sender];
        if (s.free < amount) revert InsufficientFreeStake(msg.sender, s.free, amount);
        Unbonding storage u = _unbonding[msg.sender];
        // unchecked: amount <= s.free (checked above), and free + locked + unbonding is bounded
        // by uint128 in stake().
        unchecked {
            s.free -= uint128(amount);
            u.amount += uint128(amount);
        }
        uint64 releaseAt = uint64(block.timestamp + _unbondingDelay);
        u.releaseAt = releaseAt;
        emit UnstakeRequested(msg.sender, amount, releaseAt);
    }

    /// @notice Withdraw all unbonded stake once its delay has passed.
    function withdrawUnbonded() external nonReentrant {
        Unbonding memory u = _unbonding[msg.sender];
        if (u.amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < u.releaseAt) revert StillUnbonding(msg.sender, u.releaseAt);
        delete _unbonding[msg.sender];
        emit UnbondedWithdrawn(msg.sender, u.amount);
        _token.safeTransfer(msg.sender, u.amount);
    }

    // ---------------------------------------------------------------- job market actions

    /// @notice Lock `amount` of `staker`'s free stake as job collateral. Only the job market.
    /// @dev No event: the job market's JobAssigned events say which collateral is locked.
    function lock(address staker, uint256 amount) external onlyJobMarket {
        Stake storage s = _stakes[staker];
        if (s.free < amount) revert InsufficientFreeStake(staker, s.free, amount);
        // unchecked: amount <= s.free, so free cannot underflow and locked + free is bounded by
        // the uint128 stake total.
        unchecked {
            s.free -= uint128(amount);
            s.locked += uint128(amount);
        }
    }

    /// @notice Release `amount` of `staker`'s locked collateral back to free stake. Only the job market.
    function unlock(address staker, uint256 amount) external onlyJobMarket {
        Stake storage s = _stakes[staker];
        if (s.locked < amount) revert InsufficientLockedStake(staker, s.locked, amount);
        // unchecked: amount <= s.locked; free + locked stays equal to what it was.
        unchecked {
            s.locked -= uint128(amount);
            s.free += uint128(amount);
        }
    }

    /// @notice Take `amount` of `staker`'s locked collateral and send it to `recipient`.
    /// Only the job market, which credits the harmed client.
    function slash(address staker, uint256 amount, address recipient) external onlyJobMarket nonReentrant {
        Stake storage s = _stakes[staker];
        if (s.locked < amount) revert InsufficientLockedStake(staker, s.locked, amount);
        // unchecked: amount <= s.locked.
        unchecked {
            s.locked -= uint128(amount);
        }
        _totalSlashed[staker] += amount;
        emit StakeSlashed(staker, amount, recipient);
        _token.safeTransfer(recipient, amount);
    }

    // ---------------------------------------------------------------- views

    /// @notice The credit token staked here.
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @notice The job market allowed to lock, unlock and slash.
    function jobMarket() external view returns (address) {
        return _jobMarket;
    }

    /// @notice Seconds between an unstake request and its withdrawal.
    function unbondingDelay() external view returns (uint256) {
        return _unbondingDelay;
    }

    /// @notice Stake of `staker` that can back a new job or be unstaked.
    function freeStake(address staker) external view returns (uint256) {
        return _stakes[staker].free;
    }

    /// @notice Stake of `staker` locked as collateral of running jobs.
    function lockedStake(address staker) external view returns (uint256) {
        return _stakes[staker].locked;
    }

    /// @notice Full stake position of `staker`.
    function stakeOf(address staker)
        external
        view
        returns (uint256 free, uint256 locked, uint256 unbonding, uint256 releaseAt, uint256 slashed)
    {
        Stake memory s = _stakes[staker];
        Unbonding memory u = _unbonding[staker];
        return (s.free, s.locked, u.amount, u.releaseAt, _totalSlashed[staker]);
    }
}
