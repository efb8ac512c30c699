// Integrations > CleverTap: event callback switch, project ID, passcode, API endpoint.

import { api, ApiError, field, fmtTime, h, state, statusLine } from "../api.js";

// README "CleverTap regions".
export const REGIONS = [
  ["India", "https://in1.api.clevertap.com"],
  ["Singapore", "https://sg1.api.clevertap.com"],
  ["United States", "https://us1.api.clevertap.com"],
  ["Indonesia", "https://aps3.api.clevertap.com"],
  ["Middle East", "https://mec1.api.clevertap.com"],
  ["Europe (eu1)", "https://api.clevertap.com"],
];

export async function integrationsPage(root) {
  const appId = state.appId;
  const path = `/v1/apps/${encodeURIComponent(appId)}/integrations/clevertap`;
  let current = null;
  try {
    current = await api("GET", path);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
  }
  const callback = h("input", { type: "checkbox", role: "switch", checked: current?.event_callback });
  const project = h("input", { type: "text", autocomplete: "off", value: current?.project_id || "", maxlength: 200 });
  const passcode = h("input", { type: "password", autocomplete: "new-password", maxlength: 200,
    placeholder: current?.passcode ? `stored: ${current.passcode}` : "" });
  const endpoint = h("input", { type: "url", value: current?.api_endpoint || "", maxlength: 500,
    placeholder: "https://in1.api.clevertap.com" });
  const region = h("select", {},
    h("option", { value: "" }, "Custom URL"),
    REGIONS.map(([name, url]) => h("option", { value: url, selected: url === current?.api_endpoint }, `${name}: ${url}`)));
  region.addEventListener("change", () => { if (region.value) endpoint.value = region.value; });
  endpoint.addEventListener("input", () => {
    region.value = REGIONS.some(([, u]) => u === endpoint.value) ? endpoint.value : "";
  });
  const status = statusLine();
  const savedAt = h("p", {}, current ? `Saved ${fmtTime(current.updated_at)}.` : "Not set up yet for this app.");
  const form = h("form", { class: "card", "aria-labelledby": "ct-h" },
    h("h2", { id: "ct-h" }, "CleverTap"),
    savedAt,
    h("div", { class: "field switch" }, callback, h("label", { for: (callback.id = "ct-callback") }, "Event callback"),
      h("p", { class: "hint", id: "ct-callback-hint" },
        "Send SENT and READ events to CleverTap as custom events (evtName = the notification's event_name).")),
    h("fieldset", {}, h("legend", {}, "Project details (CleverTap: Settings > Project)"),
      field("Project ID", project), field("Passcode", passcode,
        current?.passcode ? "Stored passcodes are never shown. Enter it again to save changes." : undefined)),
    h("fieldset", {}, h("legend", {}, "CleverTap API endpoint"),
      field("Region", region), field("API endpoint", endpoint, "Your data center's base URL; /1/upload is appended.")),
    h("button", { type: "submit" }, "Save"), status.el);
  callback.setAttribute("aria-describedby", "ct-callback-hint");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.clear();
    try {
      const saved = await api("PUT", path, { body: {
        event_callback: callback.checked, project_id: project.value.trim(),
        passcode: passcode.value, api_endpoint: endpoint.value.trim() } });
      passcode.value = "";
      savedAt.textContent = `Saved ${fmtTime(saved.updated_at)}.`;
      passcode.placeholder = saved.passcode ? `stored: ${saved.passcode}` : "";
      status.ok(`Saved: event callback ${saved.event_callback ? "on" : "off"}, endpoint ${saved.api_endpoint || "none"}.`);
    } catch (e) { status.error(e); }
  });
  root.append(form);
}
