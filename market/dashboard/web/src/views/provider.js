// #/provider/ADDRESS : a provider's money, from the chain; the wallet's staking actions.
import { parseUnits } from "viem";
import { getJSON } from "../api.js";
import { dailyBars } from "../charts.js";
import { card, h, jobLink, mesh, stat, table, when } from "../dom.js";
import { notice, showError, wallet } from "../state.js";
import { contracts, sameAddress, send, walletMessage } from "../wallet.js";

const toFloat = (wei) => Number(BigInt(wei) / 10n ** 12n) / 1e6;

function actions(p, ctx) {
  if (!sameAddress(wallet.account, p.address)) {
    return card("Stake and withdraw", h("p", { class: "muted", "data-testid": "wallet-hint" },
      wallet.account ? "The connected wallet is another address: open its own provider page to stake or withdraw."
        : "Connect this address's wallet to stake, unstake and withdraw from here."));
  }
  const amount = h("input", { name: "amount", type: "text", inputmode: "decimal", placeholder: "MESH, e.g. 10",
    "data-testid": "amount", "aria-label": "amount in MESH" });
  const run = (fn) => async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    showError("");
    try {
      if (await fn()) await ctx.refresh();
    } catch (err) {
      showError(walletMessage(err));
    } finally {
      button.disabled = false;
    }
  };
  const wei = () => {
    let value;
    try {
      value = parseUnits(amount.value.trim(), 18);
    } catch {
      value = 0n;
    }
    if (value <= 0n) throw new Error("Enter an amount of MESH greater than 0 (such as 10 or 0.5).");
    return value;
  };
  const stake = async () => {
    const value = wei();
    if (value > BigInt(p.balance_wei)) throw new Error(`You hold only ${mesh(p.balance_wei).textContent}.`);
    if (BigInt(p.allowance_wei) < value) {
      notice("Step 1 of 2: allow the StakeManager to take the amount.");
      const c = await contracts();
      if (!(await send("token", "approve", [c.stake_manager.address, value]))) return false;
    }
    return send("stake_manager", "stake", [value]);
  };
  const button = (label, testid, fn) => h("button", { type: "button", "data-testid": testid, onclick: run(fn) }, label);
  return card("Stake and withdraw",
    h("p", {}, "Amount: ", amount),
    h("div", { class: "buttons" },
      button("Stake", "stake", stake),
      button("Unstake", "unstake", async () => send("stake_manager", "unstake", [wei()])),
      button("Withdraw unbonded", "withdraw-unbonded", async () => send("stake_manager", "withdrawUnbonded", [])),
      button("Withdraw earnings", "withdraw-earnings", async () => send("job_market", "withdraw", []))));
}

export async function providerView([address], ctx) {
  const p = await getJSON(`providers/${encodeURIComponent(address)}`);
  const e = p.earnings;
  const t = e.totals;
  const chart = h("div", { class: "chart", "data-testid": "earnings-chart" });
  const days = p.by_day || [];
  const node = h("div", { class: "grid" },
    h("section", { class: "card wide" },
      h("h1", {}, "Provider ", h("code", { class: "hash", "data-testid": "provider-address" }, p.address)),
      h("p", { "data-testid": "worker-status" }, p.worker
        ? [p.worker.online ? "online" : "offline", ` · ${p.worker.device} · ${p.worker.slots} slot(s) · price `,
          mesh(p.worker.price_wei), ` · last seen ${when(p.worker.last_seen)}`]
        : "not registered as a worker with this market"),
      h("div", { class: "stats" },
        stat("paid", mesh(p.by_status.paid_wei, "status-paid")),
        stat("pending", mesh(p.by_status.pending_wei, "status-pending")),
        stat("slashed", mesh(p.by_status.slashed_wei, "status-slashed")),
        stat("earned", mesh(t.earned.wei, "total-earned")),
        stat("withdrawn", mesh(t.withdrawn.wei, "total-withdrawn")),
        stat("withdrawable", mesh(t.withdrawable.wei, "total-withdrawable")),
        stat("completed jobs", t.completed_jobs, "completed-jobs"))),
    card("Earnings by day", chart,
      table(["day", "paid", "pending", "slashed"], days.map((d) => h("tr", { "data-testid": "day-row" },
        h("td", {}, d.day), h("td", {}, mesh(d.final_wei)), h("td", {}, mesh(d.pending_wei)),
        h("td", {}, mesh(d.slashed_wei)))))),
    card("Stake",
      h("div", { class: "stats" },
        stat("free", mesh(p.stake.free_wei, "stake-free")),
        stat("locked", mesh(p.stake.locked_wei, "stake-locked")),
        stat("unbonding", mesh(p.stake.unbonding_wei, "stake-unbonding")),
        stat("slashed", mesh(p.stake.slashed_wei, "stake-slashed")),
        stat("token balance", mesh(p.balance_wei, "balance")),
        stat("allowance to stake", mesh(p.allowance_wei, "allowance"))),
      BigInt(p.stake.unbonding_wei || "0") > 0n
        ? h("p", { class: "muted" }, `unbonding until ${when(p.stake.unbonding_until)}`) : null),
    card("Record", h("div", { class: "stats", "data-testid": "record" },
      stat("completed", p.record.completed, "record-completed"),
      stat("missed", p.record.missed, "record-missed"),
      stat("slashed", p.record.slashed, "record-slashed"),
      stat("audits passed", p.record.audits_passed, "record-audits-passed"))),
    actions(p, ctx),
    h("section", { class: "card wide" }, h("h2", {}, "Earnings by job"),
      p.rows_total > (e.rows || []).length
        ? h("p", { class: "muted", "data-testid": "rows-cut" },
          `The newest ${(e.rows || []).length} of ${p.rows_total} jobs; the totals count them all `
          + `(mesh earnings ${p.address} lists every one).`)
        : null,
      table(["job", "status", "stage", "amount", "fee", "audited", "block", "time", "transaction"],
        (e.rows || []).map((r) => h("tr", { "data-testid": "earning-row", "data-job": r.job_id, "data-status": r.status },
          h("td", {}, jobLink(r.job_id)), h("td", {}, r.status), h("td", {}, r.stage),
          h("td", {}, mesh(r.amount.wei, "row-amount")), h("td", {}, mesh(r.fee.wei, "row-fee")),
          h("td", {}, r.audited ? "yes" : "no"), h("td", {}, r.block_number), h("td", {}, when(r.timestamp)),
          h("td", {}, h("code", { class: "hash" }, r.tx_hash)))))),
    (e.slashes || []).length ? h("section", { class: "card wide" }, h("h2", {}, "Slashes"),
      table(["job", "amount", "to the client", "block", "time", "transaction"],
        e.slashes.map((s) => h("tr", { "data-testid": "slash-row", "data-job": s.job_id },
          h("td", {}, jobLink(s.job_id)), h("td", {}, mesh(s.amount.wei)),
          h("td", {}, mesh(s.client_compensation.wei)), h("td", {}, s.block_number),
          h("td", {}, when(s.timestamp)), h("td", {}, h("code", { class: "hash" }, s.tx_hash)))))) : null);
  if (days.length) {
    ctx.afterMount(() => dailyBars(chart, days.map((d) => d.day), [
      { label: "paid", values: days.map((d) => toFloat(d.final_wei)), stroke: "#2f855a" },
      { label: "pending", values: days.map((d) => toFloat(d.pending_wei)), stroke: "#b7791f" },
      { label: "slashed", values: days.map((d) => toFloat(d.slashed_wei)), stroke: "#c53030" },
    ]));
  } else {
    chart.append(h("p", { class: "muted" }, "no earnings yet"));
  }
  return node;
}
