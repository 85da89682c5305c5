// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Where a job is in its life. Terminal states: Finalized, Slashed, Refunded.
/// Posted -> Assigned -> Committed -> (Audited (-> VoidProposed) -> AuditFailed (-> Appealed
///        (-> AppealContested)) | AuditPassed (-> Disputed (-> DisputeContested)))
///        -> Finalized | Slashed | Refunded. Every verdict can be appealed by the party it goes
/// against (a failure by the worker, a pass by the client: a dispute); it stands when its
/// appeal window closes unappealed or the appeal verifier upholds it. An appeal verdict that
/// overturns it is contested: a third verifier decides. A void is proposed by one verifier and
/// confirmed, or replaced by a verdict, by a second. An appeal verdict that upholds the first
/// (FailureUpheld, PassUpheld) may be escalated by the party it goes against (FailureEscalated,
/// PassEscalated): a third verifier confirms it or disagrees, and then the job is void. An
/// audited job whose verdict never came is void (Refunded): silence never pays.
enum JobState {
    None,
    Posted,
    Assigned,
    Committed,
    Audited,
    AuditFailed,
    Appealed,
    Finalized,
    Slashed,
    Refunded,
    AuditPassed,
    Disputed,
    AppealContested,
    DisputeContested,
    VoidProposed,
    FailureUpheld,
    PassUpheld,
    FailureEscalated,
    PassEscalated
}

/// @notice The full record of one job. The contract stores only keccak256(abi.encode(job)) per
/// open job id; every call that acts on a job passes the record, which the contract checks
/// against the stored digest. The record is rebuilt off chain from the job's events (each event
/// carries what it changed), so the chain stays the only source of truth at one storage slot
/// per open job. When a job ends (Finalized, Slashed, Refunded) its slot is cleared: jobDigest
/// reads zero and the events alone hold its final record.
struct Job {
    address client;
    address worker;
    address auditor;
    uint96 reward;
    uint96 auditFee;
    uint96 collateral;
    uint40 deadline;
    uint40 leaseExpiry;
    uint40 committedAt;
    uint40 committedBlock;
    uint40 resolvedAt;
    uint16 auditBps;
    JobState state;
    bytes32 specHash;
    bytes32 resultHash;
}

/// @notice What a client chooses when posting a job.
/// @param specHash sha256 of the job spec (program, inputs, tolerance policy, device)
/// @param reward paid to the worker on success (less the protocol fee)
/// @param auditFee paid to the verifier if the job is audited, refunded to the client otherwise
/// @param collateral stake the worker must lock while it holds the job
/// @param deadline latest time a result may be committed; after it the client may reclaim
/// @param auditBps the client's minimum audit probability, in basis points
struct JobParams {
    bytes32 specHash;
    uint96 reward;
    uint96 auditFee;
    uint96 collateral;
    uint40 deadline;
    uint16 auditBps;
}

/// @notice EIP-712 assignment ticket signed by an ASSIGNER_ROLE key (the market). It binds a
/// list of jobs to one worker until `leaseExpiry`; only that worker can submit it.
struct AssignTicket {
    address worker;
    uint256[] jobIds;
    uint16 auditBps;
    uint40 leaseExpiry;
}
