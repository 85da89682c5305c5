// #/job/ID : one job's path from posting to payment, its audit, and how to re-check it.
import { BASE, getJSON } from "../api.js";
import { card, copyable, groupLink, h, mesh, providerLink, stateBadge, table, verifierLink, when } from "../dom.js";
import { showError, wallet } from "../state.js";
import { sameAddress, send, walletMessage } from "../wallet.js";

function hash(value) {
  return value ? h("code", { class: "hash" }, value) : h("span", { class: "muted" }, "—");
}

// The on-chain evidence hash names a blob: the verifier's claim document (which outputs it
// compared, under which tolerance), served by the market at /blobs/HASH.
function evidence(value, testid) {
  if (!value) return hash(value);
  const root = BASE.replace(/\/dashboard$/, "");
  return [hash(value), " ", h("a", { href: `${root}/blobs/${value.replace(/^0x/, "")}`,
    target: "_blank", rel: "noopener", "data-testid": testid }, "evidence document")];
}

function args(a) {
  return Object.entries(a || {}).map(([k, v]) => h("span", { class: "arg" }, `${k}=${v} `));
}

function auditCard(a) {
  const drawn = a.drawn === null || a.drawn === undefined ? "not yet drawn" : a.drawn ? "drawn for audit" : "not drawn";
  const rows = [
    h("dt", {}, "draw"), h("dd", { "data-testid": "audit-drawn" }, drawn),
    h("dt", {}, "verdict"), h("dd", {}, stateBadge(a.verdict ?? "none", "audit-verdict")),
    h("dt", {}, "verifier"), h("dd", {}, verifierLink(a.verifier)),
    h("dt", {}, "evidence"), h("dd", { "data-testid": "audit-evidence" }, evidence(a.evidence, "evidence-link")),
  ];
  if (a.appeal) {
    rows.push(h("dt", {}, "appeal"), h("dd", { "data-testid": "appeal" },
      "by ", providerLink(a.appeal.by), ", judged by ", verifierLink(a.appeal.verifier), ": ",
      a.appeal.worker_wins === null ? "pending" : a.appeal.worker_wins ? "worker wins" : "worker loses",
      a.appeal.evidence ? [" · evidence ", evidence(a.appeal.evidence, "appeal-evidence-link")] : null));
  }
  if (a.contest) {
    rows.push(h("dt", {}, "contest"), h("dd", { "data-testid": "contest" },
      "the appeal verdict overturned the first; a third verifier decides: ",
      verifierLink(a.contest.verifier), ": ",
      a.contest.worker_wins === null ? "pending" : a.contest.worker_wins ? "worker wins" : "worker loses",
      a.contest.evidence ? [" · evidence ", evidence(a.contest.evidence, "contest-evidence-link")] : null));
  }
  if (a.escalation) {
    rows.push(h("dt", {}, "escalation"), h("dd", { "data-testid": "escalation" },
      "the appeal verdict upheld the first; escalated by ", providerLink(a.escalation.by),
      ", a third verifier judges: ", verifierLink(a.escalation.verifier), ": ",
      a.escalation.worker_wins === null ? "pending" : a.escalation.worker_wins ? "worker wins (void)" : "worker loses",
      a.escalation.evidence ? [" · evidence ", evidence(a.escalation.evidence, "escalation-evidence-link")] : null));
  }
  return card("Audit", h("dl", {}, rows));
}

function reclaimPanel(j, ctx) {
  if (!j.reclaimable) return null;
  // a posted job nobody holds is cancelled by taking its escrow back; an assigned one whose
  // worker let the deadline pass, reclaimed the same way (JobMarket.reclaim)
  const title = j.state === "posted" ? "Cancel" : "Reclaim";
  const why = j.state === "posted"
    ? "No worker holds this job: cancelling it returns its whole escrow to you."
    : "Its worker let the deadline pass without a result: its escrow goes back to you.";
  if (!sameAddress(wallet.account, j.client)) {
    return card(title, h("p", { class: "muted" },
      `The client may ${title.toLowerCase()} this job now. Connect the client's wallet to do it here.`));
  }
  const button = h("button", { type: "button", "data-testid": "reclaim", onclick: async () => {
    button.disabled = true;
    try {
      if (await send("job_market", "reclaim", [j.job_id, j.record])) await ctx.refresh();
    } catch (err) {
      showError(walletMessage(err));
    } finally {
      button.disabled = false;
    }
  } }, j.state === "posted" ? "Cancel job (reclaim escrow)" : "Reclaim escrow");
  return card(title, h("p", {}, why), button);
}

export async function jobView([id], ctx) {
  const j = await getJSON(`jobs/${encodeURIComponent(id)}`);
  return h("div", { class: "grid" },
    h("section", { class: "card wide" },
      h("h1", {}, `Job #${j.job_id} `, stateBadge(j.state, "job-state")),
      h("dl", { class: "facts" },
        h("dt", {}, "group"), h("dd", { "data-testid": "job-group" }, groupLink(j.group), ` shard ${j.shard ?? "—"}`),
        h("dt", {}, "client"), h("dd", { "data-testid": "job-client" }, providerLink(j.client)),
        h("dt", {}, "worker"), h("dd", { "data-testid": "job-worker" }, providerLink(j.worker)),
        h("dt", {}, "auditor"), h("dd", { "data-testid": "job-auditor" }, verifierLink(j.auditor)),
        h("dt", {}, "reward"), h("dd", {}, mesh(j.reward_wei, "job-reward")),
        h("dt", {}, "audit fee"), h("dd", {}, mesh(j.audit_fee_wei)),
        h("dt", {}, "collateral"), h("dd", {}, mesh(j.collateral_wei)),
        h("dt", {}, "audit rate"), h("dd", {}, `${(Number(j.audit_bps) / 100).toFixed(2)} %`),
        h("dt", {}, "spec sha256"), h("dd", {}, hash(j.spec_sha256)),
        h("dt", {}, "result hash"), h("dd", {}, hash(j.result_hash)),
        h("dt", {}, "output sha256"), h("dd", {}, hash(j.output_sha256)))),
    h("section", { class: "card wide" }, h("h2", {}, "Timeline"),
      table(["event", "block", "time", "transaction", "details"],
        (j.timeline || []).map((e) => h("tr", { "data-testid": "timeline-row", "data-event": e.event },
          h("td", {}, e.event), h("td", {}, e.block), h("td", {}, when(e.time)),
          h("td", {}, h("code", { class: "hash", "data-testid": "timeline-tx" }, e.tx)),
          h("td", { class: "args" }, args(e.args)))))),
    auditCard(j.audit || {}),
    card("Re-check it yourself", h("p", {}, "Recompute this job's result and compare it with the chain:"),
      copyable(j.verify_command || `mesh verify ${j.job_id}`, "verify-command")),
    reclaimPanel(j, ctx));
}
