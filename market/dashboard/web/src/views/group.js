// #/group/G : every shard of a submission.
import { getJSON } from "../api.js";
import { h, jobLink, mesh, providerLink, stateBadge, table } from "../dom.js";

export async function groupView([group]) {
  const g = await getJSON(`groups/${encodeURIComponent(group)}`);
  return h("div", { class: "grid" },
    h("section", { class: "card wide" },
      h("h1", {}, "Group ", h("code", { "data-testid": "group-id" }, g.group)),
      h("p", { "data-testid": "group-complete" }, g.complete ? "complete: every shard has ended" : "in progress"),
      table(["shard", "job", "state", "worker", "reward"],
        g.shards.map((s) => h("tr", { "data-testid": "shard-row", "data-job": s.job_id, "data-state": s.state },
          h("td", {}, s.shard), h("td", {}, jobLink(s.job_id)), h("td", {}, stateBadge(s.state)),
          h("td", {}, providerLink(s.worker)), h("td", {}, mesh(s.reward_wei)))))));
}
