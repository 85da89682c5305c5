// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {JobState} from "../types/Job.sol";

/// @notice Events and custom errors of the JobMarket.
interface IJobMarket {
    // ------------------------------------------------------------------ errors
    /// @notice The zero address was given where an account or contract was required.
    error ZeroAddress();
    /// @notice A job must pay a reward greater than zero.
    error ZeroReward();
    /// @notice The job deadline `deadline` is not in the future.
    error DeadlineInPast(uint256 deadline);
    /// @notice A basis-point value above 10,000.
    error InvalidBps(uint256 bps);
    /// @notice An empty list was given where at least one job was required.
    error EmptyBatch();
    /// @notice Arrays passed together have different lengths.
    error LengthMismatch();
    /// @notice No job with this id exists.
    error UnknownJob(uint256 jobId);
    /// @notice The job has ended (Finalized, Slashed or Refunded): its record is no longer
    /// stored and nothing more can be done with it.
    error JobClosed(uint256 jobId);
    /// @notice The job record passed does not match the stored digest (stale or forged).
    error JobRecordMismatch(uint256 jobId);
    /// @notice The job is in `state`, which does not allow this action.
    error InvalidJobState(uint256 jobId, JobState state);
    /// @notice The caller is not the client of the job.
    error NotJobClient(uint256 jobId, address caller);
    /// @notice The caller is not the worker assigned to the job.
    error NotAssignedWorker(uint256 jobId, address caller);
    /// @notice The ticket names `worker` but was submitted by `caller`.
    error TicketWorkerMismatch(address worker, address caller);
    /// @notice The ticket's lease expired at `leaseExpiry`.
    error TicketExpired(uint256 leaseExpiry);
    /// @notice The ticket was not signed by an assigner.
    error InvalidTicketSigner(address signer);
    /// @notice The job is held by another worker whose lease runs until `leaseExpiry`.
    error JobLeased(uint256 jobId, address worker, uint256 leaseExpiry);
    /// @notice The job's deadline `deadline` has passed.
    error JobDeadlinePassed(uint256 jobId, uint256 deadline);
    /// @notice The job's deadline `deadline` has not passed yet.
    error DeadlineNotReached(uint256 jobId, uint256 deadline);
    /// @notice A committed result hash must not be zero.
    error EmptyResult(uint256 jobId);
    /// @notice The audit draw for the job needs block `blockNumber` to be mined first.
    error AuditDrawPending(uint256 jobId, uint256 blockNumber);
    /// @notice The job was not drawn for audit.
    error NotDrawnForAudit(uint256 jobId);
    /// @notice The window of this action closed at `closedAt`.
    error WindowClosed(uint256 jobId, uint256 closedAt);
    /// @notice The job cannot be settled before `openAt`.
    error NotYetSettleable(uint256 jobId, uint256 openAt);
    /// @notice The verifier may not audit its own job, and an appeal needs a second verifier.
    error VerifierConflict(uint256 jobId, address verifier);
    /// @notice The draw assigned this verdict to `assigned` (see `assignedVerifier`), not to the caller.
    error NotAssignedVerifier(uint256 jobId, address caller, address assigned);
    /// @notice A verdict must name its evidence (a non-zero hash of the outputs compared).
    error EmptyEvidence(uint256 jobId);
    /// @notice `account` has nothing to withdraw.
    error NothingToWithdraw(address account);
    /// @notice The unbonding delay `unbondingDelay` must exceed the job windows `windows`.
    error UnbondingTooShort(uint256 unbondingDelay, uint256 windows);
    /// @notice The stake manager is bound to another token.
    error TokenMismatch();
    /// @notice Job `jobId` is reserved for `worker`: only it may take the job, and only by
    /// committing its result in the same transaction (`assignAndCommit`).
    error JobReservedFor(uint256 jobId, address worker);
    /// @notice The market is paused: no new work is taken.
    error EnforcedPause();
    /// @notice pause() while paused, or unpause() while not paused.
    error ExpectedPause();

    // ------------------------------------------------------------------ events
    event JobPosted(
        uint256 indexed jobId,
        address indexed client,
        bytes32 specHash,
        uint96 reward,
        uint96 auditFee,
        uint96 collateral,
        uint40 deadline,
        uint16 auditBps
    );
    /// @notice Job `jobId`, just posted, is reserved for `worker` (see `postJobsFor`).
    event JobReserved(uint256 indexed jobId, address indexed worker);
    event JobAssigned(uint256 indexed jobId, address indexed worker, uint40 leaseExpiry, uint16 auditBps);
    event LeaseExpired(uint256 indexed jobId, address indexed worker);
    /// @notice A result was committed. It also carries the lease (`leaseExpiry`, `auditBps`),
    /// because `assignAndCommit` assigns and commits in one step and emits only this event.
    event JobCommitted(
        uint256 indexed jobId,
        address indexed worker,
        bytes32 resultHash,
        uint40 committedAt,
        uint40 committedBlock,
        uint40 leaseExpiry,
        uint16 auditBps
    );
    event AuditDrawn(uint256 indexed jobId, bool audited);
    event AuditResolved(
        uint256 indexed jobId, address indexed verifier, bool passed, bytes32 evidenceHash, uint40 resolvedAt
    );
    /// @notice A drawn job could not be judged (not reproducible within its tolerance): the
    /// client gets its reward back (JobRefunded), the verifier the audit fee, nobody is slashed.
    event AuditVoided(uint256 indexed jobId, address indexed verifier, bytes32 evidenceHash);
    /// @notice A verdict was overturned on appeal: `verifier` lost its bond `amount` to the party
    /// it wronged (`beneficiary`: the worker of a wrongly failed job, the client of a wrongly
    /// passed one).
    event VerifierSlashed(uint256 indexed jobId, address indexed verifier, uint256 amount, address beneficiary);
    /// @notice `appellant` appealed the verdict: the worker a failure, or the client a pass (a
    /// dispute, with a bond of the audit fee).
    event AuditAppealed(uint256 indexed jobId, address indexed appellant);
    event AppealResolved(uint256 indexed jobId, address indexed verifier, bool workerWins, bytes32 evidenceHash);
    /// @notice `verifier`'s appeal verdict overturns the first verdict: a third verifier decides
    /// (the contest window closes an audit window after `contestedAt`).
    event AppealContested(
        uint256 indexed jobId, address indexed verifier, bool workerWins, bytes32 evidenceHash, uint40 contestedAt
    );
    /// @notice `verifier`'s appeal verdict upholds the first verdict (`workerWins` false: a
    /// failure, true: a pass): the party it goes against may escalate it within an appeal window
    /// after `upheldAt`; otherwise it stands.
    event AppealUpheld(
        uint256 indexed jobId, address indexed verifier, bool workerWins, bytes32 evidenceHash, uint40 upheldAt
    );
    /// @notice `appellant` (the worker of an upheld failure, the client of an upheld pass)
    /// escalated the upheld verdict, with a bond of what a void would give it (the worker locks
    /// its collateral and the reward from its stake; the client escrows the reward and two
    /// audit fees): a third verifier judges within an audit window after `escalatedAt`.
    event AppealEscalated(uint256 indexed jobId, address indexed appellant, uint256 bond, uint40 escalatedAt);
    /// @notice `verifier` proposed that the job cannot be judged; a second verifier confirms the
    /// void or gives a verdict (within an audit window after `proposedAt`).
    event VoidProposed(uint256 indexed jobId, address indexed verifier, bytes32 evidenceHash, uint40 proposedAt);
    /// @notice The earnings ledger: one event per paid job.
    event JobPaid(uint256 indexed jobId, address indexed worker, uint256 amount, uint256 fee, bool audited);
    event AuditFeePaid(uint256 indexed jobId, address indexed verifier, uint256 amount);
    event JobSlashed(uint256 indexed jobId, address indexed worker, uint256 slashed, uint256 clientCompensation);
    event JobRefunded(uint256 indexed jobId, address indexed client, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);
    event FeeRecipientSet(address indexed feeRecipient);
    event Paused(address account);
    event Unpaused(address account);
}
