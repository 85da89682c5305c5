// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice Events, errors and the job-market-facing functions of the VerifierRegistry.
interface IVerifierRegistry {
    /// @notice A deposit below the minimum (`minimum`) was offered.
    error DepositTooSmall(uint256 amount, uint256 minimum);
    /// @notice `verifier` already holds a seat (one per address).
    error AlreadyMember(address verifier);
    /// @notice `verifier` holds no seat.
    error NotMember(address verifier);
    /// @notice `verifier` has already asked to leave.
    error AlreadyLeaving(address verifier);
    /// @notice The deposit of `verifier` is released only at `releaseAt`.
    error StillBound(address verifier, uint256 releaseAt);
    /// @notice Every seat is taken (`maxSeats`).
    error RegistryFull(uint256 maxSeats);
    /// @notice Only the job market contract may punish.
    error CallerNotJobMarket(address caller);
    /// @notice The job market address was already set (it can be set once).
    error JobMarketAlreadySet(address jobMarket);
    /// @notice The zero address was given where an account or contract was required.
    error ZeroAddress();
    /// @notice `verifier`'s deposit not yet reserved (`free`) is less than `needed`: an overturn
    /// reserves what it would forfeit until its contest ends (`topUp` adds to the deposit).
    error DepositReserved(address verifier, uint256 free, uint256 needed);
    /// @notice `verifier` has `reserved` of its deposit behind overturns whose contests have
    /// not ended; the deposit is released once they have.
    error OverturnsPending(address verifier, uint256 reserved);

    /// @notice `verifier` took a seat of weight `units` with `deposit`, a candidate for the
    /// verdicts of jobs committed from block `fromBlock` on.
    event VerifierJoined(address indexed verifier, uint256 deposit, uint256 units, uint256 fromBlock);
    /// @notice `verifier` left: no candidate for jobs committed from block `untilBlock` on; its
    /// deposit is released at `releaseAt`.
    event VerifierLeaving(address indexed verifier, uint256 untilBlock, uint256 releaseAt);
    /// @notice `verifier` took its deposit back and gave up its seat.
    event VerifierWithdrawn(address indexed verifier, uint256 amount);
    /// @notice `verifier` was assigned job `jobId`'s verdict and stayed silent until its window
    /// closed: `amount` of its deposit was burned.
    event VerifierPunished(address indexed verifier, uint256 indexed jobId, uint256 amount);

    /// @notice `verifier` added `amount` to its deposit (its weight unchanged), now `deposit`.
    event VerifierToppedUp(address indexed verifier, uint256 amount, uint256 deposit);
    /// @notice `amount` of `verifier`'s deposit answers for its overturn of job `jobId` until the
    /// contest ends (`reserved` in all).
    event DepositReservedFor(address indexed verifier, uint256 indexed jobId, uint256 amount, uint256 reserved);
    /// @notice The contest of `verifier`'s overturn of job `jobId` ended: `amount` is no longer
    /// reserved (`reserved` left).
    event DepositReleased(address indexed verifier, uint256 indexed jobId, uint256 amount, uint256 reserved);
    /// @notice The MeshCredit token deposits are made in.
    function token() external view returns (IERC20);

    /// @notice (minimum deposit per unit of weight, exit delay)
    function terms() external view returns (uint256 minDeposit, uint256 exitDelay);

    /// @notice The verifier the draw assigns to a verdict: among the seats joined in or before
    /// `committedBlock` and not left by then whose weight covers `cover` (units * minimum
    /// deposit >= the job's reward plus collateral), other than the four `excluded`, the
    /// one with the lowest score keccak256(keccak256(seed, jobId, stage), verifier) / units; the
    /// second lowest when `escalated`, or the lowest when there is no second. Zero when none.
    /// `stage` names the verdict: 0 the audit, 1 the appeal or dispute, 2 the contest of an
    /// overturning appeal verdict, 3 the confirmation of a void.
    function assignee(
        bytes32 seed,
        uint256 jobId,
        uint8 stage,
        uint256 committedBlock,
        uint256 cover,
        address[4] calldata excluded,
        bool escalated
    ) external view returns (address);

    /// @notice A verdict the draw assigned (`assignee` with the same arguments) never came:
    /// burn up to `penalty` of the deposit of the verifier it was assigned to and of the one it
    /// escalated to (the candidates for a cover of `penalty`). Only the job market calls it, when
    /// the verdict's window has closed.
    /// Ignored when it comes later than the deposits are known to be bound for the job.
    function punishSilence(
        bytes32 seed,
        uint256 jobId,
        uint8 stage,
        uint256 committedBlock,
        uint256 committedAt,
        address[4] calldata excluded,
        uint256 penalty
    ) external;

    /// @notice `verifier` overturned a verdict on appeal: reserve `amount` of its deposit (what
    /// it forfeits if the contest finds it wrong) until the contest ends, so that a seat's
    /// deposit answers for each of its overturns at once, not for one of them. Reverts
    /// `DepositReserved` when its deposit not yet reserved is short. Only the job market.
    function reserve(address verifier, uint256 jobId, uint256 amount) external;
    /// @notice The contest of `verifier`'s overturn of job `jobId` ended without a forfeit (the
    /// overturn was confirmed, or nobody decided): release `amount`. Only the job market.
    function release(address verifier, uint256 jobId, uint256 amount) external;
    /// @notice `verifier` overturned a verdict on appeal and the contest upheld the verdict it
    /// overturned: take up to `amount` of its deposit, send up to `pay` of it to the job market
    /// (the contest verifier's fee) and burn the rest, releasing the `amount` reserved for the
    /// overturn. Only the job market calls it. Returns what was sent.
    function forfeit(address verifier, uint256 jobId, uint256 amount, uint256 pay) external returns (uint256 paid);
}
