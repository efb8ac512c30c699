// The JSON API client, the tokens kept in sessionStorage, and small DOM helpers.
// Tokens live in sessionStorage only: they leave with the tab, never in localStorage.

const ADMIN_KEY = "sbct.admin_token";
const APP_KEY = "sbct.app_id";
const TOKENS_KEY = "sbct.app_tokens";

export const state = {
  get adminToken() { return sessionStorage.getItem(ADMIN_KEY) || ""; },
  set adminToken(v) { v ? sessionStorage.setItem(ADMIN_KEY, v) : sessionStorage.removeItem(ADMIN_KEY); },
  get appId() { return sessionStorage.getItem(APP_KEY) || ""; },
  set appId(v) { v ? sessionStorage.setItem(APP_KEY, v) : sessionStorage.removeItem(APP_KEY); },
  apps: [],
  appToken(appId = state.appId) {
    return JSON.parse(sessionStorage.getItem(TOKENS_KEY) || "{}")[appId] || "";
  },
  setAppToken(appId, token) {
    const all = JSON.parse(sessionStorage.getItem(TOKENS_KEY) || "{}");
    if (token) all[appId] = token; else delete all[appId];
    sessionStorage.setItem(TOKENS_KEY, JSON.stringify(all));
  },
  signOut() { sessionStorage.clear(); },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  // What the user reads: the server's own message, which names the bad field.
  describe() {
    return this.status ? `${this.message} (HTTP ${this.status}, ${this.code})` : this.message;
  }
}

// Call the API. auth is "admin" (Bearer admin token) or "app" (the selected app's Api-token).
export async function api(method, path, { auth = "admin", body, token } = {}) {
  const headers = {};
  if (auth === "admin") headers.Authorization = `Bearer ${state.adminToken}`;
  if (auth === "app") {
    const t = token ?? state.appToken();
    if (!t) throw new ApiError(0, "no_app_token", "Paste this app's API token first (Apps page or the field above).");
    headers["Api-token"] = t;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, "network", `Cannot reach the pipeline at ${location.origin}: ${exc.message}`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!resp.ok) {
    const err = data && data.error;
    if (err && err.message) throw new ApiError(resp.status, err.code || "error", err.message);
    throw new ApiError(resp.status, "http_error", `${method} ${path} failed: ${resp.statusText || "no message"}`);
  }
  return data;
}

// h("p", {class: "x", onclick: f}, "text", child) builds an element; strings become text nodes,
// never HTML, so nothing from the API can inject markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

// Replace el's children; null, undefined and false are skipped (unlike replaceChildren).
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

let uid = 0;
export function nextId(prefix) { uid += 1; return `${prefix}-${uid}`; }

// A labelled form field: label + control (+ hint), wired with for/id and aria-describedby.
export function field(label, control, hint) {
  const id = control.id || nextId("f");
  control.id = id;
  const parts = [h("label", { for: id }, label), control];
  if (hint) {
    const hid = `${id}-hint`;
    control.setAttribute("aria-describedby", hid);
    parts.push(h("p", { class: "hint", id: hid }, hint));
  }
  return h("div", { class: "field" }, parts);
}

// A status line for a form: errors get role=alert, successes are announced politely.
export function statusLine() {
  const el = h("p", { class: "status", "aria-live": "polite" });
  return {
    el,
    ok(msg) { el.className = "status ok"; el.removeAttribute("role"); el.textContent = msg; },
    error(e) {
      el.className = "status error";
      el.setAttribute("role", "alert");
      el.textContent = e instanceof ApiError ? e.describe() : String(e.message || e);
    },
    clear() { el.className = "status"; el.removeAttribute("role"); el.textContent = ""; },
  };
}

// Copy text to the clipboard; falls back to selecting it for Ctrl+C where the API is denied.
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (input) { input.focus(); input.select(); }
    return false;
  }
}

export function copyButton(getText, label, input, text = "Copy") {
  const btn = h("button", { type: "button", class: "copy", "aria-label": `Copy ${label}` }, text);
  btn.addEventListener("click", async () => {
    const ok = await copyText(getText(), input);
    btn.textContent = ok ? "Copied" : "Press Ctrl+C";
    setTimeout(() => { btn.textContent = text; }, 1500);
  });
  return btn;
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function webhookUrls() {
  return {
    single: `${location.origin}/clevertap/notifications/single`,
    multi: `${location.origin}/clevertap/notifications/multi`,
  };
}
