// Apps: create and list apps; the webhook URLs and the API token to paste into CleverTap.

import { api, copyButton, field, fill, fmtTime, h, state, statusLine, webhookUrls } from "../api.js";

function copyRow(label, value, secret) {
  const input = h("input", { type: "text", readonly: true, value, class: secret ? "mono secret" : "mono" });
  return h("div", { class: "copyrow" }, field(label, input), copyButton(() => value, label, input));
}

// The panel shown once after creation or rotation: the token cannot be read back later.
function tokenPanel(appId, name, token) {
  const urls = webhookUrls();
  return h("section", { class: "card highlight", "aria-labelledby": "new-token-h", id: "token-panel" },
    h("h2", { id: "new-token-h" }, `API token for ${name}`),
    h("p", { class: "notice" }, "Copy the token now: it is stored hashed and is never shown again. ",
      "This tab keeps it for the other pages until you sign out."),
    copyRow("App ID", appId),
    copyRow("API token (CleverTap webhook header Api-token)", token, true),
    copyRow("single webhook URL (Journeys)", urls.single),
    copyRow("multi webhook URL (Campaigns)", urls.multi));
}

export async function appsPage(root, { refreshApps, route }) {
  const urls = webhookUrls();
  const nameInput = h("input", { type: "text", required: true, maxlength: 200, autocomplete: "off" });
  const status = statusLine();
  const created = h("div");
  const form = h("form", { class: "card", "aria-labelledby": "create-app-h" },
    h("h2", { id: "create-app-h" }, "Create an app"),
    field("App name", nameInput),
    h("button", { type: "submit" }, "Create app"), status.el);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.clear();
    try {
      const app = await api("POST", "/v1/apps", { body: { name: nameInput.value } });
      state.setAppToken(app.app_id, app.api_token);
      state.appId = app.app_id;
      nameInput.value = "";
      await refreshApps();
      renderList();
      fill(created, tokenPanel(app.app_id, app.name, app.api_token));
      status.ok(`Created ${app.name} (${app.app_id}).`);
    } catch (e) { status.error(e); }
  });

  const listStatus = statusLine();
  const list = h("div");
  function renderList() {
    if (!state.apps.length) { fill(list, h("p", {}, "No apps yet.")); return; }
    fill(list, h("table", {},
      h("caption", {}, `${state.apps.length} app(s), newest first`),
      h("thead", {}, h("tr", {}, ["Name", "App ID", "Created", "Tokens", "Event callback", "Actions"]
        .map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, state.apps.map((a) => {
        const use = h("button", { type: "button", disabled: a.app_id === state.appId },
          a.app_id === state.appId ? "Selected" : "Select");
        use.addEventListener("click", () => { state.appId = a.app_id; route(); });
        const rotate = h("button", { type: "button", "aria-label": `Issue a new API token for ${a.name}` }, "New token");
        rotate.addEventListener("click", async () => {
          listStatus.clear();
          try {
            const t = await api("POST", `/v1/apps/${encodeURIComponent(a.app_id)}/api_tokens`, { body: {} });
            const token = t.api_token || t.token;
            state.setAppToken(a.app_id, token);
            fill(created, tokenPanel(a.app_id, a.name, token));
            listStatus.ok(`Issued a new token for ${a.name}; older tokens still work until deleted.`);
          } catch (e) { listStatus.error(e); }
        });
        return h("tr", {},
          h("td", {}, a.name), h("td", { class: "mono" }, a.app_id), h("td", {}, fmtTime(a.created_at)),
          h("td", {}, String(a.tokens)),
          h("td", {}, a.event_callback === null ? "not set up" : a.event_callback ? "on" : "off"),
          h("td", { class: "actions" }, use, rotate));
      }))));
  }
  renderList();

  root.append(form, created,
    h("section", { class: "card", "aria-labelledby": "apps-h" }, h("h2", { id: "apps-h" }, "Apps"), list, listStatus.el),
    h("section", { class: "card", "aria-labelledby": "hooks-h" },
      h("h2", { id: "hooks-h" }, "Webhook URLs for CleverTap"),
      h("p", {}, "In CleverTap, Settings > Engage > Channels > Webhooks: add one webhook per endpoint, method POST, ",
        "with the header Api-token set to the app's API token. The URL is the same for every app; the token picks the app."),
      copyRow("single (Journeys, real time)", urls.single),
      copyRow("multi (Campaigns, large audiences)", urls.multi)));
}
