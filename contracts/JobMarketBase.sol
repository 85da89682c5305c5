// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {IStakeManager} from "./interfaces/IStakeManager.sol";
import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";
import {Job, JobParams, JobState, AssignTicket} from "./types/Job.sol";
import {Payout} from "./libraries/Payout.sol";

/// @title JobMarketBase
/// @notice What the two halves of the job market share: its storage, deployment parameters and
/// the internal steps of a job's life. `JobMarket` is deployed and holds the state and the
/// tokens; it runs the client, worker and admin calls itself and hands the verifier and
/// settlement calls (`JobMarketSettlement`) to its settlement half by DELEGATECALL, so both
/// halves act on the same storage, and every event comes from the JobMarket's address.
/// @dev Split only because one contract's code may not exceed 24,576 bytes (EIP-170). Both
/// halves inherit this contract first, so their storage layouts agree slot for slot; the
/// settlement half declares no storage of its own.
abstract contract JobMarketBase is AccessControl, ReentrancyGuardTransient, IJobMarket {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

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

    IERC20 internal immutable _token;
    IStakeManager internal immutable _stakes;
    IVerifierRegistry internal immutable _registry;
    uint16 internal immutable _feeBps;
    uint16 internal immutable _minAuditBps;
    uint40 internal immutable _challengeWindow;
    uint40 internal immutable _auditWindow;
    uint40 internal immutable _appealWindow;
    bool internal immutable _auditDeterrence;

    // Deterrence rate (see `auditRate`): margin 4 for a new worker falling towards 3/2 as its
    // record grows (an audit passed counts as 10 jobs; half the discount at 250) and only as
    // far as its free stake covers 10 rewards.
    uint256 internal constant _AUDIT_WEIGHT = 10;
    uint256 internal constant _TRUST_HALF_EVIDENCE = 250;
    uint256 internal constant _STAKE_COVER = 10;

    /// @dev A pass locks this many rewards of the verifier's free stake (see `_verifierBond`).
    uint256 internal constant _PASS_BOND_REWARDS = 10;

    /// @dev EIP-2935: the system contract serving the hashes of the last 8191 blocks.
    address internal constant _HISTORY = 0x0000F90827F1C53a10cb7A02335B175320002935;
    uint256 internal constant _HISTORY_WINDOW = 8191;

    /// @dev Read by almost every call, so packed into one slot.
    struct Globals {
        uint64 nextJobId;
        bool paused;
        address feeRecipient;
    }

    /// @dev abi.encode(Job) is 15 static words.
    uint256 internal constant _JOB_WORDS_BYTES = 15 * 32;

    Globals internal _globals;
    mapping(uint256 jobId => bytes32 digest) internal _jobDigest;
    mapping(address account => Account) internal _accounts;
    mapping(address account => Record) internal _records;
    /// @dev The verifier whose appeal verdict a third seat may judge: it overturned the first
    /// (while a contest decides), or upheld it (while it may be escalated, and is).
    mapping(uint256 jobId => address verifier) internal _appealSeat;
    /// @dev What that verifier's registry deposit has reserved for the verdict: released or
    /// forfeited, exactly, when the verdict stands or falls.
    mapping(uint256 jobId => uint256 amount) internal _appealCover;
    /// @dev The block of the transaction that opened the job's pending later verdict (an
    /// appeal or dispute, a contest, a void's confirmation, an escalation): that verdict's draw
    /// is seeded by the hash of the block after it, which nobody knew when deciding to send it.
    mapping(uint256 jobId => uint256 blockNumber) internal _stageBlock;

    constructor(IERC20 token_, IStakeManager stakes_, IVerifierRegistry registry_, Config memory cfg) {
        if (address(token_) == address(0) || address(stakes_) == address(0)) revert ZeroAddress();
        if (address(stakes_.token()) != address(token_)) revert TokenMismatch();
        if (cfg.feeBps > Payout.BPS) revert InvalidBps(cfg.feeBps);
        if (cfg.minAuditBps > Payout.BPS) revert InvalidBps(cfg.minAuditBps);
        // The longest path from a commit to its last verdict: the audit (a void proposed as its
        // window closes), the void's confirmation (a failure), the appeal, the window to
        // escalate an upheld verdict and the escalation's verdict (a contest of an overturn
        // closes sooner: one audit window after the appeal verdict).
        uint256 windows =
            uint256(cfg.challengeWindow) + 4 * uint256(cfg.auditWindow) + 2 * uint256(cfg.appealWindow);
        if (stakes_.unbondingDelay() <= windows) revert UnbondingTooShort(stakes_.unbondingDelay(), windows);
        // A verifier's deposit must stay bound past every verdict window it may be assigned,
        // and past the first second a timeout can be settled (one after the window closes):
        // the registry burns silence only while every candidate's deposit is surely bound.
        (, uint256 exitDelay) = registry_.terms();
        if (exitDelay <= windows + 1) revert UnbondingTooShort(exitDelay, windows + 1);
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
    }

    // ================================================================== internals

    modifier whenNotPaused() {
        if (_globals.paused) revert EnforcedPause();
        _;
    }

    function _credit(address account, uint256 amount) internal {
        _accounts[account].withdrawable += amount.toUint112();
    }

    function _store(uint256 jobId, Job memory j) internal {
        _jobDigest[jobId] = _hashMemory(j);
    }

    /// @dev Ends a job (Finalized, Slashed or Refunded): its digest slot is cleared (a storage
    /// refund), so a closed job can never be acted on again. Its events keep the full record.
    function _close(uint256 jobId) internal {
        delete _jobDigest[jobId];
        // (_stageBlock stays: job ids are never reused and nothing reads a closed job's draw;
        // clearing it would cost every settled job a storage write, opened stage or not)
    }

    /// @dev keccak256(abi.encode(j)) without allocating: a memory struct of 15 static fields
    /// is laid out exactly as its ABI encoding, one clean word per field.
    function _hashMemory(Job memory j) internal pure returns (bytes32 digest) {
        assembly ("memory-safe") {
            digest := keccak256(j, _JOB_WORDS_BYTES)
        }
    }

    /// @dev keccak256 of the record's calldata words, copied to scratch memory past the free
    /// memory pointer (not allocated). Dirty (non-canonical) encodings hash differently from
    /// the stored digest and are rejected as a mismatch.
    function _hashCalldata(Job calldata job) internal pure returns (bytes32 digest) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            calldatacopy(ptr, job, _JOB_WORDS_BYTES)
            digest := keccak256(ptr, _JOB_WORDS_BYTES)
        }
    }

    function _checkRecord(uint256 jobId, Job calldata job) internal view {
        bytes32 stored = _jobDigest[jobId];
        if (stored == bytes32(0)) _revertMissing(jobId);
        if (stored != _hashCalldata(job)) revert JobRecordMismatch(jobId);
    }

    /// @dev A job id with no digest was either never posted or has ended.
    function _revertMissing(uint256 jobId) internal view {
        if (jobId != 0 && jobId < _globals.nextJobId) revert JobClosed(jobId);
        revert UnknownJob(jobId);
    }

}
