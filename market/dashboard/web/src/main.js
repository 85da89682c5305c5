// The dashboard: hash routes, one view at a time, refetched when the market's stream says the
// index moved. No view ever leaves the page blank: a failure becomes a message (#error).
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
  const ctx = {
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

function openStream() {
  if (typeof EventSource === "undefined") return;
  const source = new EventSource(`${BASE}/api/stream`);
  let opened = 0;
  source.addEventListener("open", () => {
    setMode("live");
    // a reconnect may have missed a change: fetch the view again (the first open follows
    // the first render, which is current)
    if (opened++ > 0) refresh();
  });
  source.addEventListener("tick", (event) => {
    let tick;
    try {
      tick = JSON.parse(event.data);
    } catch {
      return;
    }
    setMode("live");
    streamStale = Boolean(tick.stale);
    setStaleBadge();
    if (tick.changed) refresh();
  });
  source.addEventListener("error", () => setMode("offline"));
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
openStream();
