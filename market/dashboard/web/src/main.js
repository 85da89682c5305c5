// The dashboard: hash routes, one view at a time, refetched when the market's stream says the
// index moved; the overview comes in the stream itself while it is shown. No view ever leaves
// the page blank: a failure becomes a message (#error).
import { BASE } from "./api.js";
import { resetCharts } from "./charts.js";
import { clearError, errorView, showError } from "./state.js";
import { connect, walletMessage } from "./wallet.js";
import { groupView } from "./views/group.js";
import { jobView } from "./views/job.js";
import { overviewView } from "./views/overview.js";
import { providerView } from "./views/provider.js";
import { verifierView } from "./views/verifier.js";

const ROUTES = [
  [/^#?\/?$/, overviewView],
  [/^#\/job\/([^/]*)$/, jobView],
  [/^#\/group\/([^/]*)$/, groupView],
  [/^#\/provider\/([^/]*)$/, providerView],
  [/^#\/verifier\/([^/]*)$/, verifierView],
];

const view = document.getElementById("view");
const isOverview = (hash) => ROUTES[0][0].test(hash || "#/");
let rendering = 0;
let streamStale = false;
let indexStale = false;

function setStaleBadge() {
  const pill = document.getElementById("live");
  const stale = streamStale || indexStale;
  pill.textContent = stale ? "stale" : pill.dataset.mode || "connecting";
  pill.className = `pill ${stale ? "stale" : pill.dataset.mode || ""}`;
  if (stale) pill.setAttribute("data-testid", "stale");
  else pill.setAttribute("data-testid", "live-state");
  pill.title = stale ? "The market's index is behind the chain: figures may be out of date." : "";
}

function setMode(mode) {
  document.getElementById("live").dataset.mode = mode;
  setStaleBadge();
}

// A live refresh never cancels one in flight: while a view's data is being fetched, further
// ticks only ask for one more refresh after it (a view slower to fetch than the ticks come,
// a busy provider's page, would otherwise be restarted forever and never drawn).
let refreshing = null;
let refreshAgain = false;
// the overview the stream sent, not yet drawn: the next refresh of the overview draws it
// instead of fetching it again
let pushed = null;

function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = render(true).finally(() => {
    refreshing = null;
    if (refreshAgain) {
      refreshAgain = false;
      refresh();
    }
  });
  return refreshing;
}

/** Render the view the hash names; `quiet` keeps the old content until the new one is ready. */
async function render(quiet = false) {
  const ticket = ++rendering;
  const hash = location.hash || "#/";
  const match = ROUTES.map(([re, fn]) => [hash.match(re), fn]).find(([m]) => m);
  const mounted = [];
  const overview = isOverview(hash) && quiet ? pushed : null;
  pushed = null;
  if (!quiet) openStream(isOverview(hash));
  const ctx = {
    pushed: overview,
    setStale: (stale) => { indexStale = Boolean(stale); setStaleBadge(); },
    afterMount: (fn) => mounted.push(fn),
    refresh: () => refresh(),
  };
  if (!quiet) view.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: "Loading…" }));
  let node;
  try {
    if (!match) throw new Error(`There is no page at ${hash}: try #/, #/job/ID, #/group/GROUP, #/provider/ADDRESS or #/verifier/ADDRESS.`);
    const [m, fn] = match;
    node = await fn(m.slice(1).map(decodeURIComponent), ctx);
    if (ticket !== rendering) return;
    clearError();
  } catch (err) {
    if (ticket !== rendering) return;
    if (quiet && view.childElementCount && err.status === 0) {
      showError(err.message);  // market down during a live refresh: keep the last figures
      return;
    }
    node = errorView(err);
  }
  // what the user typed survives a live refresh (read now: the fetch above took a while)
  const kept = [...view.querySelectorAll("input[name]")].map((i) => [i.name, i.value]);
  resetCharts();
  view.replaceChildren(node);
  for (const [name, value] of kept) {
    const input = view.querySelector(`input[name="${name}"]`);
    if (input) input.value = value;
  }
  for (const fn of mounted) {
    try {
      fn();
    } catch (err) {
      showError(`A chart could not be drawn: ${err.message}`);
    }
  }
  document.body.dataset.rendered = String(ticket);
}

// One stream at a time; it carries the overview while the overview is shown, so that page
// fetches nothing on a change. A route that needs the other kind of stream reopens it.
let source = null;
let sourceHasOverview = false;

function openStream(withOverview) {
  if (typeof EventSource === "undefined") return;
  if (source && sourceHasOverview === withOverview) return;
  if (source) source.close();
  const mine = new EventSource(`${BASE}/api/stream${withOverview ? "?overview=true" : ""}`);
  source = mine;
  sourceHasOverview = withOverview;
  let opened = 0;
  let pushOk = false;  // the overview event just before a tick could be read
  mine.addEventListener("open", () => {
    setMode("live");
    // a reconnect may have missed a change: fetch the view again (the first open follows
    // the render that opened it, which is current)
    if (opened++ > 0) refresh();
  });
  mine.addEventListener("overview", (event) => {
    pushOk = false;
    if (!isOverview(location.hash)) return;
    try {
      pushed = JSON.parse(event.data);
    } catch {
      return;  // the tick after it refreshes the view, which fetches it instead
    }
    pushOk = true;
    refresh();
  });
  mine.addEventListener("tick", (event) => {
    let tick;
    try {
      tick = JSON.parse(event.data);
    } catch {
      return;
    }
    setMode("live");
    streamStale = Boolean(tick.stale);
    setStaleBadge();
    // a change whose overview came just before this tick is drawn already (or being drawn)
    const drawn = tick.overview && pushOk && isOverview(location.hash);
    pushOk = false;
    if (tick.changed && !drawn) refresh();
  });
  mine.addEventListener("error", () => setMode("offline"));
}

async function connectWallet(button) {
  try {
    const account = await connect();
    button.textContent = `${account.slice(0, 6)}…${account.slice(-4)}`;
    button.title = account;
    button.dataset.account = account;
    clearError();
    refresh();
  } catch (err) {
    showError(walletMessage(err));
  }
}

window.addEventListener("error", (event) => showError(`Something went wrong on this page: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  showError(`Something went wrong on this page: ${event.reason?.message ?? event.reason}`);
});
window.addEventListener("hashchange", () => render());
const walletButton = document.getElementById("wallet");
walletButton.addEventListener("click", () => connectWallet(walletButton));
render();
