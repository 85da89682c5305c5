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

import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {IStakeManager} from "./interfaces/IStakeManager.sol";
import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";
import {Job, JobParams, JobState, AssignTicket} from "./types/Job.sol";
import {Payout} from "./libraries/Payout.sol";

/// @title JobMarket
/// @notice Escrow and lifecycle of compute jobs: clients escrow a reward and an audit fee, the
/// market assigns a staked worker with a signed ticket, the worker commits its result hash, a
/// random draw taken after the commit decides whether a verifier re-runs the job, and anyone can
/// settle a job once its windows have passed. Payments are pulled with `withdraw`.
/// @dev Only keccak256(abi.encode(job)) is stored per open job; callers pass the record (see
/// Job). A job that ends (Finalized, Slashed, Refunded) has its slot cleared: the storage
/// refund pays for part of the settlement, and any later call about it reverts JobClosed.
/// `assignAndCommit` emits one JobCommitted per job (carrying the lease) and no JobAssigned.
/// Solvency: token.balanceOf(this) == sum of open escrows (reward + auditFee of every open job:
/// Posted, Assigned, Committed, Audited, AuditFailed, Appealed, AuditPassed; plus the dispute
/// bond, another auditFee, while Disputed) + sum of withdrawable balances. Pause stops new work (post, assign, commit, appeal); it never freezes
/// settlement, verdicts, reclaim or withdraw.
contract JobMarket is AccessControl, ReentrancyGuardTransient, EIP712, IJobMarket {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    bytes32 public constant ASSIGNER_ROLE = keccak256("ASSIGNER_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    bytes32 private constant _TICKET_TYPEHASH =
        keccak256("AssignTicket(address worker,uint256[] jobIds,uint16 auditBps,uint40 leaseExpiry)");

    /// @notice Deployment parameters.
    /// @param feeBps protocol fee on each paid reward, in basis points (rounded up)
    /// @param minAuditBps floor of every job's audit probability
    /// @param challengeWindow seconds after a commit before an unaudited job can be paid
    /// @param auditWindow seconds after the challenge window for the verifier's verdict (and,
    /// after an appeal, for the appeal verdict)
    /// @param appealWindow seconds after a failed audit during which the worker may appeal
    /// @param auditDeterrence whether each job's audit rate is raised on assignment to the
    /// deterrence rate of `auditRate` for the worker's on-chain record and free stake (a
    /// production deployment keeps it on; a development chain with no verifier turns it off)
    struct Config {
        uint16 feeBps;
        uint16 minAuditBps;
        uint40 challengeWindow;
        uint40 auditWindow;
        uint40 appealWindow;
        bool auditDeterrence;
    }

    /// @dev Hot per-account state, one slot: updated by every payment.
    struct Account {
        uint112 withdrawable;
        uint112 earned;
        uint32 completed;
    }

    /// @dev Colder per-account state, one slot.
    struct Record {
        uint128 withdrawn;
        uint32 missed;
        uint32 slashed;
        uint32 auditsPassed;
    }

    /// @dev What the deterrence rate of an assignment depends on, read once per ticket: the
    /// worker's record and its free stake before this ticket's collateral is locked.
    struct Standing {
        bool deterrence;
        uint256 freeStake;
        uint256 completed;
        uint256 auditsPassed;
        uint256 slashed;
    }

    /// @dev Credits gathered while settling, written once per run of equal addresses.
    struct Pending {
        address worker;
        uint256 workerPay;
        uint256 unlock;
        uint256 completed;
        address client;
        uint256 clientRefund;
        uint256 fees;
    }

    IERC20 private immutable _token;
    IStakeManager private immutable _stakes;
    IVerifierRegistry private immutable _registry;
    uint16 private immutable _feeBps;
    uint16 private immutable _minAuditBps;
    uint40 private immutable _challengeWindow;
    uint40 private immutable _auditWindow;
    uint40 private immutable _appealWindow;
    bool private immutable _auditDeterrence;

    // Deterrence rate (see `auditRate`): margin 4 for a new worker falling towards 3/2 as its
    // record grows (an audit passed counts as 10 jobs; half the discount at 250) and only as
    // far as its free stake covers 10 rewards.
    uint256 private constant _AUDIT_WEIGHT = 10;
    uint256 private constant _TRUST_HALF_EVIDENCE = 250;
    uint256 private constant _STAKE_COVER = 10;

    /// @dev A pass locks this many rewards of the verifier's free stake (see `_verifierBond`).
    uint256 private constant _PASS_BOND_REWARDS = 10;

    /// @dev EIP-2935: the system contract serving the hashes of the last 8191 blocks.
    address private constant _HISTORY = 0x0000F90827F1C53a10cb7A02335B175320002935;
    uint256 private constant _HISTORY_WINDOW = 8191;

    /// @dev Read by almost every call, so packed into one slot.
    struct Globals {
        uint64 nextJobId;
        bool paused;
        address feeRecipient;
    }

    /// @dev abi.encode(Job) is 15 static words.
    uint256 private constant _JOB_WORDS_BYTES = 15 * 32;

    Globals private _globals;
    mapping(uint256 jobId => bytes32 digest) private _jobDigest;
    mapping(address account => Account) private _accounts;
    mapping(address account => Record) private _records;

    /// @param registry_ the open verifier membership the draw assigns verdicts from
    constructor(
        IERC20 token_,
        IStakeManager stakes_,
        IVerifierRegistry registry_,
        address admin,
        address feeRecipient_,
        Config memory cfg
    )
        EIP712("MeshJobMarket", "1")
    {
        if (address(token_) == address(0) || address(stakes_) == address(0)) revert ZeroAddress();
        if (admin == address(0) || feeRecipient_ == address(0)) revert ZeroAddress();
        if (address(stakes_.token()) != address(token_)) revert TokenMismatch();
        if (cfg.feeBps > Payout.BPS) revert InvalidBps(cfg.feeBps);
        if (cfg.minAuditBps > Payout.BPS) revert InvalidBps(cfg.minAuditBps);
        uint256 windows =
            uint256(cfg.challengeWindow) + cfg.auditWindow + cfg.appealWindow + cfg.auditWindow;
        if (stakes_.unbondingDelay() <= windows) revert UnbondingTooShort(stakes_.unbondingDelay(), windows);
        // A verifier's deposit must stay bound past every verdict window it may be assigned.
        (, uint256 exitDelay) = registry_.terms();
        if (exitDelay <= windows) revert UnbondingTooShort(exitDelay, windows);
        if (address(registry_.token()) != address(token_)) revert TokenMismatch();
        _token = token_;
        _stakes = stakes_;
        _registry = registry_;
        _feeBps = cfg.feeBps;
        _minAuditBps = cfg.minAuditBps;
        _challengeWindow = cfg.challengeWindow;
        _auditWindow = cfg.auditWindow;
        _appealWindow = cfg.appealWindow;
        _auditDeterrence = cfg.auditDeterrence;
        _globals = Globals({nextJobId: 1, paused: false, feeRecipient: feeRecipient_});
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        emit FeeRecipientSet(feeRecipient_);
    }

    // ================================================================== clients

    /// @notice Post one job, escrowing `reward + auditFee` from the caller (needs an allowance).
    function postJob(JobParams calldata params) external whenNotPaused nonReentrant returns (uint256 jobId) {
        jobId = _globals.nextJobId;
        _globals.nextJobId = uint64(jobId + 1);
        uint256 escrow = _recordPost(jobId, params);
        _token.safeTransferFrom(msg.sender, address(this), escrow);
    }

    /// @notice Post a batch of jobs (the shards of one submission) with one token transfer.
    /// @return firstJobId the id of the first job; the others follow consecutively
    function postJobs(JobParams[] calldata params) external whenNotPaused nonReentrant returns (uint256 firstJobId) {
        return _postJobs(params);
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
        return _postJobs(params);
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

    // ================================================================== workers

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

    /// @notice Appeal a verdict, once, within the appeal window: the worker appeals a failure;
    /// the client disputes a pass, escrowing a dispute bond equal to the audit fee (needs an
    /// allowance), which pays the appeal verifier if the pass is upheld and comes back if it is
    /// overturned. A second verifier then recomputes; without its verdict the job is void
    /// (neither paid nor slashed; a dispute bond goes to the protocol) and the silent verifiers
    /// lose part of their deposits.
    /// Works while paused: the window keeps running and its outcome waits at its end, so a pause
    /// must not take the appeal.
    function appeal(uint256 jobId, Job calldata job) external nonReentrant {
        _checkRecord(jobId, job);
        Job memory j = job;
        if (j.state == JobState.AuditPassed) {
            if (msg.sender != j.client) revert NotJobClient(jobId, msg.sender);
            j.state = JobState.Disputed;
        } else {
            if (msg.sender != j.worker) revert NotAssignedWorker(jobId, msg.sender);
            if (j.state != JobState.AuditFailed) revert InvalidJobState(jobId, j.state);
            j.state = JobState.Appealed;
        }
        uint256 closesAt = uint256(j.resolvedAt) + _appealWindow;
        if (block.timestamp > closesAt) revert WindowClosed(jobId, closesAt);
        _store(jobId, j);
        emit AuditAppealed(jobId, msg.sender);
        if (j.state == JobState.Disputed && j.auditFee > 0) {
            _token.safeTransferFrom(msg.sender, address(this), j.auditFee);
        }
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

    // ================================================================== verifiers

    /// @notice Post the verdict on a job drawn for audit, with the hash of the evidence (the
    /// hashes of every output compared and the tolerance policy; never zero). The verifier may
    /// be neither the job's worker nor its client.
    /// Either verdict opens the appeal window and puts the verifier's word at stake: its audit
    /// fee stays in escrow and the job's reward is locked from its free stake as a bond
    /// (`_verifierBond`) until the verdict stands (fee paid, bond released; a pass then pays the
    /// worker) or the appeal verifier overturns it (fee to the appeal verifier, bond to the
    /// party it wronged: the worker of a wrongly failed job, the client of a wrongly passed
    /// one). A verifier that passes without recomputing thus risks its bond on every canary.
    function resolveAudit(uint256 jobId, Job calldata job, bool passed, bytes32 evidenceHash)
        external
        nonReentrant
    {
        Job memory j = _openAudit(jobId, job, evidenceHash);
        j.auditor = msg.sender;
        j.resolvedAt = uint40(block.timestamp);
        emit AuditResolved(jobId, msg.sender, passed, evidenceHash, j.resolvedAt);
        j.state = passed ? JobState.AuditPassed : JobState.AuditFailed;
        _store(jobId, j);
        uint256 bond = _verifierBond(j);
        if (bond > 0) _stakes.lock(msg.sender, bond);
    }

    /// @notice Declare a job drawn for audit void: it cannot be judged, because the verifier's
    /// own recomputations under two numeric setups disagree under the job's tolerance, or a
    /// one-ulp change of its inputs moves its output beyond that tolerance (the program is
    /// unstable). Nobody is at fault: the worker is not paid (its result could not be verified)
    /// and keeps its collateral, the client gets its reward back, and the verifier earns the
    /// audit fee for the recomputations that showed it (evidence: their output hashes).
    function voidAudit(uint256 jobId, Job calldata job, bytes32 evidenceHash)
        external
        nonReentrant
    {
        Job memory j = _openAudit(jobId, job, evidenceHash);
        emit AuditVoided(jobId, msg.sender, evidenceHash);
        _payAuditFee(jobId, msg.sender, j.auditFee);
        _close(jobId);
        _credit(j.client, j.reward);
        emit JobRefunded(jobId, j.client, j.reward);
        if (j.collateral > 0) _stakes.unlock(j.worker, j.collateral);
    }

    /// @notice Post the verdict of an appeal (of a failure) or a dispute (of a pass). Must come
    /// from a verifier other than the one who gave the first verdict (and other than the job's
    /// worker and client). When the worker wins it is paid; when it loses it is slashed.
    /// Appealed failure: a worker who wins gets the overturned verifier's bond, and this
    /// verifier its audit fee; a failure upheld pays this verifier up to the audit fee from the
    /// slashed collateral (after the client's compensation). Disputed pass: upheld, this
    /// verifier earns the client's dispute bond; overturned, it earns the passing verifier's
    /// audit fee, and the client gets that verifier's bond and its dispute bond back.
    function resolveAppeal(uint256 jobId, Job calldata job, bool workerWins, bytes32 evidenceHash)
        external
        nonReentrant
    {
        _checkRecord(jobId, job);
        bool dispute = job.state == JobState.Disputed;
        if (!dispute && job.state != JobState.Appealed) revert InvalidJobState(jobId, job.state);
        if (evidenceHash == bytes32(0)) revert EmptyEvidence(jobId);
        if (msg.sender == job.auditor || msg.sender == job.worker || msg.sender == job.client) {
            revert VerifierConflict(jobId, msg.sender);
        }
        uint256 closesAt = _appealVerdictClosesAt(job);
        if (block.timestamp > closesAt) revert WindowClosed(jobId, closesAt);
        Job memory j = job;
        _checkAssigned(jobId, j, true, closesAt);
        emit AppealResolved(jobId, msg.sender, workerWins, evidenceHash);
        if (!workerWins) {
            _slash(jobId, j, msg.sender);
        } else if (dispute) {
            Pending memory p = _noPending();
            _passStands(jobId, j, p, msg.sender);
            _flush(p);
        } else {
            _records[j.worker].auditsPassed += 1;
            Pending memory p = _noPending();
            _pay(jobId, j, p, true, false);
            _flush(p);
            _payAuditFee(jobId, msg.sender, j.auditFee);
            _slashVerifier(jobId, j, j.worker);
        }
    }

    // ================================================================== settlement (anyone)

    /// @notice Settle one job whose outcome is decided: pay an unaudited job after the
    /// challenge window, void an audited job whose verdict did not come in time (silence never
    /// pays) and a disputed pass no appeal verdict confirmed, pay a pass that stands, slash a
    /// job whose failed audit stands. If the draw selects the job for audit, this records the
    /// draw (AuditDrawn) and the job waits for the verifier.
    function finalize(uint256 jobId, Job calldata job) external nonReentrant {
        _checkRecord(jobId, job);
        Pending memory p = _noPending();
        _settle(jobId, job, p, true);
        _flush(p);
    }

    /// @notice Settle many jobs; jobs that are not settleable (or whose record is stale) are
    /// skipped rather than reverting the batch.
    /// @return settled how many jobs were paid or slashed
    function finalizeBatch(uint256[] calldata jobIds, Job[] calldata jobs)
        external
        nonReentrant
        returns (uint256 settled)
    {
        uint256 n = jobIds.length;
        if (jobs.length != n) revert LengthMismatch();
        Pending memory p = _noPending();
        for (uint256 i = 0; i < n; ++i) {
            bytes32 stored = _jobDigest[jobIds[i]];
            if (stored == bytes32(0) || stored != _hashCalldata(jobs[i])) continue;
            if (_settle(jobIds[i], jobs[i], p, false)) ++settled;
        }
        _flush(p);
    }

    // ================================================================== admin

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

    // ================================================================== views

    function token() external view returns (IERC20) {
        return _token;
    }

    function stakeManager() external view returns (IStakeManager) {
        return _stakes;
    }

    function verifierRegistry() external view returns (IVerifierRegistry) {
        return _registry;
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

    /// @notice Whether the audit draw of a committed job can be taken yet, and its outcome.
    function auditStatus(uint256 jobId, Job calldata job) external view returns (bool drawable, bool audited) {
        if (job.state != JobState.Committed) return (false, job.state == JobState.Audited);
        if (block.number <= uint256(job.committedBlock) + 1) return (false, false);
        return (true, _drawAudit(jobId, job));
    }

    /// @notice Payment state of `account`: credited and not withdrawn, total earned as a
    /// worker, total withdrawn, jobs completed.
    /// @notice The verifier the draw assigns to the job's pending verdict now: its audit
    /// (Committed and drawn, or Audited) or its appeal or dispute (Appealed, Disputed). Only
    /// that verifier may post the verdict, and so only it earns the fee: a verifier cannot race
    /// the others to every fee by passing without recomputing. The draw's seed is the audit
    /// draw's (the hash of the block after the commit) and the candidates are the registry's
    /// seats joined by the commit block (`VerifierRegistry.assignee`) other than the job's worker and
    /// client (and, for an appeal, the verifier whose verdict is in question). Silence
    /// escalates: in the second half of the verdict's window the next candidate is assigned
    /// instead; a verdict still missing when the window closes leaves the job void and burns
    /// part of both silent verifiers' deposits. Zero when no candidate is left.
    function assignedVerifier(uint256 jobId, Job calldata job) external view returns (address) {
        _checkRecord(jobId, job);
        Job memory j = job;
        bool appealed = j.state == JobState.Appealed || j.state == JobState.Disputed;
        uint256 closesAt = appealed ? _appealVerdictClosesAt(j) : _auditClosesAt(j);
        return _assignee(jobId, j, appealed, closesAt);
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

    function _postJobs(JobParams[] calldata params) private returns (uint256 firstJobId) {
        uint256 n = params.length;
        if (n == 0) revert EmptyBatch();
        firstJobId = _globals.nextJobId;
        _globals.nextJobId = (firstJobId + n).toUint64();
        uint256 escrow = 0;
        for (uint256 i = 0; i < n; ++i) {
            escrow += _recordPost(firstJobId + i, params[i]);
        }
        _token.safeTransferFrom(msg.sender, address(this), escrow);
    }

    function _recordPost(uint256 jobId, JobParams calldata p) private returns (uint256 escrow) {
        if (p.reward == 0) revert ZeroReward();
        if (p.deadline <= block.timestamp) revert DeadlineInPast(p.deadline);
        if (p.auditBps > Payout.BPS) revert InvalidBps(p.auditBps);
        uint16 auditBps = p.auditBps < _minAuditBps ? _minAuditBps : p.auditBps;
        Job memory j = Job({
            client: msg.sender,
            worker: address(0),
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

    /// @dev Settles `job` if its outcome is decided. In strict mode, says why not by reverting.
    function _settle(uint256 jobId, Job calldata job, Pending memory p, bool strict) private returns (bool) {
        JobState s = job.state;
        if (s == JobState.Committed) {
            uint256 openAt = uint256(job.committedAt) + _challengeWindow;
            if (block.timestamp < openAt) return _notYet(strict, jobId, openAt);
            uint256 drawBlock = uint256(job.committedBlock) + 1;
            if (block.number <= drawBlock) {
                if (strict) revert AuditDrawPending(jobId, drawBlock + 1);
                return false;
            }
            Job memory j = job;
            if (_drawAudit(jobId, j)) {
                j.state = JobState.Audited;
                _store(jobId, j);
                emit AuditDrawn(jobId, true);
                return false;
            }
            _pay(jobId, j, p, false, true);
            return true;
        }
        if (s == JobState.Audited) {
            uint256 closesAt = _auditClosesAt(job);
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _void(jobId, job, p, uint256(job.reward) + job.auditFee);
            _punishSilence(jobId, job, false);
            return true;
        }
        if (s == JobState.AuditPassed) {
            uint256 closesAt = uint256(job.resolvedAt) + _appealWindow;
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _passStands(jobId, job, p, address(0));
            return true;
        }
        if (s == JobState.Disputed || s == JobState.Appealed) {
            uint256 closesAt = _appealVerdictClosesAt(job);
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _voidUnjudged(jobId, job, p);
            _punishSilence(jobId, job, true);
            return true;
        }
        if (s == JobState.AuditFailed) {
            uint256 closesAt = uint256(job.resolvedAt) + _appealWindow;
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _slash(jobId, job, address(0));
            return true;
        }
        if (strict) revert InvalidJobState(jobId, s);
        return false;
    }

    function _notYet(bool strict, uint256 jobId, uint256 openAt) private pure returns (bool) {
        if (strict) revert NotYetSettleable(jobId, openAt);
        return false;
    }

    /// @dev Pays the worker (reward less fee, collateral unlocked). The audit fee goes back to
    /// the client when no verifier earned it.
    function _pay(uint256 jobId, Job memory j, Pending memory p, bool audited, bool refundAuditFee) private {
        (uint256 workerPay, uint256 fee) = Payout.split(j.reward, _feeBps);
        if (p.worker != j.worker) {
            _flushWorker(p);
            p.worker = j.worker;
        }
        p.workerPay += workerPay;
        p.unlock += j.collateral;
        p.completed += 1;
        p.fees += fee;
        if (refundAuditFee && j.auditFee > 0) {
            if (p.client != j.client) {
                _flushClient(p);
                p.client = j.client;
            }
            p.clientRefund += j.auditFee;
        }
        _close(jobId);
        emit JobPaid(jobId, j.worker, workerPay, fee, audited);
    }

    /// @dev Slashes the worker's collateral for a failed audit that stands: the client gets the
    /// reward back and its audit fee from the collateral (never more than it paid); the verifier
    /// who failed the job earns the audit fee held since its verdict and gets its bond back; an
    /// appeal verifier who upheld the failure (`appealVerifier`, zero when no appeal verdict
    /// came) is paid up to the audit fee from the collateral; the rest goes to the fee recipient.
    /// A disputed pass that is overturned instead: the passing verifier earns nothing and
    /// loses its bond to the client, its audit fee goes to the appeal verifier, and the
    /// client's dispute bond comes back.
    function _slash(uint256 jobId, Job memory j, address appealVerifier) private {
        bool overturnedPass = j.state == JobState.Disputed;
        (uint256 compensation, uint256 remainder) = Payout.slashSplit(j.collateral, j.auditFee);
        uint256 appealFee = 0;
        if (appealVerifier != address(0) && !overturnedPass) {
            appealFee = remainder < j.auditFee ? remainder : j.auditFee;
            remainder -= appealFee;
        }
        _close(jobId);
        _records[j.worker].slashed += 1;
        _credit(j.client, uint256(j.reward) + compensation);
        if (remainder > 0) _credit(_globals.feeRecipient, remainder);
        emit JobSlashed(jobId, j.worker, j.collateral, compensation);
        emit JobRefunded(jobId, j.client, j.reward);
        if (overturnedPass) {
            _payAuditFee(jobId, appealVerifier, j.auditFee);
            _refundDisputeBond(jobId, j);
            _slashVerifier(jobId, j, j.client);
        } else {
            _payAuditFee(jobId, j.auditor, j.auditFee);
            _payAuditFee(jobId, appealVerifier, appealFee);
            uint256 bond = _verifierBond(j);
            if (bond > 0) _stakes.unlock(j.auditor, bond);
        }
        if (j.collateral > 0) _stakes.slash(j.worker, j.collateral, address(this));
    }

    /// @dev A pass that stands (its appeal window closed, or upheld on dispute): the worker is
    /// paid, the passing verifier earns its audit fee and gets its bond back; a dispute bond
    /// goes to the appeal verifier who upheld the pass.
    function _passStands(uint256 jobId, Job memory j, Pending memory p, address disputeWinner) private {
        _records[j.worker].auditsPassed += 1;
        _pay(jobId, j, p, true, false);
        _payAuditFee(jobId, j.auditor, j.auditFee);
        uint256 bond = _verifierBond(j);
        if (bond > 0) _stakes.unlock(j.auditor, bond);
        if (j.state == JobState.Disputed) _payAuditFee(jobId, disputeWinner, j.auditFee);
    }

    /// @dev An appeal or a dispute no appeal verdict judged in time: silence decides nothing,
    /// so the job is void (never paid, never slashed) and ends Refunded. The client gets its
    /// reward back; the first verifier, whose verdict was not overturned, earns its fee and gets
    /// its bond back; the worker gets its collateral back. A dispute's bond goes to the fee
    /// recipient (a dispute that nobody judged must still cost the client, or disputing every
    /// pass would make results free whenever verifiers are slow).
    function _voidUnjudged(uint256 jobId, Job memory j, Pending memory p) private {
        _payAuditFee(jobId, j.auditor, j.auditFee);
        if (j.state == JobState.Disputed) _credit(_globals.feeRecipient, j.auditFee);
        _stakes.unlock(j.auditor, _verifierBond(j));
        _void(jobId, j, p, j.reward);
    }

    /// @dev The verifiers the draw assigned to a verdict that never came (the first, and the
    /// second it escalated to) each have the job's reward and collateral burned from their
    /// registry deposit: staying silent must cost more than whatever silence could save a
    /// cheater (its collateral) or the verifier (the recomputation).
    function _punishSilence(uint256 jobId, Job memory j, bool appealed) private {
        (bytes32 seed, address[3] memory excluded) = _drawInputs(j, appealed);
        if (seed == bytes32(0)) return; // the draw is gone: who was assigned is unknown
        _registry.punishSilence(
            seed, jobId, appealed, j.committedBlock, j.committedAt, excluded, uint256(j.reward) + j.collateral
        );
    }

    function _refundDisputeBond(uint256 jobId, Job memory j) private {
        if (j.auditFee == 0) return;
        _credit(j.client, j.auditFee);
        emit JobRefunded(jobId, j.client, j.auditFee);
    }

    /// @dev The bond of a verifier whose verdict was overturned goes to the party it wronged.
    function _slashVerifier(uint256 jobId, Job memory j, address wronged) private {
        uint256 bond = _verifierBond(j);
        if (bond == 0) return;
        _credit(wronged, bond);
        emit VerifierSlashed(jobId, j.auditor, bond, wronged);
        _stakes.slash(j.auditor, bond, address(this));
    }

    /// @dev Voids a job whose verdict never came: an unverified result is never paid. The client
    /// gets `refund` back (after an audit, its whole escrow: reward and audit fee; after a
    /// dispute, the reward), the worker its collateral (no verdict, no fault); the job ends
    /// (Refunded).
    function _void(uint256 jobId, Job memory j, Pending memory p, uint256 refund) private {
        if (p.worker != j.worker) {
            _flushWorker(p);
            p.worker = j.worker;
        }
        p.unlock += j.collateral;
        if (p.client != j.client) {
            _flushClient(p);
            p.client = j.client;
        }
        p.clientRefund += refund;
        _close(jobId);
        emit JobRefunded(jobId, j.client, refund);
    }

    function _noPending() private pure returns (Pending memory) {
        return Pending(address(0), 0, 0, 0, address(0), 0, 0);
    }

    modifier whenNotPaused() {
        if (_globals.paused) revert EnforcedPause();
        _;
    }

    function _flush(Pending memory p) private {
        _flushWorker(p);
        _flushClient(p);
        if (p.fees > 0) {
            _credit(_globals.feeRecipient, p.fees);
            p.fees = 0;
        }
    }

    function _flushWorker(Pending memory p) private {
        if (p.worker == address(0)) return;
        Account storage a = _accounts[p.worker];
        a.withdrawable += p.workerPay.toUint112();
        a.earned += p.workerPay.toUint112();
        a.completed += p.completed.toUint32();
        if (p.unlock > 0) _stakes.unlock(p.worker, p.unlock);
        p.worker = address(0);
        p.workerPay = 0;
        p.unlock = 0;
        p.completed = 0;
    }

    function _flushClient(Pending memory p) private {
        if (p.client == address(0)) return;
        _credit(p.client, p.clientRefund);
        p.client = address(0);
        p.clientRefund = 0;
    }

    function _credit(address account, uint256 amount) private {
        _accounts[account].withdrawable += amount.toUint112();
    }

    function _store(uint256 jobId, Job memory j) private {
        _jobDigest[jobId] = _hashMemory(j);
    }

    /// @dev Ends a job (Finalized, Slashed or Refunded): its digest slot is cleared (a storage
    /// refund), so a closed job can never be acted on again. Its events keep the full record.
    function _close(uint256 jobId) private {
        delete _jobDigest[jobId];
    }

    /// @dev keccak256(abi.encode(j)) without allocating: a memory struct of 15 static fields
    /// is laid out exactly as its ABI encoding, one clean word per field.
    function _hashMemory(Job memory j) private pure returns (bytes32 digest) {
        assembly ("memory-safe") {
            digest := keccak256(j, _JOB_WORDS_BYTES)
        }
    }

    /// @dev keccak256 of the record's calldata words, copied to scratch memory past the free
    /// memory pointer (not allocated). Dirty (non-canonical) encodings hash differently from
    /// the stored digest and are rejected as a mismatch.
    function _hashCalldata(Job calldata job) private pure returns (bytes32 digest) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            calldatacopy(ptr, job, _JOB_WORDS_BYTES)
            digest := keccak256(ptr, _JOB_WORDS_BYTES)
        }
    }

    function _checkRecord(uint256 jobId, Job calldata job) private view {
        bytes32 stored = _jobDigest[jobId];
        if (stored == bytes32(0)) _revertMissing(jobId);
        if (stored != _hashCalldata(job)) revert JobRecordMismatch(jobId);
    }

    /// @dev A job id with no digest was either never posted or has ended.
    function _revertMissing(uint256 jobId) private view {
        if (jobId != 0 && jobId < _globals.nextJobId) revert JobClosed(jobId);
        revert UnknownJob(jobId);
    }

    /// @dev The audit draw uses the hash of the block after the commit, which does not exist
    /// when the worker sends its commit. The hash is read with `blockhash` (the last 256
    /// blocks) and, further back, from the EIP-2935 history contract (the last 8191 blocks)
    /// where the chain has it, so a settlement delay does not change the draw. Deployment
    /// refuses windows longer than the draw can see (meshcompute.chain.deploy). Only if the
    /// hash is gone anyway (a job nobody settled for 8191 blocks, long after its audit window)
    /// does the job count as drawn, so waiting cannot help a worker escape an audit; being
    /// past its audit window, such a job is then void (nobody paid, nobody slashed).
    function _drawAudit(uint256 jobId, Job memory j) private view returns (bool) {
        bytes32 seed = _blockHashOf(uint256(j.committedBlock) + 1);
        if (seed == bytes32(0)) return true;
        return uint256(keccak256(abi.encode(seed, jobId))) % Payout.BPS < j.auditBps;
    }

    /// @dev The hash of block `number`, from `blockhash` or the EIP-2935 history contract;
    /// zero when neither has it.
    function _blockHashOf(uint256 number) private view returns (bytes32 hash) {
        hash = blockhash(number);
        if (hash != bytes32(0) || number >= block.number || block.number - number > _HISTORY_WINDOW) {
            return hash;
        }
        if (_HISTORY.code.length == 0) return hash;
        (bool ok, bytes memory data) = _HISTORY.staticcall(abi.encode(number));
        if (ok && data.length == 32) hash = abi.decode(data, (bytes32));
    }

    /// @dev Checks a verdict on a drawn job (caller, state, draw, window, evidence) and returns
    /// its record, recording the draw (AuditDrawn) when it was not taken yet.
    function _openAudit(uint256 jobId, Job calldata job, bytes32 evidenceHash) private returns (Job memory j) {
        _checkRecord(jobId, job);
        if (msg.sender == job.worker || msg.sender == job.client) revert VerifierConflict(jobId, msg.sender);
        if (evidenceHash == bytes32(0)) revert EmptyEvidence(jobId);
        j = job;
        if (j.state == JobState.Committed) {
            uint256 drawBlock = uint256(j.committedBlock) + 1;
            if (block.number <= drawBlock) revert AuditDrawPending(jobId, drawBlock + 1);
            if (!_drawAudit(jobId, j)) revert NotDrawnForAudit(jobId);
            emit AuditDrawn(jobId, true);
        } else if (j.state != JobState.Audited) {
            revert InvalidJobState(jobId, j.state);
        }
        uint256 closesAt = _auditClosesAt(j);
        if (block.timestamp > closesAt) revert WindowClosed(jobId, closesAt);
        _checkAssigned(jobId, j, false, closesAt);
    }

    /// @dev The stake a verifier locks behind a verdict: the job's reward behind a failure,
    /// `_PASS_BOND_REWARDS` rewards behind a pass. A pass given without recomputing saves the
    /// verifier about one job's compute; a canary (a job whose result is known to be junk,
    /// disputed by its client once passed) must cost it far more, so that canaries on a few
    /// percent of audits make lazy passes lose money (README, trust model; `mesh sim`).
    function _verifierBond(Job memory j) private pure returns (uint256) {
        if (j.state == JobState.AuditPassed || j.state == JobState.Disputed) {
            return uint256(j.reward) * _PASS_BOND_REWARDS;
        }
        return j.reward;
    }

    function _payAuditFee(uint256 jobId, address to, uint256 amount) private {
        if (amount == 0) return;
        _credit(to, amount);
        emit AuditFeePaid(jobId, to, amount);
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

    function _auditClosesAt(Job memory j) private view returns (uint256) {
        return uint256(j.committedAt) + _challengeWindow + _auditWindow;
    }

    function _appealVerdictClosesAt(Job memory j) private view returns (uint256) {
        return uint256(j.resolvedAt) + _appealWindow + _auditWindow;
    }

    function _checkAssigned(uint256 jobId, Job memory j, bool appealed, uint256 closesAt) private view {
        address assigned = _assignee(jobId, j, appealed, closesAt);
        if (msg.sender != assigned) revert NotAssignedVerifier(jobId, msg.sender, assigned);
    }

    /// @dev See `assignedVerifier`: the registry's draw among the seats joined by the commit,
    /// escalated to the second candidate once the window is in its second half.
    function _assignee(uint256 jobId, Job memory j, bool appealed, uint256 closesAt)
        private
        view
        returns (address)
    {
        (bytes32 seed, address[3] memory excluded) = _drawInputs(j, appealed);
        bool escalated = block.timestamp + _auditWindow / 2 > closesAt;
        return _registry.assignee(
            seed, jobId, appealed, j.committedBlock, uint256(j.reward) + j.collateral, excluded, escalated
        );
    }

    /// @dev The verdict draw's seed (the audit draw's) and the parties it may not assign.
    function _drawInputs(Job memory j, bool appealed) private view returns (bytes32, address[3] memory) {
        return (_blockHashOf(uint256(j.committedBlock) + 1), [j.worker, j.client, appealed ? j.auditor : address(0)]);
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
