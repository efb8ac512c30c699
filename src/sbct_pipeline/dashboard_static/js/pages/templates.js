// Templates: list, create and edit, with detected variables and a live preview.

import { api, ApiError, field, fill, fmtTime, h, statusLine } from "../api.js";
import { showPreview } from "../preview.js";
import { compileTemplate, TemplateSyntaxError } from "../render.js";

export async function templatesPage(root) {
  const listEl = h("div");
  const editorEl = h("div");
  const listStatus = statusLine();
  let templates = [];

  async function load() {
    templates = (await api("GET", "/v1/templates", { auth: "app" })).templates;
    renderList();
  }

  function renderList() {
    const add = h("button", { type: "button" }, "New template");
    add.addEventListener("click", () => edit(null));
    fill(listEl, h("section", { class: "card", "aria-labelledby": "tpl-list-h" },
      h("h2", { id: "tpl-list-h" }, "Templates"), add,
      templates.length ? h("table", {},
        h("caption", {}, `${templates.length} template(s)`),
        h("thead", {}, h("tr", {}, ["Key", "Name", "Variables", "Updated", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, templates.map((t) => {
          const btn = h("button", { type: "button", "aria-label": `Edit ${t.key}` }, "Edit");
          btn.addEventListener("click", () => edit(t));
          return h("tr", {}, h("td", { class: "mono" }, t.key), h("td", {}, t.name),
            h("td", { class: "mono" }, t.variables.join(", ") || "none"), h("td", {}, fmtTime(t.updated_at)),
            h("td", { class: "actions" }, btn));
        }))) : h("p", {}, "No templates yet."),
      listStatus.el));
  }

  function edit(t) {
    const isNew = !t;
    const key = h("input", { type: "text", required: true, maxlength: 200, value: t?.key || "", readonly: !isNew,
      autocomplete: "off" });
    const name = h("input", { type: "text", maxlength: 200, value: t?.name || "", autocomplete: "off" });
    const title = h("input", { type: "text", required: true, maxlength: 10000, value: t?.title || "" });
    const body = h("textarea", { rows: 4, required: true, maxlength: 10000 }, t?.body || "");
    const data = h("textarea", { rows: 3, class: "mono" }, t?.data ? JSON.stringify(t.data, null, 2) : "");
    const varsEl = h("ul", { class: "vars", "aria-live": "polite", "data-testid": "variables" });
    const samplesEl = h("div", { class: "samples" });
    const previewEl = h("div", { "aria-live": "polite" });
    const status = statusLine();
    const samples = {};

    function parseData() {
      const raw = data.value.trim();
      if (!raw) return null;
      let value;
      try { value = JSON.parse(raw); } catch (e) { throw new Error(`data: not valid JSON (${e.message})`); }
      if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("data must be a JSON object");
      return value;
    }

    function update() {
      let compiled;
      try {
        compiled = compileTemplate(title.value, body.value, parseData());
      } catch (e) {
        const msg = e instanceof TemplateSyntaxError ? `Template syntax: ${e.message}` : e.message;
        showPreview(previewEl, null, {}, msg);
        return;
      }
      fill(varsEl, ...(compiled.variables.length
        ? compiled.variables.map((v) => h("li", { class: "mono" }, v)) : [h("li", {}, "none")]));
      // Sample values for the preview only; they are not saved with the template.
      const inputs = compiled.variables.map((v) => {
        const inp = h("input", { type: "text", value: samples[v] ?? "", "data-var": v });
        inp.addEventListener("input", () => { samples[v] = inp.value; render(); });
        return field(`Sample ${v}`, inp);
      });
      fill(samplesEl, ...inputs);
      const render = () => {
        const vars = {};
        for (const v of compiled.variables) if (samples[v]) vars[v] = samples[v];
        showPreview(previewEl, compiled, vars);
      };
      render();
    }

    const form = h("form", { class: "card editor", "aria-labelledby": "tpl-edit-h" },
      h("h2", { id: "tpl-edit-h" }, isNew ? "New template" : `Edit ${t.key}`),
      h("div", { class: "cols" },
        h("div", {},
          field("Key", key, "Used as template_key in CleverTap; cannot change after creation."),
          field("Name", name, "Optional; defaults to the key."),
          field("Title", title, "{name} is a variable; {{ and }} are literal braces."),
          field("Body", body),
          field("Data (optional JSON object)", data, "Variables work inside its string values too.")),
        h("div", {},
          h("h3", {}, "Detected variables"), varsEl,
          h("h3", {}, "Preview"), samplesEl, previewEl)),
      h("div", { class: "buttons" },
        h("button", { type: "submit" }, isNew ? "Create template" : "Save template"),
        isNew ? null : h("button", { type: "button", class: "danger", onclick: remove }, "Delete"),
        h("button", { type: "button", class: "link", onclick: () => editorEl.replaceChildren() }, "Close")),
      status.el);
    for (const el of [title, body, data]) el.addEventListener("input", update);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      status.clear();
      let payload;
      try {
        payload = { title: title.value, body: body.value, data: parseData() };
      } catch (e) { status.error(e); data.focus(); return; }
      if (name.value.trim()) payload.name = name.value.trim();
      try {
        const saved = await api("PUT", `/v1/templates/${encodeURIComponent(key.value.trim())}`, { auth: "app", body: payload });
        await load();
        edit(saved).ok(`Saved ${saved.key} with variables: ${saved.variables.join(", ") || "none"}.`);
      } catch (e) { status.error(e); }
    });
    async function remove() {
      if (!confirm(`Delete template ${t.key}? Webhooks naming it will get 400 unknown_template.`)) return;
      try {
        await api("DELETE", `/v1/templates/${encodeURIComponent(t.key)}`, { auth: "app" });
        editorEl.replaceChildren();
        await load();
        listStatus.ok(`Deleted ${t.key}.`);
      } catch (e) { status.error(e); }
    }
    fill(editorEl, form);
    update();
    (isNew ? key : title).focus();
    return status;
  }

  try { await load(); } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      root.append(h("p", { class: "status error", role: "alert" }, `${e.describe()}: paste a valid API token for this app above.`));
      return;
    }
    throw e;
  }
  root.append(listEl, editorEl);
}
