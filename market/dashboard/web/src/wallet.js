// The browser wallet (any EIP-1193 provider at window.ethereum). Every transaction is encoded
// with viem from the ABIs the market serves (/dashboard/api/contracts: the artifacts the Python
// code uses), shown for confirmation, then sent with eth_sendTransaction.
import { encodeFunctionData } from "viem";
import { getJSON } from "./api.js";
import { formatMesh, h } from "./dom.js";
import { notice, wallet } from "./state.js";

const NAMES = {
  token: "MeshCredit", stake_manager: "StakeManager", job_market: "JobMarket",
  verifier_registry: "VerifierRegistry",
};

export class WalletError extends Error {}

/** A wallet's error as a sentence for the page (EIP-1193 codes; never a stack trace). */
export function walletMessage(err) {
  if (err instanceof WalletError) return err.message;
  const code = err && typeof err === "object" ? err.code : undefined;
  if (code === 4001) return "You rejected the request in your wallet: nothing was sent.";
  if (code === 4100) return "The wallet has not authorized this site: connect it first.";
  if (code === 4900 || code === 4901) return "The wallet is disconnected from the chain.";
  const text = err && typeof err.message === "string" ? err.message.split("\n")[0] : String(err);
  return `The wallet refused the request: ${text}`;
}

export async function contracts() {
  if (!wallet.contracts) wallet.contracts = await getJSON("contracts");
  return wallet.contracts;
}

export async function connect() {
  const provider = window.ethereum;
  if (!provider || typeof provider.request !== "function") {
    throw new WalletError("No browser wallet found: install an EIP-1193 wallet (such as MetaMask) to send transactions.");
  }
  const accounts = await provider.request({ method: "eth_requestAccounts" });
  if (!accounts || !accounts.length) throw new WalletError("The wallet shared no account.");
  wallet.provider = provider;
  wallet.account = accounts[0];
  await checkChain();
  return wallet.account;
}

export function sameAddress(a, b) {
  return Boolean(a && b && a.toLowerCase() === b.toLowerCase());
}

async function checkChain() {
  const expected = Number((await contracts()).chain_id);
  const hex = await wallet.provider.request({ method: "eth_chainId" });
  const actual = Number(BigInt(hex));
  if (actual !== expected) {
    throw new WalletError(`Your wallet is on chain ${actual}, but this market runs on chain ${expected}. `
      + "Switch the wallet's network and try again; nothing was sent.");
  }
}

/** Turn API values (decimal strings) into what viem encodes, guided by the ABI's types. */
function coerce(param, value) {
  if (param.type.endsWith("]")) return value.map((v) => coerce({ ...param, type: param.type.replace(/\[\d*\]$/, "") }, v));
  if (param.type === "tuple") {
    return param.components.map((c, i) => coerce(c, Array.isArray(value) ? value[i] : value[c.name]));
  }
  if (/^u?int\d*$/.test(param.type)) return BigInt(value);
  if (param.type === "bool") return value === true || value === "true";
  return value;
}

function describe(param, value) {
  if (param.type === "tuple") {
    return `(${param.components.map((c, i) => `${c.name}: ${describe(c, value[i])}`).join(", ")})`;
  }
  if (typeof value === "bigint" && /amount|value/i.test(param.name || "") && value >= 10n ** 12n) {
    return `${value} wei (${formatMesh(value)} MESH)`;
  }
  return String(value);
}

/** Ask the user to confirm a call; resolves true (Confirm) or false (Cancel). */
function confirmDialog(contractName, address, fn, lines) {
  const modal = document.getElementById("confirm");
  return new Promise((resolve) => {
    const done = (answer) => {
      modal.hidden = true;
      modal.replaceChildren();
      resolve(answer);
    };
    modal.replaceChildren(h("div", { class: "dialog", role: "dialog", "aria-modal": "true" },
      h("h2", {}, "Confirm transaction"),
      h("dl", {},
        h("dt", {}, "contract"), h("dd", { "data-testid": "confirm-contract" }, `${contractName} `, h("code", {}, address)),
        h("dt", {}, "function"), h("dd", { "data-testid": "confirm-function" }, fn),
        h("dt", {}, "arguments"),
        h("dd", { "data-testid": "confirm-args" }, lines.length ? h("ul", {}, lines.map((l) => h("li", {}, l))) : "none"),
        h("dt", {}, "from"), h("dd", {}, h("code", {}, wallet.account))),
      h("div", { class: "buttons" },
        h("button", { type: "button", class: "secondary", "data-testid": "confirm-cancel", onclick: () => done(false) }, "Cancel"),
        h("button", { type: "button", "data-testid": "confirm-ok", onclick: () => done(true) }, "Confirm"))));
    modal.hidden = false;
  });
}

async function waitReceipt(hash, timeoutMs = 60000) {
  const giveUp = Date.now() + timeoutMs;
  while (Date.now() < giveUp) {
    const receipt = await wallet.provider.request({ method: "eth_getTransactionReceipt", params: [hash] });
    if (receipt) return receipt;
    await new Promise((r) => setTimeout(r, 400));
  }
  throw new WalletError(`Transaction ${hash} was not mined within ${timeoutMs / 1000} s; check your wallet.`);
}

/**
 * Build, confirm, send and wait for one call. Returns the receipt, or null when cancelled.
 * `which` is a key of /dashboard/api/contracts (stake_manager, job_market, token).
 */
export async function send(which, fn, args) {
  if (!wallet.account) await connect();
  await checkChain();
  const spec = (await contracts())[which];
  const item = spec.abi.find((x) => x.type === "function" && x.name === fn && x.inputs.length === args.length);
  if (!item) throw new WalletError(`${NAMES[which]} has no function ${fn} with ${args.length} arguments.`);
  const values = item.inputs.map((p, i) => coerce(p, args[i]));
  const data = encodeFunctionData({ abi: [item], functionName: fn, args: values });
  const lines = item.inputs.map((p, i) => `${p.name || `arg${i}`} (${p.type}) = ${describe(p, values[i])}`);
  if (!(await confirmDialog(NAMES[which], spec.address, `${fn}(${item.inputs.map((p) => p.type).join(",")})`, lines))) {
    notice(`Cancelled: ${NAMES[which]}.${fn} was not sent.`);
    return null;
  }
  notice(`Sending ${NAMES[which]}.${fn}…`);
  const hash = await wallet.provider.request({
    method: "eth_sendTransaction", params: [{ from: wallet.account, to: spec.address, data }],
  });
  notice(`${NAMES[which]}.${fn} sent (${hash}); waiting for a block…`);
  const receipt = await waitReceipt(hash);
  if (receipt.status !== "0x1" && receipt.status !== 1 && receipt.status !== "success") {
    throw new WalletError(`${NAMES[which]}.${fn} reverted on chain (tx ${hash}).`);
  }
  notice(`${NAMES[which]}.${fn} confirmed in block ${Number(BigInt(receipt.blockNumber))} (tx ${hash}).`);
  return receipt;
}
