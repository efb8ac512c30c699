// The dashboard shell: sign-in with the admin token, the app picker, and hash routing.

import { api, ApiError, field, fill, h, state, statusLine } from "./api.js";
import { appsPage } from "./pages/apps.js";
import { builderPage } from "./pages/builder.js";
import { campaignsPage } from "./pages/campaigns.js";
import { integrationsPage } from "./pages/integrations.js";
import { templatesPage } from "./pages/templates.js";

const PAGES = {
  apps: { title: "Apps", render: appsPage },
  integrations: { title: "Integrations > CleverTap", render: integrationsPage, app: true },
  templates: { title: "Templates", render: templatesPage, app: true, token: true },
  builder: { title: "Notification Builder", render: builderPage, app: true, token: true },
  campaigns: { title: "Campaigns", render: campaignsPage, app: true, token: true },
};

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const appbar = document.getElementById("appbar");

function signIn(message) {
  nav.hidden = true;
  appbar.hidden = true;
  const input = h("input", { type: "password", autocomplete: "current-password", required: true });
  const status = statusLine();
  if (message) status.error(message);
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-h" },
    h("h1", { id: "signin-h", tabindex: "-1" }, "Sign in"),
    field("Admin token", input, "The value of SBCT_ADMIN_TOKEN. Kept in this tab only (sessionStorage)."),
    h("button", { type: "submit" }, "Sign in"),
    status.el);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.adminToken = input.value.trim();
    try {
      state.apps = (await api("GET", "/v1/apps")).apps;
    } catch (e) {
      state.adminToken = "";
      status.error(e);
      input.focus();
      return;
    }
    route();
  });
  fill(main, form);
  input.focus();
}

export async function refreshApps() {
  state.apps = (await api("GET", "/v1/apps")).apps;
  if (state.appId && !state.apps.some((a) => a.app_id === state.appId)) state.appId = "";
  if (!state.appId && state.apps.length) state.appId = state.apps[0].app_id;
  renderAppbar();
}

function renderAppbar() {
  const select = h("select", { id: "app-picker" },
    state.apps.length ? null : h("option", { value: "" }, "no apps yet"),
    state.apps.map((a) => h("option", { value: a.app_id, selected: a.app_id === state.appId },
      `${a.name} (${a.app_id})`)));
  select.addEventListener("change", () => { state.appId = select.value; route(); });
  const tokenInput = h("input", { type: "password", id: "app-token", autocomplete: "off",
    placeholder: "sbct_…", value: state.appToken() });
  const status = statusLine();
  const tokenForm = h("form", { class: "inline" },
    h("label", { for: "app-token" }, "App API token"), tokenInput,
    h("button", { type: "submit" }, "Use token"), status.el);
  tokenForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.setAppToken(state.appId, tokenInput.value.trim());
    route();
  });
  const signOut = h("button", { type: "button", class: "link" }, "Sign out");
  signOut.addEventListener("click", () => { state.signOut(); location.hash = "#apps"; signIn(); });
  fill(appbar, 
    h("div", { class: "inline" }, h("label", { for: "app-picker" }, "App"), select),
    state.appId ? tokenForm : null, signOut);
}

async function route() {
  if (!state.adminToken) { signIn(); return; }
  const name = (location.hash || "#apps").slice(1).split("/")[0];
  const page = PAGES[name] || PAGES.apps;
  nav.hidden = false;
  appbar.hidden = false;
  for (const a of nav.querySelectorAll("a")) {
    if (a.getAttribute("href") === `#${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    await refreshApps();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { state.adminToken = ""; signIn(e); return; }
    fill(main, h("p", { class: "status error", role: "alert" }, e.describe ? e.describe() : String(e)));
    return;
  }
  document.title = `${page.title} · sbct-pipeline`;
  const heading = h("h1", { tabindex: "-1" }, page.title);
  const body = h("div", { class: "page" });
  fill(main, heading, body);
  if (page.app && !state.appId) {
    body.append(h("p", {}, "Create an app first on the ", h("a", { href: "#apps" }, "Apps"), " page."));
  } else if (page.token && !state.appToken()) {
    body.append(h("p", { class: "notice" },
      "This page uses the app's API token. It is shown once when the app is created or a token is issued; paste it in “App API token” above."));
  } else {
    try {
      await page.render(body, { refreshApps, route });
    } catch (e) {
      body.append(h("p", { class: "status error", role: "alert" }, e.describe ? e.describe() : String(e)));
    }
  }
  if (document.activeElement === document.body || !main.contains(document.activeElement)) heading.focus();
}

window.addEventListener("hashchange", route);
route();
