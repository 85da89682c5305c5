// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {IStakeManager} from "./interfaces/IStakeManager.sol";
import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";
import {Job, JobParams, JobState, AssignTicket} from "./types/Job.sol";
import {Payout} from "./libraries/Payout.sol";
import {JobMarketBase} from "./JobMarketBase.sol";
import {JobMarketSettlement} from "./JobMarketSettlement.sol";

/// @title JobMarket
/// @notice Escrow and lifecycle of compute jobs: clients escrow a reward and an audit fee, the
/// market assigns a staked worker with a signed ticket, the worker commits its result hash, a
/// random draw taken after the commit decides whether a verifier re-runs the job, and anyone can
/// settle a job once its windows have passed. Payments are pulled with `withdraw`.
/// The verifier and settlement calls (appeal, resolveAudit, voidAudit, resolveAppeal,
/// finalize, finalizeBatch, auditStatus, assignedVerifier) are served by `JobMarketSettlement`,
/// which this contract deploys in its constructor and runs by DELEGATECALL on its own storage
/// (see `fallback`); the JobMarket artifact's ABI lists them with the rest.
/// @dev Only keccak256(abi.encode(job)) is stored per open job; callers pass the record (see
/// Job). A job that ends (Finalized, Slashed, Refunded) has its slot cleared: the storage
/// refund pays for part of the settlement, and any later call about it reverts JobClosed.
/// `assignAndCommit` emits one JobCommitted per job (carrying the lease) and no JobAssigned.
/// Solvency: token.balanceOf(this) == sum of open escrows (reward + auditFee of every open job:
/// Posted, Assigned, Committed, Audited, VoidProposed, AuditFailed, Appealed, AppealContested,
/// AuditPassed; plus the dispute bond, another auditFee, while Disputed or DisputeContested) +
/// sum of withdrawable balances. Pause stops new work (post, assign, commit, appeal); it never
/// freezes settlement, verdicts, reclaim or withdraw.
contract JobMarket is JobMarketBase, EIP712 {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    bytes32 public constant ASSIGNER_ROLE = keccak256("ASSIGNER_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    bytes32 private constant _TICKET_TYPEHASH =
        keccak256("AssignTicket(address worker,uint256[] jobIds,uint16 auditBps,uint40 leaseExpiry)");

    /// @dev The settlement half (deployed by the constructor, run by DELEGATECALL).
    address private immutable _settlement;

    /// @param registry_ the open verifier membership the draw assigns verdicts from
    constructor(
        IERC20 token_,
        IStakeManager stakes_,
        IVerifierRegistry registry_,
        address admin,
        address feeRecipient_,
        Config memory cfg
    )
        JobMarketBase(token_, stakes_, registry_, cfg)
        EIP712("MeshJobMarket", "1")
    {
        if (admin == address(0) || feeRecipient_ == address(0)) revert ZeroAddress();
        _settlement = address(new JobMarketSettlement(token_, stakes_, registry_, cfg));
        _globals = Globals({nextJobId: 1, paused: false, feeRecipient: feeRecipient_});
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        emit FeeRecipientSet(feeRecipient_);
    }

    /// @notice Every call this contract does not serve itself goes to the settlement half,
    /// which runs on this contract's storage and balance (its own reverts are passed on).
    fallback() external {
        address settlement = _settlement;
        assembly ("memory-safe") {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), settlement, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    // ================================================================== clients

    /// @notice Post one job, escrowing `reward + auditFee` from the caller (needs an allowance).
    function postJob(JobParams calldata params) external whenNotPaused nonReentrant returns (uint256 jobId) {
        jobId = _globals.nextJobId;
        _globals.nextJobId = uint64(jobId + 1);
        uint256 escrow = _recordPost(jobId, params, address(0));
        _token.safeTransferFrom(msg.sender, address(this), escrow);
    }

    /// @notice Post a batch of jobs (the shards of one submission) with one token transfer.
    /// @return firstJobId the id of the first job; the others follow consecutively
    function postJobs(JobParams[] calldata params) external whenNotPaused nonReentrant returns (uint256 firstJobId) {
        return _postJobs(params, address(0));
    }

    /// @notice `postJobs` for jobs only `worker` may take, and only by committing a result in the
    /// same transaction (`assignAndCommit`): how a client pays a worker for work it already
    /// did, such as the finished checkpoints of a training job it handed back while its owner
    /// used the machine (the worker uploaded them; anyone could commit their hash, so the job
    /// is its alone). The job is otherwise an ordinary job: drawn for audit, verified, paid.
    /// The client may cancel it (`reclaim`) while it is posted.
    function postJobsFor(JobParams[] calldata params, address worker)
        external
        whenNotPaused
        nonReentrant
        returns (uint256 firstJobId)
    {
        if (worker == address(0)) revert ZeroAddress();
        return _postJobs(params, worker);
    }

    /// @notice `postJobs` with an EIP-2612 permit, so a client with no prior approval needs one
    /// transaction. A permit that fails (for example because someone front-ran it) is ignored
    /// and the allowance already in place is used.
    function postJobsWithPermit(
        JobParams[] calldata params,
        uint256 permitValue,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external whenNotPaused nonReentrant returns (uint256 firstJobId) {
        try IERC20Permit(address(_token)).permit(msg.sender, address(this), permitValue, permitDeadline, v, r, s) {}
            catch {}
        return _postJobs(params, address(0));
    }

    /// @notice Take back the escrow of a job that has no committed result: at any time while
    /// no worker holds it on chain (Posted: the client cancels it), or after its deadline.
    /// Works while paused and needs nobody's help. The job ends (Refunded).
    function reclaim(uint256 jobId, Job calldata job) external nonReentrant {
        _checkRecord(jobId, job);
        if (msg.sender != job.client) revert NotJobClient(jobId, msg.sender);
        if (job.state != JobState.Posted && job.state != JobState.Assigned) revert InvalidJobState(jobId, job.state);
        if (job.state == JobState.Assigned && block.timestamp <= job.deadline) revert DeadlineNotReached(jobId, job.deadline);
        _close(jobId);
        uint256 amount = uint256(job.reward) + job.auditFee;
        emit JobRefunded(jobId, job.client, amount);
        if (job.state == JobState.Assigned) {
            _records[job.worker].missed += 1;
            emit LeaseExpired(jobId, job.worker);
            _stakes.unlock(job.worker, job.collateral);
        }
        _token.safeTransfer(job.client, amount);
    }

    /// @notice Take the jobs of a market-signed ticket: the caller must be the ticket's worker
    /// and must have free stake for their collateral, which stays locked until the jobs end.
    /// A job whose previous lease expired is taken over; a job the caller already holds has its
    /// lease extended.
    function assign(Job[] calldata jobs, AssignTicket calldata ticket, bytes calldata signature)
        external
        whenNotPaused
        nonReentrant
    {
        _assign(jobs, ticket, signature, new bytes32[](0));
    }

    /// @notice Commit result hashes of jobs the caller holds, before their deadlines.
    function commitResults(uint256[] calldata jobIds, Job[] calldata jobs, bytes32[] calldata resultHashes)
        external
        whenNotPaused
        nonReentrant
    {
        uint256 n = jobIds.length;
        if (n == 0) revert EmptyBatch();
        if (jobs.length != n || resultHashes.length != n) revert LengthMismatch();
        for (uint256 i = 0; i < n; ++i) {
            _checkRecord(jobIds[i], jobs[i]);
            _commit(jobIds[i], jobs[i], resultHashes[i]);
        }
    }

    /// @notice `assign` and `commitResults` in one transaction, for a worker that computed the
    /// results while holding the ticket off chain. Emits only JobCommitted per job (it carries
    /// the lease expiry and audit rate that JobAssigned would have said).
    function assignAndCommit(
        Job[] calldata jobs,
        AssignTicket calldata ticket,
        bytes calldata signature,
        bytes32[] calldata resultHashes
    ) external whenNotPaused nonReentrant {
        if (resultHashes.length != jobs.length) revert LengthMismatch();
        _assign(jobs, ticket, signature, resultHashes);
    }

    /// @notice Withdraw everything credited to the caller: earnings, audit fees, refunds.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Account storage a = _accounts[msg.sender];
        amount = a.withdrawable;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        a.withdrawable = 0;
        _records[msg.sender].withdrawn += amount.toUint128();
        emit Withdrawn(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    /// @notice Stop new work from entering (post, assign, commit, appeal).
    function pause() external onlyRole(PAUSER_ROLE) {
        if (_globals.paused) revert ExpectedPause();
        _globals.paused = true;
        emit Paused(msg.sender);
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        if (!_globals.paused) revert ExpectedPause();
        _globals.paused = false;
        emit Unpaused(msg.sender);
    }

    /// @notice Whether new work is refused.
    function paused() external view returns (bool) {
        return _globals.paused;
    }

    /// @notice Where future protocol fees and unclaimed slash remainders are credited.
    function setFeeRecipient(address feeRecipient_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (feeRecipient_ == address(0)) revert ZeroAddress();
        _globals.feeRecipient = feeRecipient_;
        emit FeeRecipientSet(feeRecipient_);
    }

    function token() external view returns (IERC20) {
        return _token;
    }

    function stakeManager() external view returns (IStakeManager) {
        return _stakes;
    }

    function verifierRegistry() external view returns (IVerifierRegistry) {
        return _registry;
    }

    /// @notice The settlement half this contract delegates to (deployed by its constructor).
    function settlement() external view returns (address) {
        return _settlement;
    }

    function feeRecipient() external view returns (address) {
        return _globals.feeRecipient;
    }

    function config() external view returns (Config memory) {
        return Config(_feeBps, _minAuditBps, _challengeWindow, _auditWindow, _appealWindow, _auditDeterrence);
    }

    /// @notice The id the next posted job will get.
    function nextJobId() external view returns (uint256) {
        return _globals.nextJobId;
    }

    /// @notice keccak256(abi.encode(job)) of the current record of `jobId`; zero if no such
    /// job was posted or if the job has ended (Finalized, Slashed or Refunded: its slot is
    /// cleared, and the record lives on only in its events).
    function jobDigest(uint256 jobId) external view returns (bytes32) {
        return _jobDigest[jobId];
    }

    /// @notice The EIP-712 digest an assigner signs for `ticket`.
    function hashTicket(AssignTicket calldata ticket) external view returns (bytes32) {
        return _ticketDigest(ticket);
    }

    /// @notice The deterrence audit rate, in basis points, of a job of `reward` and
    /// `collateral` for a worker with `freeStake` free (before the job's collateral is locked),
    /// `completed` paid jobs, `auditsPassed` passed audits and `slashed` slashes, never below
    /// `minBps`. Exact integer arithmetic, equal to meshcompute.core.audit_rate.audit_bps:
    ///     slashed > 0: 10000
    ///     evidence = 10 * auditsPassed + completed
    ///     trust * cover = evidence * min(freeStake, 10 * reward) / ((evidence + 250) * 10 * reward)
    ///     margin = 4 - (4 - 3/2) * trust * cover
    ///     rate = ceil(10000 * margin * reward / (reward + collateral)), within [minBps, 10000]
    /// Junk then pays less than honest work even for a worker whose compute costs its whole
    /// pay: rate * (collateral + pay) > cost with a margin of at least 3/2.
    function auditRate(
        uint96 reward,
        uint96 collateral,
        uint256 freeStake,
        uint32 completed,
        uint32 auditsPassed,
        uint32 slashed,
        uint16 minBps
    ) external pure returns (uint256) {
        if (minBps > Payout.BPS) revert InvalidBps(minBps);
        return _auditRate(reward, collateral, freeStake, completed, auditsPassed, slashed, minBps);
    }

    function accountOf(address account)
        external
        view
        returns (uint256 withdrawable, uint256 earned, uint256 withdrawn, uint256 completed)
    {
        Account memory a = _accounts[account];
        return (a.withdrawable, a.earned, _records[account].withdrawn, a.completed);
    }

    /// @notice Reliability record of a worker.
    function workerRecord(address worker)
        external
        view
        returns (uint256 completed, uint256 missed, uint256 slashed, uint256 auditsPassed)
    {
        Record memory r = _records[worker];
        return (_accounts[worker].completed, r.missed, r.slashed, r.auditsPassed);
    }

    // ================================================================== internals

    function _postJobs(JobParams[] calldata params, address worker) private returns (uint256 firstJobId) {
        uint256 n = params.length;
        if (n == 0) revert EmptyBatch();
        firstJobId = _globals.nextJobId;
        _globals.nextJobId = (firstJobId + n).toUint64();
        uint256 escrow = 0;
        for (uint256 i = 0; i < n; ++i) {
            escrow += _recordPost(firstJobId + i, params[i], worker);
        }
        _token.safeTransferFrom(msg.sender, address(this), escrow);
    }

    /// @dev A job reserved for `worker` (not zero) names it while Posted; `_assign` checks it.
    function _recordPost(uint256 jobId, JobParams calldata p, address worker) private returns (uint256 escrow) {
        if (p.reward == 0) revert ZeroReward();
        if (p.deadline <= block.timestamp) revert DeadlineInPast(p.deadline);
        if (p.auditBps > Payout.BPS) revert InvalidBps(p.auditBps);
        uint16 auditBps = p.auditBps < _minAuditBps ? _minAuditBps : p.auditBps;
        Job memory j = Job({
            client: msg.sender,
            worker: worker,
            auditor: address(0),
            reward: p.reward,
            auditFee: p.auditFee,
            collateral: p.collateral,
            deadline: p.deadline,
            leaseExpiry: 0,
            committedAt: 0,
            committedBlock: 0,
            resolvedAt: 0,
            auditBps: auditBps,
            state: JobState.Posted,
            specHash: p.specHash,
            resultHash: bytes32(0)
        });
        _store(jobId, j);
        emit JobPosted(jobId, msg.sender, p.specHash, p.reward, p.auditFee, p.collateral, p.deadline, auditBps);
        if (worker != address(0)) emit JobReserved(jobId, worker);
        return uint256(p.reward) + p.auditFee;
    }

    /// @dev Assigns the ticket's jobs to the caller; with `resultHashes` (same length) also
    /// commits them, storing each record once.
    function _assign(
        Job[] calldata jobs,
        AssignTicket calldata ticket,
        bytes calldata signature,
        bytes32[] memory resultHashes
    ) private {
        uint256 n = jobs.length;
        if (n == 0) revert EmptyBatch();
        if (ticket.jobIds.length != n) revert LengthMismatch();
        if (ticket.worker != msg.sender) revert TicketWorkerMismatch(ticket.worker, msg.sender);
        if (block.timestamp >= ticket.leaseExpiry) revert TicketExpired(ticket.leaseExpiry);
        if (ticket.auditBps > Payout.BPS) revert InvalidBps(ticket.auditBps);
        // The third return value (the malformed length or s value) is not needed: any
        // recovery error is reported as an invalid signer (address zero).
        // slither-disable-next-line unused-return
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(_ticketDigest(ticket), signature);
        if (err != ECDSA.RecoverError.NoError) signer = address(0);
        if (signer == address(0) || !hasRole(ASSIGNER_ROLE, signer)) revert InvalidTicketSigner(signer);

        bool commit = resultHashes.length != 0;
        uint256 toLock = 0;
        Standing memory standing = _standing(msg.sender);
        for (uint256 i = 0; i < n; ++i) {
            uint256 jobId = ticket.jobIds[i];
            _checkRecord(jobId, jobs[i]);
            Job memory j = jobs[i];
            if (block.timestamp > j.deadline) revert JobDeadlinePassed(jobId, j.deadline);
            if (j.state == JobState.Posted) {
                // a reserved job: its worker only, committing at once (never left Assigned,
                // where an expired lease would open it to others)
                if (j.worker != address(0) && (j.worker != msg.sender || !commit)) {
                    revert JobReservedFor(jobId, j.worker);
                }
                toLock += j.collateral;
            } else if (j.state == JobState.Assigned) {
                if (j.worker != msg.sender) {
                    if (block.timestamp < j.leaseExpiry) revert JobLeased(jobId, j.worker, j.leaseExpiry);
                    _records[j.worker].missed += 1;
                    emit LeaseExpired(jobId, j.worker);
                    _stakes.unlock(j.worker, j.collateral);
                    toLock += j.collateral;
                }
            } else {
                revert InvalidJobState(jobId, j.state);
            }
            j.worker = msg.sender;
            j.leaseExpiry = ticket.leaseExpiry;
            // The rate only ever rises: the client's (already at least the floor), the
            // deterrence rate for this worker, the market's ticket.
            if (standing.deterrence) {
                uint256 rate = _auditRate(
                    j.reward, j.collateral, standing.freeStake, standing.completed, standing.auditsPassed,
                    standing.slashed, j.auditBps
                );
                j.auditBps = uint16(rate);
            }
            if (ticket.auditBps > j.auditBps) j.auditBps = ticket.auditBps;
            if (commit) {
                // One event says both: JobCommitted carries the lease (worker, expiry, rate).
                _markCommitted(jobId, j, resultHashes[i]);
            } else {
                j.state = JobState.Assigned;
                emit JobAssigned(jobId, msg.sender, ticket.leaseExpiry, j.auditBps);
            }
            _store(jobId, j);
        }
        if (toLock > 0) _stakes.lock(msg.sender, toLock);
    }

    function _commit(uint256 jobId, Job calldata job, bytes32 resultHash) private {
        if (job.state != JobState.Assigned) revert InvalidJobState(jobId, job.state);
        if (job.worker != msg.sender) revert NotAssignedWorker(jobId, msg.sender);
        if (block.timestamp > job.deadline) revert JobDeadlinePassed(jobId, job.deadline);
        Job memory j = job;
        _markCommitted(jobId, j, resultHash);
        _store(jobId, j);
    }

    /// @dev Records the commit in `j` (the caller stores it).
    function _markCommitted(uint256 jobId, Job memory j, bytes32 resultHash) private {
        if (resultHash == bytes32(0)) revert EmptyResult(jobId);
        j.resultHash = resultHash;
        j.committedAt = uint40(block.timestamp);
        j.committedBlock = uint40(block.number);
        j.state = JobState.Committed;
        emit JobCommitted(jobId, msg.sender, resultHash, j.committedAt, j.committedBlock, j.leaseExpiry, j.auditBps);
    }

    function _standing(address worker) private view returns (Standing memory st) {
        if (!_auditDeterrence) return st;
        Record memory r = _records[worker];
        st.deterrence = true;
        st.freeStake = _stakes.freeStake(worker);
        st.completed = _accounts[worker].completed;
        st.auditsPassed = r.auditsPassed;
        st.slashed = r.slashed;
    }

    /// @dev See `auditRate`. Bounds (reward, collateral < 2^96; counts < 2^32) keep every
    /// product below 2^256: td < 2^137, marginNum < 2^140, num < 2^250.
    function _auditRate(
        uint256 reward,
        uint256 collateral,
        uint256 freeStake,
        uint256 completed,
        uint256 auditsPassed,
        uint256 slashed,
        uint256 minBps
    ) private pure returns (uint256) {
        if (slashed > 0) return Payout.BPS;
        if (reward == 0) return minBps;
        uint256 evidence = _AUDIT_WEIGHT * auditsPassed + completed;
        uint256 fullCover = _STAKE_COVER * reward;
        uint256 tn = evidence * (freeStake < fullCover ? freeStake : fullCover);
        uint256 td = (evidence + _TRUST_HALF_EVIDENCE) * fullCover;
        // margin = 4 - 5/2 * tn / td = (8 td - 5 tn) / (2 td)
        uint256 num = (8 * td - 5 * tn) * reward * Payout.BPS;
        uint256 den = 2 * td * (reward + collateral);
        uint256 bps = (num + den - 1) / den;
        if (bps > Payout.BPS) bps = Payout.BPS;
        return bps < minBps ? minBps : bps;
    }

    function _ticketDigest(AssignTicket calldata ticket) private view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                _TICKET_TYPEHASH,
                ticket.worker,
                keccak256(abi.encodePacked(ticket.jobIds)),
                ticket.auditBps,
                ticket.leaseExpiry
            )
        );
        return _hashTypedDataV4(structHash);
    }
}
