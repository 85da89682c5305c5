// #/ : the market at a glance.
import { getJSON } from "../api.js";
import { countsChart } from "../charts.js";
import { card, groupLink, h, jobLink, mesh, providerLink, stat, stateBadge, table, when } from "../dom.js";

const STATES = ["posted", "assigned", "committed", "audited", "audit_passed", "audit_failed",
  "appealed", "disputed", "finalized", "slashed", "refunded"];

export async function overviewView(_params, ctx) {
  // the overview the market's stream sent, when this draw follows one; else fetched
  const o = ctx.pushed ?? await getJSON("overview");
  ctx.setStale(o.chain.stale, o.chain.lag_blocks);
  const chart = h("div", { class: "chart", "data-testid": "settled-chart" });
  const market = h("div", { class: "chart", "data-testid": "market-chart" });
  const byState = o.jobs.by_state || {};
  const most = Math.max(1, ...Object.values(byState).map(Number));
  const node = h("div", { class: "grid" },
    h("section", { class: "card wide stats" },
      stat("workers online", o.workers.online, "workers-online"),
      stat("open jobs", o.jobs.open, "jobs-open"),
      stat("jobs", o.jobs.total, "jobs-total"),
      stat("verifier backlog", o.verifier_backlog, "verifier-backlog"),
      stat("slashes", o.slashes.count, "slashes-count"),
      stat("chain head", o.chain.head, "chain-head"),
      stat("indexed", `${o.chain.indexed} (${o.chain.lag_blocks} behind)`, "chain-indexed")),
    card("Settled jobs per minute (last hour)", chart),
    card("Workers, open jobs and verdicts awaited (last hour)", market),
    card("Jobs by state", h("div", { class: "bars", "data-testid": "jobs-by-state" },
      STATES.map((s) => h("div", { class: "bar-row", "data-state": s, "data-count": byState[s] ?? 0 },
        h("span", { class: "bar-label" }, s.replace("_", " ")),
        h("span", { class: "bar" }, h("span", { class: `fill s-${s}`, style: `width:${(100 * (byState[s] ?? 0)) / most}%` })),
        h("span", { class: "bar-n" }, byState[s] ?? 0))))),
    card("Audit outcomes", h("div", { class: "stats", "data-testid": "audits" },
      ["drawn", "not_drawn", "passed", "failed", "voided", "appealed"].map((k) =>
        stat(k.replace("_", " "), o.audits[k] ?? 0, `audits-${k}`)))),
    h("section", { class: "card wide" }, h("h2", {}, "Workers online by device"),
      table(["device", "workers", "lowest price", "highest price"],
        (o.workers.by_device || []).map((d) => h("tr", { "data-testid": "device-row" },
          h("td", {}, d.device), h("td", {}, d.count),
          h("td", {}, mesh(d.min_price_wei)), h("td", {}, mesh(d.max_price_wei))))),
      table(["worker", "device", "price", "slots", "last seen"],
        (o.workers.list || []).map((w) => h("tr", {},
          h("td", {}, providerLink(w.address)), h("td", {}, w.device), h("td", {}, mesh(w.price_wei)),
          h("td", {}, w.slots), h("td", {}, when(w.last_seen)))))),
    h("section", { class: "card wide" }, h("h2", {}, "Recent jobs"),
      table(["job", "state", "client", "worker", "reward", "group"],
        (o.recent || []).map((j) => h("tr", { "data-testid": "recent-job", "data-job": j.job_id },
          h("td", {}, jobLink(j.job_id)), h("td", {}, stateBadge(j.state)),
          h("td", {}, providerLink(j.client)), h("td", {}, providerLink(j.worker)),
          h("td", {}, mesh(j.reward_wei)), h("td", {}, groupLink(j.group)))))));
  ctx.afterMount(() => countsChart(chart, o.series.start, o.series.bucket_s, [
    { label: "settled", values: o.series.settled || [], stroke: "#2f855a" },
    { label: "slashed", values: o.series.slashed || [], stroke: "#c53030" },
  ]));
  ctx.afterMount(() => countsChart(market, o.series.start, o.series.bucket_s, [
    { label: "workers online", values: o.series.workers_online || [], stroke: "#2b6cb0" },
    { label: "open jobs", values: o.series.open_jobs || [], stroke: "#b7791f" },
    { label: "awaiting a verdict", values: o.series.backlog || [], stroke: "#6b46c1" },
  ]));
  return node;
}
