// #/verifier/ADDRESS : what a verifier judged and earned.
import { getJSON } from "../api.js";
import { card, h, jobLink, mesh, stat, stateBadge, table, when } from "../dom.js";

export async function verifierView([address]) {
  const v = await getJSON(`verifiers/${encodeURIComponent(address)}`);
  const seat = v.seat;
  return h("div", { class: "grid" },
    h("section", { class: "card wide" },
      h("h1", {}, "Verifier ", h("code", { class: "hash", "data-testid": "verifier-address" }, v.address)),
      h("div", { class: "stats" },
        stat("audits done", v.audits, "verifier-audits"),
        stat("passed", v.verdicts.passed ?? 0, "verdicts-passed"),
        stat("failed", v.verdicts.failed ?? 0, "verdicts-failed"),
        stat("void", v.verdicts.void ?? 0, "verdicts-void"),
        stat("appeals judged", v.appeals_judged, "appeals-judged"),
        stat("overturned", v.overturned, "overturned"),
        stat("fees earned", mesh(v.fees_earned_wei, "fees-earned")),
        stat("bonds lost", mesh(v.bonds_lost_wei, "bonds-lost")))),
    card("Seat", seat
      ? h("dl", { "data-testid": "seat" },
        h("dt", {}, "units"), h("dd", {}, seat.units),
        h("dt", {}, "deposit"), h("dd", {}, mesh(seat.deposit_wei, "seat-deposit")),
        h("dt", {}, "leaving"), h("dd", {}, seat.leaving ? "yes" : "no"))
      : h("p", { class: "muted", "data-testid": "seat" }, "no seat in the verifier registry")),
    h("section", { class: "card wide" }, h("h2", {}, "Recent verdicts"),
      table(["job", "kind", "verdict", "block", "time", "transaction"],
        (v.recent || []).map((r) => h("tr", { "data-testid": "verdict-row", "data-job": r.job_id },
          h("td", {}, jobLink(r.job_id)), h("td", {}, r.kind), h("td", {}, stateBadge(r.verdict)),
          h("td", {}, r.block), h("td", {}, when(r.time)), h("td", {}, h("code", { class: "hash" }, r.tx)))))));
}
