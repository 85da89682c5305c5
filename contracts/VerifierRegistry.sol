// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IVerifierRegistry} from "./interfaces/IVerifierRegistry.sol";

/// @title VerifierRegistry
/// @notice Stake-weighted, accountable, open verifier membership. Anyone may take a seat with a
/// deposit of at least the minimum (`join`); nobody admits or vouches for it. A seat is a
/// candidate for the verdicts the job market's draw assigns (an audit, an appeal or dispute,
/// the contest of an appeal verdict, the confirmation of a void) of every job committed from
/// its joining block on, with a weight of one unit per minimum deposit, and its deposit
/// answers for its silence and for an overturn the contest finds wrong. Nobody can revoke a
/// seat; it leaves by itself or when a burn leaves its deposit below its weight's cover.
/// Why admission can be open: no verdict of a single seat is final against an honest party.
/// A failure or a pass can be appealed; an appeal verdict that overturns it goes to a third
/// seat, and the seat in the minority loses its bond (the job market, `resolveAppeal`); a void
/// must be confirmed by a second seat (`voidAudit`). A seat that joins to cheat is drawn in
/// proportion to its weight, so a coalition must hold the seats of two stages of the same job
/// to move money, and loses its bond whenever the other seat is honest.
/// @dev Steering. The candidates for a job's verdicts are the seats joined in or before its
/// commit block and not left by then. The draw's seed is the hash of the block after the
/// commit for the audit, and after the transaction that opened it for a later verdict (the job
/// market's `_seedBlock`), so a seat joined once a seed is known is no candidate, and a seat
/// that leaves stays one for every job committed before it left: neither joining nor leaving
/// can move a known draw, and no waiting period is needed for that. The weight is fixed at
/// join. The winner is the lowest keccak256(keccak256(seed, jobId, appealed), verifier) / units
/// (rendezvous hashing), so the order of seats does not matter either.
/// Cover. A seat is a candidate only for jobs whose reward plus collateral its weight covers
/// (units * minimum deposit): silence on a job burns that much of its deposit, more than the
/// collateral a cheater could save if both assigned seats colluded in silence. A burn that
/// leaves the deposit below its weight's cover makes the seat leave (for jobs committed later,
/// as a leave does), so its weight never promises more than it holds.
/// Accountability. A deposit stays bound for `exitDelay` after its seat left, which exceeds
/// every verdict window (checked by the job market at deployment), so the job market can still
/// burn part of it for a verdict the verifier was assigned and never gave.
/// Reservation. An overturn reserves what it would forfeit (`reserve`) until its contest ends,
/// and an overturn the unreserved deposit cannot cover is refused: a seat overturning many jobs
/// at once answers for each, so a coalition's concurrent attempts cannot share one deposit.
/// Reservations never change who is drawn (eligibility reads only the weight fixed at join),
/// so they cannot steer a draw; a seat short of unreserved deposit tops up (`topUp`).
/// Solvency: token.balanceOf(this) == sum of deposits.
contract VerifierRegistry is AccessControl, ReentrancyGuardTransient, IVerifierRegistry {
    using SafeERC20 for IERC20;

    /// @dev One slot: the seat's verifier, its weight, and the blocks of the jobs it is a
    /// candidate for (committed in `fromBlock` or later, and before `untilBlock`).
    struct Seat {
        address verifier;
        uint16 units;
        uint40 fromBlock;
        uint40 untilBlock;
    }

    /// @notice Seats the draw walks at most (every verdict reads each seat once).
    uint256 public constant MAX_SEATS = 64;
    /// @dev Where burned deposits go: nobody holds its key, so nobody gains from a punishment.
    address private constant _BURN = 0x000000000000000000000000000000000000dEaD;
    uint40 private constant _NEVER = type(uint40).max;

    IERC20 private immutable _token;
    uint256 private immutable _minDeposit;
    uint256 private immutable _exitDelay;
    address private _jobMarket;

    Seat[] private _seats;
    mapping(address verifier => uint256 slot) private _slot; // index + 1
    mapping(address verifier => uint256) private _deposit;
    mapping(address verifier => uint256) private _leftAt;
    mapping(address verifier => uint256) private _reserved;

    /// @param token_ the MeshCredit token
    /// @param admin may set the job market address, once (and nothing else)
    /// @param minDeposit_ the deposit of one unit of weight
    /// @param exitDelay_ seconds a deposit stays bound after its seat left
    constructor(IERC20 token_, address admin, uint256 minDeposit_, uint256 exitDelay_) {
        if (address(token_) == address(0) || admin == address(0)) revert ZeroAddress();
        if (minDeposit_ == 0) revert DepositTooSmall(0, 1);
        _token = token_;
        _minDeposit = minDeposit_;
        _exitDelay = exitDelay_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Set the job market contract. Only the admin, only once.
    function setJobMarket(address jobMarket_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_jobMarket != address(0)) revert JobMarketAlreadySet(_jobMarket);
        if (jobMarket_ == address(0)) revert ZeroAddress();
        _jobMarket = jobMarket_;
    }

    // ---------------------------------------------------------------- members

    /// @notice Take a seat with a deposit of `amount` (needs an allowance): a candidate for the
    /// verdicts of jobs committed from this block on.
    function join(uint256 amount) external nonReentrant {
        _join(msg.sender, msg.sender, amount);
    }

    /// @notice The admin pays the deposit of a seat for `verifier` (a deployment bootstrapping
    /// its first verifiers). The seat and the deposit are the verifier's.
    function joinFor(address verifier, uint256 amount) external onlyRole(DEFAULT_ADMIN_ROLE) nonReentrant {
        if (verifier == address(0)) revert ZeroAddress();
        _join(msg.sender, verifier, amount);
    }

    /// @notice Add `amount` to the caller's deposit (needs an allowance). The weight stays what
    /// it was at join (a draw already seeded must not move); the deposit answers for more
    /// overturns at once (`reserve`) and for more silence before the seat must leave.
    function topUp(uint256 amount) external nonReentrant {
        if (_slot[msg.sender] == 0) revert NotMember(msg.sender);
        if (amount == 0) revert DepositTooSmall(0, 1);
        uint256 deposit = _deposit[msg.sender] + amount;
        _deposit[msg.sender] = deposit;
        emit VerifierToppedUp(msg.sender, amount, deposit);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Stop being a candidate for jobs committed from the next block on. The seat stays
    /// a candidate for the jobs committed before, and the deposit stays bound for the exit
    /// delay.
    function leave() external {
        uint256 slot = _slot[msg.sender];
        if (slot == 0) revert NotMember(msg.sender);
        Seat storage s = _seats[slot - 1];
        if (s.untilBlock != _NEVER) revert AlreadyLeaving(msg.sender);
        s.untilBlock = uint40(block.number + 1);
        _leftAt[msg.sender] = block.timestamp;
        emit VerifierLeaving(msg.sender, block.number + 1, block.timestamp + _exitDelay);
    }

    /// @notice Take the deposit back once the exit delay after leaving has passed (giving up
    /// the seat).
    function withdraw() external nonReentrant returns (uint256 amount) {
        uint256 slot = _slot[msg.sender];
        if (slot == 0) revert NotMember(msg.sender);
        uint256 releaseAt = _seats[slot - 1].untilBlock == _NEVER ? _NEVER : _leftAt[msg.sender] + _exitDelay;
        if (block.timestamp < releaseAt) revert StillBound(msg.sender, releaseAt);
        if (_reserved[msg.sender] > 0) revert OverturnsPending(msg.sender, _reserved[msg.sender]);
        Seat memory last = _seats[_seats.length - 1];
        _seats[slot - 1] = last;
        _slot[last.verifier] = slot;
        _seats.pop();
        delete _slot[msg.sender];
        delete _leftAt[msg.sender];
        amount = _deposit[msg.sender];
        delete _deposit[msg.sender];
        emit VerifierWithdrawn(msg.sender, amount);
        if (amount > 0) _token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- job market

    /// @inheritdoc IVerifierRegistry
    function assignee(
        bytes32 seed,
        uint256 jobId,
        uint8 stage,
        uint256 committedBlock,
        uint256 cover,
        address[4] calldata excluded,
        bool escalated
    ) external view returns (address) {
        (address first, address second) = _candidates(_drawKey(seed, jobId, stage), committedBlock, cover, excluded);
        return escalated && second != address(0) ? second : first;
    }

    /// @inheritdoc IVerifierRegistry
    function punishSilence(
        bytes32 seed,
        uint256 jobId,
        uint8 stage,
        uint256 committedBlock,
        uint256 committedAt,
        address[4] calldata excluded,
        uint256 penalty
    ) external nonReentrant {
        if (msg.sender != _jobMarket) revert CallerNotJobMarket(msg.sender);
        // A seat that was a candidate left after the commit, so its deposit is bound at least
        // until committedAt + exitDelay; past that it may be gone.
        if (block.timestamp >= committedAt + _exitDelay) return;
        (address first, address second) = _candidates(_drawKey(seed, jobId, stage), committedBlock, penalty, excluded);
        uint256 burned = _punish(first, jobId, penalty) + _punish(second, jobId, penalty);
        if (burned > 0) _token.safeTransfer(_BURN, burned);
    }

    /// @inheritdoc IVerifierRegistry
    function reserve(address verifier, uint256 jobId, uint256 amount) external {
        if (msg.sender != _jobMarket) revert CallerNotJobMarket(msg.sender);
        uint256 free = freeDeposit(verifier);
        if (free < amount) revert DepositReserved(verifier, free, amount);
        uint256 reserved = _reserved[verifier] + amount;
        _reserved[verifier] = reserved;
        emit DepositReservedFor(verifier, jobId, amount, reserved);
    }

    /// @inheritdoc IVerifierRegistry
    function release(address verifier, uint256 jobId, uint256 amount) external {
        if (msg.sender != _jobMarket) revert CallerNotJobMarket(msg.sender);
        _release(verifier, jobId, amount);
    }

    /// @inheritdoc IVerifierRegistry
    function forfeit(address verifier, uint256 jobId, uint256 amount, uint256 pay)
        external
        nonReentrant
        returns (uint256 paid)
    {
        if (msg.sender != _jobMarket) revert CallerNotJobMarket(msg.sender);
        _release(verifier, jobId, amount);
        uint256 taken = _slot[verifier] == 0 ? 0 : _punish(verifier, jobId, amount);
        paid = pay < taken ? pay : taken;
        if (taken > paid) _token.safeTransfer(_BURN, taken - paid);
        if (paid > 0) _token.safeTransfer(msg.sender, paid);
    }

    // ---------------------------------------------------------------- views

    function token() external view returns (IERC20) {
        return _token;
    }

    function jobMarket() external view returns (address) {
        return _jobMarket;
    }

    /// @inheritdoc IVerifierRegistry
    function terms() external view returns (uint256 minDeposit, uint256 exitDelay) {
        return (_minDeposit, _exitDelay);
    }

    /// @notice Every seat, in storage order (the order does not matter to the draw).
    function seats() external view returns (Seat[] memory) {
        return _seats;
    }

    /// @notice The seat of `verifier` (all zero when it holds none), its deposit, and when the
    /// deposit is released (zero while the seat has not left).
    function seatOf(address verifier) external view returns (Seat memory seat, uint256 deposit, uint256 releaseAt) {
        uint256 slot = _slot[verifier];
        if (slot != 0) seat = _seats[slot - 1];
        uint256 left = _leftAt[verifier];
        return (seat, _deposit[verifier], left == 0 ? 0 : left + _exitDelay);
    }

    /// @notice What of `verifier`'s deposit no overturn has reserved: an overturn needs this
    /// to cover what it would forfeit.
    function freeDeposit(address verifier) public view returns (uint256) {
        uint256 held = _deposit[verifier];
        uint256 reserved = _reserved[verifier];
        return held > reserved ? held - reserved : 0;
    }

    /// @notice What of `verifier`'s deposit answers for overturns whose contests are open.
    function reservedOf(address verifier) external view returns (uint256) {
        return _reserved[verifier];
    }

    // ---------------------------------------------------------------- internals

    function _release(address verifier, uint256 jobId, uint256 amount) private {
        uint256 reserved = _reserved[verifier];
        uint256 released = amount < reserved ? amount : reserved;
        if (released == 0) return;
        _reserved[verifier] = reserved - released;
        emit DepositReleased(verifier, jobId, released, reserved - released);
    }

    /// @dev The lowest and second lowest scores among the candidates for a job committed in
    /// `committedBlock` whose reward plus collateral is `cover`.
    function _candidates(
        bytes32 key,
        uint256 committedBlock,
        uint256 cover,
        address[4] calldata excluded
    ) private view returns (address first, address second) {
        uint256 firstScore = type(uint256).max;
        uint256 secondScore = type(uint256).max;
        uint256 n = _seats.length;
        for (uint256 i = 0; i < n; ++i) {
            Seat memory s = _seats[i];
            if (s.fromBlock > committedBlock || s.untilBlock <= committedBlock) continue;
            if (uint256(s.units) * _minDeposit < cover) continue;
            address v = s.verifier;
            if (v == excluded[0] || v == excluded[1] || v == excluded[2] || v == excluded[3]) continue;
            uint256 score = uint256(keccak256(abi.encode(key, v))) / s.units;
            if (first == address(0) || score < firstScore || (score == firstScore && v < first)) {
                (second, secondScore) = (first, firstScore);
                (first, firstScore) = (v, score);
            } else if (second == address(0) || score < secondScore || (score == secondScore && v < second)) {
                (second, secondScore) = (v, score);
            }
        }
    }

    /// @dev The draw's key for one verdict: each seat's score is keccak256(key, seat) / units.
    function _drawKey(bytes32 seed, uint256 jobId, uint8 stage) private pure returns (bytes32) {
        return keccak256(abi.encode(seed, jobId, stage));
    }

    function _punish(address verifier, uint256 jobId, uint256 penalty) private returns (uint256 burned) {
        if (verifier == address(0)) return 0;
        uint256 held = _deposit[verifier];
        burned = penalty < held ? penalty : held;
        if (burned == 0) return 0;
        _deposit[verifier] = held - burned;
        emit VerifierPunished(verifier, jobId, burned);
        // A deposit below its weight's cover: the seat leaves (for jobs committed from the next
        // block on, as a leave would, so no draw already seeded moves).
        Seat storage s = _seats[_slot[verifier] - 1];
        if (held - burned < uint256(s.units) * _minDeposit && s.untilBlock == _NEVER) {
            s.untilBlock = uint40(block.number + 1);
            _leftAt[verifier] = block.timestamp;
            emit VerifierLeaving(verifier, block.number + 1, block.timestamp + _exitDelay);
        }
    }

    /// @dev A seat for `verifier` with a deposit of `amount` paid by `payer`.
    function _join(address payer, address verifier, uint256 amount) private {
        if (_slot[verifier] != 0 || _deposit[verifier] != 0) revert AlreadyMember(verifier);
        if (amount < _minDeposit) revert DepositTooSmall(amount, _minDeposit);
        if (_seats.length >= MAX_SEATS) revert RegistryFull(MAX_SEATS);
        uint256 units = amount / _minDeposit;
        if (units > type(uint16).max) units = type(uint16).max;
        _deposit[verifier] = amount;
        _seats.push(Seat(verifier, uint16(units), uint40(block.number), _NEVER));
        _slot[verifier] = _seats.length;
        emit VerifierJoined(verifier, amount, units, block.number);
        _token.safeTransferFrom(payer, address(this), amount);
    }
}
