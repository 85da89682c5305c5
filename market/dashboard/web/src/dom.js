// Tiny DOM helpers: every value goes in as text (never innerHTML), so data cannot inject markup.
import { formatUnits } from "viem";

/** h("div", {class: "x", "data-testid": "y"}, child, "text", [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** MESH from a decimal string of wei, up to 6 decimals shown, exact wei kept in data-wei. */
export function mesh(wei, testid) {
  const value = BigInt(wei ?? "0");
  const text = formatMesh(value);
  return h("span", { class: "amount", "data-wei": value.toString(), "data-testid": testid,
                     title: `${value} wei` }, text, h("small", {}, " MESH"));
}

export function formatMesh(value) {
  const full = formatUnits(BigInt(value), 18);
  const [whole, frac = ""] = full.split(".");
  const shown = frac.slice(0, 6).replace(/0+$/, "");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const approx = frac.length > 6 && /[1-9]/.test(frac.slice(6)) ? "≈" : "";
  return approx + (shown ? `${grouped}.${shown}` : grouped);
}

export function short(address) {
  return address ? `${address.slice(0, 6)}…${address.slice(-4)}` : "—";
}

export function providerLink(address) {
  if (!address) return h("span", { class: "muted" }, "—");
  return h("a", { href: `#/provider/${address}`, class: "addr", title: address }, short(address));
}

export function verifierLink(address) {
  if (!address) return h("span", { class: "muted" }, "none");
  return h("a", { href: `#/verifier/${address}`, class: "addr", title: address }, short(address));
}

export function jobLink(id) {
  return h("a", { href: `#/job/${id}` }, `#${id}`);
}

export function stateBadge(state, testid) {
  return h("span", { class: `state s-${state}`, "data-testid": testid }, state ?? "—");
}

export function when(seconds) {
  if (!seconds) return "—";
  return new Date(Number(seconds) * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

export function table(headers, rows, attrs = {}) {
  return h("div", { class: "scroll" },
    h("table", attrs,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
      h("tbody", {}, rows.length
        ? rows
        : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none yet")))));
}

export function card(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

export function stat(label, value, testid) {
  return h("div", { class: "stat" }, h("div", { class: "v", "data-testid": testid }, value),
           h("div", { class: "k" }, label));
}

export function copyable(text, testid) {
  const button = h("button", { type: "button", class: "copy", "data-testid": `${testid}-copy`,
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "copied";
      } catch {
        button.textContent = "select and copy";
      }
    } }, "copy");
  return h("div", { class: "cmd" }, h("code", { "data-testid": testid }, text), button);
}

export function groupLink(group) {
  if (!group) return h("span", { class: "muted" }, "—");
  return h("a", { href: `#/group/${encodeURIComponent(group)}`, title: group }, group.length > 14 ? `${group.slice(0, 12)}…` : group);
}
