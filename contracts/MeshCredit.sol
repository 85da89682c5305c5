// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IMeshCredit} from "./interfaces/IMeshCredit.sol";

/// @title MeshCredit
/// @notice The credit token of the meshcompute marketplace: clients pay in it, providers stake it.
/// @dev ERC20 with EIP-2612 permit so a client can post a job in one transaction. Minting is
/// role-gated. A rate-limited faucet exists for development chains only: it is enabled when the
/// contract is deployed on chain id 31337 (anvil) or when the deployer passes `enableFaucet`.
contract MeshCredit is ERC20, ERC20Permit, AccessControl, IMeshCredit {
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @notice Chain id of local development chains (anvil, hardhat).
    uint256 public constant DEV_CHAIN_ID = 31337;

    bool private immutable _faucetEnabled;
    uint256 private immutable _faucetAmount;
    uint256 private immutable _faucetCooldown;
    mapping(address account => uint256 timestamp) private _lastFaucetDrip;

    /// @param admin receives DEFAULT_ADMIN_ROLE and MINTER_ROLE
    /// @param enableFaucet turn the faucet on even outside chain id 31337 (public testnets)
    /// @param faucetAmount_ tokens (in wei units) per faucet drip
    /// @param faucetCooldown_ seconds an address must wait between two drips
    constructor(address admin, bool enableFaucet, uint256 faucetAmount_, uint256 faucetCooldown_)
        ERC20("Mesh Credit", "MESH")
        ERC20Permit("Mesh Credit")
    {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
        _faucetEnabled = enableFaucet || block.chainid == DEV_CHAIN_ID;
        _faucetAmount = faucetAmount_;
        _faucetCooldown = faucetCooldown_;
    }

    /// @notice Mint `amount` credits to `to`. Only MINTER_ROLE.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }

    /// @notice Drip `faucetAmount` credits to the caller, at most once per cooldown.
    function faucet() external {
        if (!_faucetEnabled) revert FaucetDisabled();
        uint256 last = _lastFaucetDrip[msg.sender];
        if (last != 0 && block.timestamp < last + _faucetCooldown) {
            revert FaucetCooldown(msg.sender, last + _faucetCooldown);
        }
        _lastFaucetDrip[msg.sender] = block.timestamp;
        _mint(msg.sender, _faucetAmount);
        emit FaucetDripped(msg.sender, _faucetAmount);
    }

    /// @notice Whether the faucet can be used on this deployment.
    function faucetEnabled() external view returns (bool) {
        return _faucetEnabled;
    }

    /// @notice Credits per faucet drip.
    function faucetAmount() external view returns (uint256) {
        return _faucetAmount;
    }

    /// @notice Seconds between two drips to one address.
    function faucetCooldown() external view returns (uint256) {
        return _faucetCooldown;
    }

    /// @notice Earliest time `account` may use the faucet again (0 when it never did).
    function nextFaucetTime(address account) external view returns (uint256) {
        uint256 last = _lastFaucetDrip[account];
        return last == 0 ? 0 : last + _faucetCooldown;
    }
}
