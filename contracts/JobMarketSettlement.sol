// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {IStakeManager} from "./interfaces/IStakeManager.sol";
import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";
import {Job, JobParams, JobState, AssignTicket} from "./types/Job.sol";
import {Payout} from "./libraries/Payout.sol";
import {JobMarketBase} from "./JobMarketBase.sol";

/// @title JobMarketSettlement
/// @notice The verifier and settlement half of the job market: appeals, verdicts and
/// settlement. Deployed by the JobMarket's constructor and run only by its DELEGATECALL, on the
/// JobMarket's storage: called directly, every function reverts (`NotThroughMarket`).
contract JobMarketSettlement is JobMarketBase {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /// @dev The JobMarket that deployed this contract: the only context its code runs in.
    address private immutable _market;

    // The verdicts the registry's draw assigns (its `stage`): a drawn job's audit, the appeal of a
    // verdict (or dispute of a pass), the contest of an appeal verdict that overturns the first,
    // the confirmation of a void, and the escalation of an appeal verdict that upholds it.
    uint8 private constant _AUDIT = 0;
    uint8 private constant _APPEAL = 1;
    uint8 private constant _CONTEST = 2;
    uint8 private constant _CONFIRM = 3;
    uint8 private constant _ESCALATION = 4;

    /// @notice A call came to the settlement half directly instead of through its JobMarket.
    error NotThroughMarket();

    constructor(IERC20 token_, IStakeManager stakes_, IVerifierRegistry registry_, Config memory cfg)
        JobMarketBase(token_, stakes_, registry_, cfg)
    {
        _market = msg.sender;
    }

    modifier throughMarket() {
        if (address(this) != _market) revert NotThroughMarket();
        _;
    }

    /// @notice Appeal a verdict, once, within the appeal window: the worker appeals a failure;
    /// the client disputes a pass, escrowing a dispute bond equal to the audit fee (needs an
    /// allowance), which pays the appeal verifier if the pass is upheld and comes back if it is
    /// overturned. A second verifier then recomputes; without its verdict the job is void
    /// (neither paid nor slashed; a dispute bond goes to the protocol) and the silent verifiers
    /// lose part of their deposits.
    /// An appeal verdict that upheld the first (FailureUpheld, PassUpheld) is escalated the same
    /// way, by the party it goes against, within an appeal window after it (see `_escalate`).
    /// Works while paused: the window keeps running and its outcome waits at its end, so a pause
    /// must not take the appeal.
    function appeal(uint256 jobId, Job calldata job) external throughMarket nonReentrant {
        _checkRecord(jobId, job);
        Job memory j = job;
        if (j.state == JobState.FailureUpheld || j.state == JobState.PassUpheld) {
            _escalate(jobId, j);
            return;
        }
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
        _stageBlock[jobId] = block.number;
        emit AuditAppealed(jobId, msg.sender);
        if (j.state == JobState.Disputed && j.auditFee > 0) {
            _token.safeTransferFrom(msg.sender, address(this), j.auditFee);
        }
    }

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
        throughMarket
        nonReentrant
    {
        Job memory j = _openAudit(jobId, job, evidenceHash);
        // A proposed void replaced by this verdict: the proposer was wrong that the job cannot
        // be judged, and its bond goes to the fee recipient (not to anyone who could have
        // caused the replacement).
        address proposer = j.state == JobState.VoidProposed ? j.auditor : address(0);
        uint256 proposal = proposer == address(0) ? 0 : _verifierBond(j);
        j.auditor = msg.sender;
        j.resolvedAt = uint40(block.timestamp);
        emit AuditResolved(jobId, msg.sender, passed, evidenceHash, j.resolvedAt);
        j.state = passed ? JobState.AuditPassed : JobState.AuditFailed;
        _store(jobId, j);
        if (proposal > 0) _forfeitProposal(jobId, proposer, proposal);
        uint256 bond = _verifierBond(j);
        if (bond > 0) _stakes.lock(msg.sender, bond);
    }

    /// @notice Declare a job drawn for audit void: it cannot be judged, because the verifier's
    /// own recomputations under two numeric setups disagree under the job's tolerance, or a
    /// one-ulp change of its inputs moves its output beyond that tolerance (the program is
    /// unstable). No single seat decides a void: the first proposes it (VoidProposed), locking
    /// the job's reward plus audit fee of its stake, and a second seat, drawn excluding the
    /// worker, the client and the proposer, judges the job again within one audit window: its
    /// void confirms it (the proposer's bond comes back), its pass or failure replaces it as the
    /// job's first verdict (appealable as any; the proposer's bond goes to the fee recipient),
    /// and its silence leaves the job void unconfirmed, with nobody paid (the client gets its
    /// whole escrow back, the proposer its bond) and the silent seats punished. A confirmed
    /// void: nobody is at fault; the worker is not paid (its result could not be verified) and
    /// keeps its collateral, the client gets its reward back, and the proposer earns the audit
    /// fee for the recomputations that showed it (evidence: their output hashes). The
    /// confirming seat earns nothing for confirming, so confirming without recomputing gains it
    /// nothing over a verdict. Proposing unread loses the bond whenever the second seat is
    /// honest: a coalition holding the proposer and the confirmer of a job with weight share f
    /// gains at most f * (fee + reward) and loses (1 - f) * (reward + fee).
    function voidAudit(uint256 jobId, Job calldata job, bytes32 evidenceHash)
        external
        throughMarket
        nonReentrant
    {
        Job memory j = _openAudit(jobId, job, evidenceHash);
        if (j.state != JobState.VoidProposed) {
            j.auditor = msg.sender;
            j.resolvedAt = uint40(block.timestamp);
            j.state = JobState.VoidProposed;
            _store(jobId, j);
            _stageBlock[jobId] = block.number;
            emit VoidProposed(jobId, msg.sender, evidenceHash, j.resolvedAt);
            _stakes.lock(msg.sender, _verifierBond(j));
            return;
        }
        emit AuditVoided(jobId, msg.sender, evidenceHash);
        _stakes.unlock(j.auditor, _verifierBond(j));
        _payAuditFee(jobId, j.auditor, j.auditFee);
        _close(jobId);
        _credit(j.client, j.reward);
        emit JobRefunded(jobId, j.client, j.reward);
        if (j.collateral > 0) _stakes.unlock(j.worker, j.collateral);
    }

    /// @notice Post the verdict of an appeal (of a failure) or a dispute (of a pass), or of the
    /// contest of such a verdict. Must come from the verifier the draw assigns (never the job's
    /// worker or client, the verifier who gave the first verdict, or for a contest the one who
    /// overturned it). When the worker wins it is paid; when it loses it is slashed.
    /// No single seat overturns a verdict: an appeal verdict that upholds the first stands (two
    /// seats agree), one that overturns it is contested (AppealContested, DisputeContested) and
    /// a third seat, drawn excluding the worker, the client and both verifiers, decides within
    /// one audit window; its silence leaves the job void (nobody paid or slashed) and punishes
    /// it. The overturning verifier answers with its registry deposit: if the contest upholds
    /// the first verdict it forfeits the job's reward and collateral and the bond of the verdict
    /// it tried to overturn (the cover it was drawn for, `_cover`). The contest
    /// verifier is paid min(audit fee, reward) from the minority's bond either way, so its pay
    /// does not depend on which way it decides. Only where the draw has no third seat for the
    /// job (fewer than three candidates besides the worker and the client) is the appeal
    /// verdict final.
    /// An appeal verdict that upholds the first, where a third seat exists, waits an appeal window
    /// for the party it goes against to escalate it (FailureUpheld, PassUpheld, then `appeal`);
    /// unescalated it stands, as it would have at once. Escalated (FailureEscalated,
    /// PassEscalated), a third seat drawn excluding the worker, the client and both verifiers
    /// judges (see `_judgeEscalation`).
    /// Appealed failure: a worker who wins gets the overturned verifier's bond, and the appeal
    /// verifier its audit fee; a failure upheld on appeal pays the appeal verifier up to the
    /// audit fee from the slashed collateral (after the client's compensation). Disputed pass:
    /// upheld on appeal, the appeal verifier earns the client's dispute bond (upheld by a
    /// contest, the bond goes to the fee recipient); overturned, the appeal verifier earns the
    /// passing verifier's audit fee, and the client gets that verifier's bond and its dispute
    /// bond back.
    function resolveAppeal(uint256 jobId, Job calldata job, bool workerWins, bytes32 evidenceHash)
        external
        throughMarket
        nonReentrant
    {
        _checkRecord(jobId, job);
        JobState s = job.state;
        bool contest = s == JobState.AppealContested || s == JobState.DisputeContested;
        bool escalation = s == JobState.FailureEscalated || s == JobState.PassEscalated;
        bool dispute = s == JobState.Disputed || s == JobState.DisputeContested || s == JobState.PassEscalated;
        if (!contest && !escalation && !dispute && s != JobState.Appealed) revert InvalidJobState(jobId, s);
        if (evidenceHash == bytes32(0)) revert EmptyEvidence(jobId);
        address overturner = contest || escalation ? _appealSeat[jobId] : address(0);
        if (
            msg.sender == job.auditor || msg.sender == job.worker || msg.sender == job.client
                || msg.sender == overturner
        ) {
            revert VerifierConflict(jobId, msg.sender);
        }
        Job memory j = job;
        uint256 closesAt = _verdictClosesAt(j);
        if (block.timestamp > closesAt) revert WindowClosed(jobId, closesAt);
        _checkAssigned(jobId, j, closesAt);
        // The verdict under appeal says the worker loses (a failure) or wins (a pass).
        bool overturns = workerWins != dispute;
        if (escalation) {
            emit AppealResolved(jobId, msg.sender, workerWins, evidenceHash);
            _judgeEscalation(jobId, j, overturner, overturns);
            return;
        }
        if (!contest && _hasContestSeat(jobId, j, msg.sender)) {
            // Any appeal verdict a third seat may judge answers with its seat's deposit until
            // it stands: an overturn while its contest is open, an uphold while it may be
            // escalated and is.
            uint256 owed = _overturnCover(jobId, j);
            j.resolvedAt = uint40(block.timestamp);
            _appealSeat[jobId] = msg.sender;
            _appealCover[jobId] = owed;
            if (overturns) {
                j.state = dispute ? JobState.DisputeContested : JobState.AppealContested;
                _store(jobId, j);
                _stageBlock[jobId] = block.number;
                emit AppealContested(jobId, msg.sender, workerWins, evidenceHash, j.resolvedAt);
            } else {
                j.state = dispute ? JobState.PassUpheld : JobState.FailureUpheld;
                _store(jobId, j);
                emit AppealUpheld(jobId, msg.sender, workerWins, evidenceHash, j.resolvedAt);
            }
            _registry.reserve(msg.sender, jobId, owed);
            return;
        }
        emit AppealResolved(jobId, msg.sender, workerWins, evidenceHash);
        address appealVerifier = msg.sender;
        address contestVerifier = address(0);
        if (contest) {
            delete _appealSeat[jobId];
            j.state = dispute ? JobState.Disputed : JobState.Appealed; // settled as the appeal, below
            uint256 owed = _takeCover(jobId);
            if (overturns) {
                (appealVerifier, contestVerifier) = (overturner, msg.sender);
                _registry.release(overturner, jobId, owed);
            } else {
                appealVerifier = address(0);
                uint256 paid = _registry.forfeit(overturner, jobId, owed, _contestFee(j));
                _payAuditFee(jobId, msg.sender, paid);
            }
        }
        if (!workerWins) {
            _slash(jobId, j, appealVerifier, contestVerifier);
        } else if (dispute) {
            Pending memory p = _noPending();
            _passStands(jobId, j, p, appealVerifier);
            _flush(p);
        } else {
            _records[j.worker].auditsPassed += 1;
            Pending memory p = _noPending();
            _pay(jobId, j, p, true, false);
            _flush(p);
            _payAuditFee(jobId, appealVerifier, j.auditFee);
            _slashVerifier(jobId, j, j.worker, contestVerifier);
        }
    }

    /// @notice Settle one job whose outcome is decided: pay an unaudited job after the
    /// challenge window, void an audited job whose verdict did not come in time (silence never
    /// pays) and a disputed pass no appeal verdict confirmed, pay a pass that stands, slash a
    /// job whose failed audit stands. If the draw selects the job for audit, this records the
    /// draw (AuditDrawn) and the job waits for the verifier.
    function finalize(uint256 jobId, Job calldata job) external throughMarket nonReentrant {
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
        throughMarket
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

    /// @notice Whether the audit draw of a committed job can be taken yet, and its outcome.
    function auditStatus(uint256 jobId, Job calldata job) external view throughMarket returns (bool drawable, bool audited) {
        if (job.state != JobState.Committed) return (false, job.state == JobState.Audited);
        if (block.number <= uint256(job.committedBlock) + 1) return (false, false);
        return (true, _drawAudit(jobId, job));
    }

    /// @notice Payment state of `account`: credited and not withdrawn, total earned as a
    /// worker, total withdrawn, jobs completed.
    /// @notice The verifier the draw assigns to the job's pending verdict now: its audit
    /// (Committed and drawn, or Audited), its appeal or dispute (Appealed, Disputed), the contest
    /// of an overturning appeal verdict (AppealContested, DisputeContested), the confirmation
    /// of a void (VoidProposed) or an escalated uphold (FailureEscalated, PassEscalated). Only
    /// that verifier may post the verdict, and so only it earns the fee: a verifier cannot race
    /// the others to every fee by passing without recomputing. The draw's seed is the hash of
    /// the block after the commit for the audit, and after the transaction that opened the
    /// verdict for a later one (zero is returned until that block is mined); the candidates are the registry's
    /// seats joined by the commit block (`VerifierRegistry.assignee`) other than the job's worker and
    /// client (and, for an appeal, the verifier whose verdict is in question). Silence
    /// escalates: in the second half of the verdict's window the next candidate is assigned
    /// instead; a verdict still missing when the window closes leaves the job void and burns
    /// part of both silent verifiers' deposits. Zero when no candidate is left.
    function assignedVerifier(uint256 jobId, Job calldata job) external view throughMarket returns (address) {
        _checkRecord(jobId, job);
        // an upheld verdict waits for its party's escalation, not for a verdict
        if (job.state == JobState.FailureUpheld || job.state == JobState.PassUpheld) return address(0);
        Job memory j = job;
        return _assignee(jobId, j, _verdictClosesAt(j));
    }

    // ================================================================== internals

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
        if (s == JobState.Audited || s == JobState.VoidProposed) {
            uint256 closesAt = _verdictClosesAt(job);
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _punishSilence(jobId, job); // before the job closes: its draw reads the stage block
            _void(jobId, job, p, uint256(job.reward) + job.auditFee);
            if (s == JobState.VoidProposed) _stakes.unlock(job.auditor, _verifierBond(job));
            return true;
        }
        if (s == JobState.AuditPassed) {
            uint256 closesAt = uint256(job.resolvedAt) + _appealWindow;
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _passStands(jobId, job, p, address(0));
            return true;
        }
        if (
            s == JobState.Disputed || s == JobState.Appealed || s == JobState.AppealContested
                || s == JobState.DisputeContested
        ) {
            uint256 closesAt = _verdictClosesAt(job);
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _punishSilence(jobId, job);
            Job memory j = job;
            if (s == JobState.AppealContested || s == JobState.DisputeContested) {
                address overturner = _appealSeat[jobId];
                delete _appealSeat[jobId];
                j.state = s == JobState.DisputeContested ? JobState.Disputed : JobState.Appealed;
                _registry.release(overturner, jobId, _takeCover(jobId));
            }
            _voidUnjudged(jobId, j, p);
            return true;
        }
        if (s == JobState.AuditFailed) {
            uint256 closesAt = uint256(job.resolvedAt) + _appealWindow;
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _slash(jobId, job, address(0), address(0));
            return true;
        }
        if (s == JobState.FailureUpheld || s == JobState.PassUpheld) {
            uint256 closesAt = uint256(job.resolvedAt) + _appealWindow;
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _upheldStands(jobId, job, p);
            return true;
        }
        if (s == JobState.FailureEscalated || s == JobState.PassEscalated) {
            // The third seat was silent: silence changes no verdict, so the upheld one stands;
            // the escalation bond comes back (the silence is not the escalating party's) and
            // the silent seats lose part of their deposits.
            uint256 closesAt = _verdictClosesAt(job);
            if (block.timestamp <= closesAt) return _notYet(strict, jobId, closesAt + 1);
            _punishSilence(jobId, job);
            uint256 bond = _escalationBond(job);
            _upheldStands(jobId, job, p);
            if (s == JobState.PassEscalated) {
                _credit(job.client, bond);
                emit JobRefunded(jobId, job.client, bond);
            } else if (bond > 0) {
                _stakes.unlock(job.worker, bond);
            }
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
    /// client's dispute bond comes back. A contest verifier that confirmed the overturn is paid
    /// from the passing verifier's bond (`_slashVerifier`).
    function _slash(uint256 jobId, Job memory j, address appealVerifier, address contestVerifier) private {
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
            _slashVerifier(jobId, j, j.client, contestVerifier);
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
    /// goes to the appeal verifier who upheld the pass (to the fee recipient when a contest
    /// upheld it: the appeal verifier then tried to overturn it).
    function _passStands(uint256 jobId, Job memory j, Pending memory p, address disputeWinner) private {
        _records[j.worker].auditsPassed += 1;
        _pay(jobId, j, p, true, false);
        _payAuditFee(jobId, j.auditor, j.auditFee);
        uint256 bond = _verifierBond(j);
        if (bond > 0) _stakes.unlock(j.auditor, bond);
        if (j.state == JobState.Disputed) {
            if (disputeWinner != address(0)) _payAuditFee(jobId, disputeWinner, j.auditFee);
            else _credit(_globals.feeRecipient, j.auditFee);
        }
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
    function _punishSilence(uint256 jobId, Job memory j) private {
        uint8 stage = _stage(j.state);
        (bytes32 seed, address[4] memory excluded) = _drawInputs(jobId, j, stage);
        if (seed == bytes32(0)) return; // the draw is gone: who was assigned is unknown
        uint256 cover = _cover(jobId, j, stage, seed, excluded);
        _registry.punishSilence(seed, jobId, stage, j.committedBlock, j.committedAt, excluded, cover);
    }

    function _refundDisputeBond(uint256 jobId, Job memory j) private {
        if (j.auditFee == 0) return;
        _credit(j.client, j.auditFee);
        emit JobRefunded(jobId, j.client, j.auditFee);
    }

    /// @dev The bond of a verifier whose verdict was overturned goes to the party it wronged,
    /// less the contest verifier's pay when a contest confirmed the overturn.
    function _slashVerifier(uint256 jobId, Job memory j, address wronged, address contestVerifier) private {
        uint256 bond = _verifierBond(j);
        uint256 fee = contestVerifier == address(0) ? 0 : _contestFee(j); // <= reward <= bond
        _credit(wronged, bond - fee);
        emit VerifierSlashed(jobId, j.auditor, bond, wronged);
        _payAuditFee(jobId, contestVerifier, fee);
        _stakes.slash(j.auditor, bond, address(this));
    }

    /// @dev What a contest verifier earns, from the bond of the seat it finds against: the
    /// audit fee, at most the job's reward (every bond is at least the reward).
    function _contestFee(Job memory j) private pure returns (uint256) {
        return j.auditFee < j.reward ? j.auditFee : j.reward;
    }

    /// @dev Whether the draw has a seat to contest an appeal verdict given by `appealVerifier`.
    function _hasContestSeat(uint256 jobId, Job memory j, address appealVerifier) private view returns (bool) {
        (bytes32 seed, address[4] memory excluded) = _drawInputs(jobId, j, _CONTEST);
        excluded[3] = appealVerifier;
        return _registry.assignee(
            seed, jobId, _CONTEST, j.committedBlock, uint256(j.reward) + j.collateral, excluded, false
        ) != address(0);
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

    /// @dev The party an upheld verdict goes against (the worker of a failure, the client of a
    /// pass) escalates it within an appeal window after the uphold, with a bond of what a void
    /// would give it (`_escalationBond`): the worker locks it from its free stake, the client
    /// escrows it (needs an allowance). Two seats agree against it, so only a third seat
    /// disagreeing with both can help it, and then only to a void: a party escalating a true
    /// verdict gains the void's value when the draw gives its coalition the third seat and
    /// loses the same bond otherwise, so it loses below half the seats' weight.
    function _escalate(uint256 jobId, Job memory j) private {
        bool pass = j.state == JobState.PassUpheld;
        if (pass && msg.sender != j.client) revert NotJobClient(jobId, msg.sender);
        if (!pass && msg.sender != j.worker) revert NotAssignedWorker(jobId, msg.sender);
        uint256 closesAt = uint256(j.resolvedAt) + _appealWindow;
        if (block.timestamp > closesAt) revert WindowClosed(jobId, closesAt);
        uint256 bond = _escalationBond(j);
        j.state = pass ? JobState.PassEscalated : JobState.FailureEscalated;
        j.resolvedAt = uint40(block.timestamp);
        _store(jobId, j);
        _stageBlock[jobId] = block.number;
        emit AppealEscalated(jobId, msg.sender, bond, j.resolvedAt);
        if (bond == 0) return;
        if (pass) _token.safeTransferFrom(msg.sender, address(this), bond);
        else _stakes.lock(msg.sender, bond);
    }

    /// @dev At least what a void of the escalated job would move to the escalating party and a
    /// third seat of its coalition together: the worker's collateral (not slashed) and the
    /// third seat's pay (at most the reward; the worker bonds the reward, so that escalating is
    /// never free, even on a job with no collateral and no audit fee); the client's reward,
    /// its dispute bond and the third seat's pay (the audit fee, split between them). So a
    /// coalition escalating true verdicts loses below half the weight.
    function _escalationBond(Job memory j) private pure returns (uint256) {
        JobState s = j.state;
        if (s == JobState.PassUpheld || s == JobState.PassEscalated) {
            return uint256(j.reward) + 2 * uint256(j.auditFee);
        }
        return uint256(j.collateral) + j.reward;
    }

    /// @dev An upheld verdict that stands (unescalated, or its escalation unjudged): settled as
    /// the appeal verdict would have been at once, the upholding seat's deposit released.
    function _upheldStands(uint256 jobId, Job calldata job, Pending memory p) private {
        Job memory j = job;
        bool pass = j.state == JobState.PassUpheld || j.state == JobState.PassEscalated;
        address upholder = _appealSeat[jobId];
        delete _appealSeat[jobId];
        j.state = pass ? JobState.Disputed : JobState.Appealed;
        _registry.release(upholder, jobId, _takeCover(jobId));
        if (pass) _passStands(jobId, j, p, upholder);
        else _slash(jobId, j, upholder, address(0));
    }

    /// @dev The third seat's verdict on an escalated uphold. Agreeing (three seats against the
    /// escalating party): the upheld verdict stands, and the escalation bond pays the third seat
    /// min(audit fee, reward) and the rest the fee recipient. Disagreeing: two seats say one
    /// thing and the one that judged the first verdict without having given it says the other,
    /// so nothing is settled on the result: the job is void (the worker neither paid nor
    /// slashed, its collateral and bond unlocked; the client gets its reward, its dispute and
    /// escalation bonds back); the first verifier gets its bond back but not its fee, which pays
    /// the third seat (the rest to the client); and the upholding seat forfeits its reserved
    /// cover, burned, so that upholding without recomputing costs what a wrong overturn costs.
    function _judgeEscalation(uint256 jobId, Job memory j, address upholder, bool disagrees) private {
        bool pass = j.state == JobState.PassEscalated;
        uint256 bond = _escalationBond(j);
        delete _appealSeat[jobId];
        j.state = pass ? JobState.Disputed : JobState.Appealed; // settled as the appeal, below
        uint256 owed = _takeCover(jobId);
        uint256 fee = _contestFee(j);
        if (!disagrees) {
            _registry.release(upholder, jobId, owed);
            uint256 paid = fee < bond ? fee : bond;
            if (pass) {
                Pending memory p = _noPending();
                _passStands(jobId, j, p, upholder);
                _flush(p);
            } else {
                _slash(jobId, j, upholder, address(0));
                if (bond > 0) _stakes.slash(j.worker, bond, address(this));
            }
            _payAuditFee(jobId, msg.sender, paid);
            if (bond > paid) _credit(_globals.feeRecipient, bond - paid);
            return;
        }
        _registry.forfeit(upholder, jobId, owed, 0);
        _stakes.unlock(j.auditor, _verifierBond(j));
        _payAuditFee(jobId, msg.sender, fee);
        uint256 refund = uint256(j.reward) + j.auditFee - fee;
        if (pass) refund += bond + j.auditFee; // the escalation bond and the dispute bond
        Pending memory v = _noPending();
        _void(jobId, j, v, refund);
        _flush(v);
        if (!pass && bond > 0) _stakes.unlock(j.worker, bond);
    }

    function _noPending() private pure returns (Pending memory) {
        return Pending(address(0), 0, 0, 0, address(0), 0, 0);
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

    /// @dev Checks a verdict on a drawn job, or on a proposed void (caller, state, draw,
    /// window, evidence) and returns
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
        } else if (j.state != JobState.Audited && j.state != JobState.VoidProposed) {
            revert InvalidJobState(jobId, j.state);
        }
        uint256 closesAt = _verdictClosesAt(j);
        if (block.timestamp > closesAt) revert WindowClosed(jobId, closesAt);
        _checkAssigned(jobId, j, closesAt);
    }

    /// @dev The stake a verifier locks behind a verdict: the job's reward behind a failure,
    /// the reward and audit fee behind a void proposal, `_PASS_BOND_REWARDS` rewards behind a
    /// pass. A pass given without recomputing saves the
    /// verifier about one job's compute; a canary (a job whose result is known to be junk,
    /// disputed by its client once passed) must cost it far more, so that canaries on a few
    /// percent of audits make lazy passes lose money (README, trust model; `mesh sim`).
    function _verifierBond(Job memory j) private pure returns (uint256) {
        JobState s = j.state;
        if (
            s == JobState.AuditPassed || s == JobState.Disputed || s == JobState.DisputeContested
                || s == JobState.PassUpheld || s == JobState.PassEscalated
        ) {
            return uint256(j.reward) * _PASS_BOND_REWARDS;
        }
        if (s == JobState.VoidProposed) return uint256(j.reward) + j.auditFee;
        return j.reward;
    }

    /// @dev A proposed void that a second seat replaced with a verdict: the proposer's bond
    /// goes to the fee recipient.
    function _forfeitProposal(uint256 jobId, address proposer, uint256 bond) private {
        address recipient = _globals.feeRecipient;
        _credit(recipient, bond);
        emit VerifierSlashed(jobId, proposer, bond, recipient);
        _stakes.slash(proposer, bond, address(this));
    }

    function _payAuditFee(uint256 jobId, address to, uint256 amount) private {
        if (amount == 0) return;
        _credit(to, amount);
        emit AuditFeePaid(jobId, to, amount);
    }

    /// @dev When the window of the job's pending verdict closes: the audit's (the challenge
    /// and audit windows after the commit), an appeal's or dispute's (the appeal and audit
    /// windows after the first verdict), a contest's or a void confirmation's (an audit window
    /// after the verdict it answers).
    function _verdictClosesAt(Job memory j) private view returns (uint256) {
        JobState s = j.state;
        if (s == JobState.Appealed || s == JobState.Disputed) {
            return uint256(j.resolvedAt) + _appealWindow + _auditWindow;
        }
        if (
            s == JobState.AppealContested || s == JobState.DisputeContested || s == JobState.VoidProposed
                || s == JobState.FailureEscalated || s == JobState.PassEscalated
        ) {
            return uint256(j.resolvedAt) + _auditWindow;
        }
        return uint256(j.committedAt) + _challengeWindow + _auditWindow;
    }

    /// @dev Which verdict the job waits for (the registry draw's `stage`).
    function _stage(JobState s) private pure returns (uint8) {
        if (s == JobState.Appealed || s == JobState.Disputed) return _APPEAL;
        if (s == JobState.AppealContested || s == JobState.DisputeContested) return _CONTEST;
        if (s == JobState.VoidProposed) return _CONFIRM;
        if (s == JobState.FailureEscalated || s == JobState.PassEscalated) return _ESCALATION;
        return _AUDIT;
    }

    function _checkAssigned(uint256 jobId, Job memory j, uint256 closesAt) private view {
        uint256 seedBlock = _seedBlock(jobId, j, _stage(j.state));
        if (block.number <= seedBlock) revert AuditDrawPending(jobId, seedBlock + 1);
        address assigned = _assignee(jobId, j, closesAt);
        if (msg.sender != assigned) revert NotAssignedVerifier(jobId, msg.sender, assigned);
    }

    /// @dev See `assignedVerifier`: the registry's draw among the seats joined by the commit,
    /// escalated to the second candidate once the window is in its second half. Zero while the
    /// draw's seed block is not mined.
    function _assignee(uint256 jobId, Job memory j, uint256 closesAt) private view returns (address) {
        uint8 stage = _stage(j.state);
        if (block.number <= _seedBlock(jobId, j, stage)) return address(0);
        (bytes32 seed, address[4] memory excluded) = _drawInputs(jobId, j, stage);
        // a later verdict's seed out of reach: a zero seed would be known in advance, so
        // nobody is assigned (the verdict never comes, and its window's end voids the job)
        if (seed == bytes32(0) && stage != _AUDIT) return address(0);
        bool escalated = block.timestamp + _auditWindow / 2 > closesAt;
        uint256 cover = _cover(jobId, j, stage, seed, excluded);
        return _registry.assignee(seed, jobId, stage, j.committedBlock, cover, excluded, escalated);
    }

    /// @dev What a seat's deposit must cover to be drawn for a verdict of `stage`: the job's
    /// reward and collateral (what its silence burns, more than silence could save a cheater);
    /// for an appeal, also the bond of the verdict under appeal, since an appeal verdict that
    /// overturns it and that the contest finds wrong forfeits all of this. Sparing a cheater
    /// (its pay, its collateral, the failing verifier's bond) or robbing an honest pass (the
    /// reward, the pass bond) then gains a coalition no more than it risks, so a coalition
    /// drawn as the third seat less than half the time loses money by trying. Where no
    /// candidate's weight covers that much, the appeal is drawn on the reward and collateral
    /// alone (as the audit was), so an appeal always has a seat when its audit had one; the
    /// overturner then forfeits at most its deposit (README, trust model).
    function _cover(uint256 jobId, Job memory j, uint8 stage, bytes32 seed, address[4] memory excluded)
        private
        view
        returns (uint256 cover)
    {
        cover = uint256(j.reward) + j.collateral;
        if (stage != _APPEAL) return cover;
        uint256 full = cover + _verifierBond(j);
        if (_registry.assignee(seed, jobId, stage, j.committedBlock, full, excluded, false) != address(0)) {
            cover = full;
        }
    }

    /// @dev What an overturn of `j`'s verdict (`j` in Appealed or Disputed) answers for: the
    /// appeal's cover, reserved from the overturner's deposit until the contest ends.
    function _overturnCover(uint256 jobId, Job memory j) private view returns (uint256) {
        (bytes32 seed, address[4] memory excluded) = _drawInputs(jobId, j, _APPEAL);
        return _cover(jobId, j, _APPEAL, seed, excluded);
    }

    /// @dev What the appeal seat's deposit reserved for its verdict (stored when it was
    /// reserved, so that exactly that is released or forfeited whatever seats changed since).
    function _takeCover(uint256 jobId) private returns (uint256 owed) {
        owed = _appealCover[jobId];
        delete _appealCover[jobId];
    }

    /// @dev The verdict draw's seed (`_seedBlock`'s hash) and the parties it may not assign: the
    /// worker and the client; after a verdict, the verifier who gave it (or proposed the void);
    /// in a contest, also the verifier who overturned it; in an escalation, the one who upheld it.
    function _drawInputs(uint256 jobId, Job memory j, uint8 stage)
        private
        view
        returns (bytes32, address[4] memory)
    {
        address judged = stage == _AUDIT ? address(0) : j.auditor;
        address appealSeat = stage == _CONTEST || stage == _ESCALATION ? _appealSeat[jobId] : address(0);
        return (_blockHashOf(_seedBlock(jobId, j, stage)), [j.worker, j.client, judged, appealSeat]);
    }

    /// @dev The block whose hash seeds a verdict's draw: for the audit, the block after the
    /// commit; for every later verdict, the block after the transaction that opened it (the
    /// appeal or dispute, the overturn, the void's proposal, the escalation). Neither the party
    /// that sends that transaction nor any seat can know the draw when deciding to send it,
    /// so nobody appeals, overturns, proposes or escalates only when an accomplice is drawn.
    function _seedBlock(uint256 jobId, Job memory j, uint8 stage) private view returns (uint256) {
        return (stage == _AUDIT ? uint256(j.committedBlock) : _stageBlock[jobId]) + 1;
    }
}
