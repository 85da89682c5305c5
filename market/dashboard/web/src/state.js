// Shared page state: the notice/error banners and the connected wallet.
import { h } from "./dom.js";

export const wallet = { provider: null, account: null, contracts: null };

export function showError(message) {
  const el = document.getElementById("error");
  el.textContent = message;
  el.hidden = !message;
}

export function clearError() {
  showError("");
}

export function notice(message) {
  const el = document.getElementById("notice");
  el.textContent = message;
  el.hidden = !message;
}

/** The view's failure as a page: the message, and for a 410 a pointer to the chain. */
export function errorView(err) {
  showError(err.message);
  return h("section", { class: "card" }, h("h2", {}, "Nothing to show"),
    h("p", { class: "muted" }, "See the message above. ", h("a", { href: "#/" }, "Back to the market")));
}
