// Notification Builder: pick a template, fill its variables, preview, and copy the key-value
// pairs to paste into a CleverTap webhook (Campaign or Journey editor).

import { api, copyButton, field, fill, h, statusLine } from "../api.js";
import { showPreview } from "../preview.js";
import { compileTemplate } from "../render.js";

const TAG_SUGGESTIONS = ["{{Profile.Name}}", "{{Profile.First Name}}", "{{Profile.Email}}",
  "{{Profile.Identity}}", "{{Event.Amount}}"];

// The key-values exactly as the pipeline reads them: template_key, event_name and either
// variables (a JSON object in a string) or one var.<name> per variable.
export function keyValues(templateKey, eventName, variables, mode) {
  const kv = [["template_key", templateKey], ["event_name", eventName]];
  if (mode === "split") {
    for (const [k, v] of Object.entries(variables)) kv.push([`var.${k}`, v]);
  } else {
    kv.push(["variables", JSON.stringify(variables)]);
  }
  return kv;
}

export async function builderPage(root) {
  const templates = (await api("GET", "/v1/templates", { auth: "app" })).templates;
  if (!templates.length) {
    root.append(h("p", {}, "No templates yet: create one on the ", h("a", { href: "#templates" }, "Templates"), " page."));
    return;
  }
  const picker = h("select", { required: true },
    h("option", { value: "" }, "Choose a template"),
    templates.map((t) => h("option", { value: t.key }, `${t.name} (${t.key})`)));
  const eventName = h("input", { type: "text", required: true, maxlength: 200, autocomplete: "off",
    placeholder: "My First Campaign" });
  const modeJson = h("input", { type: "radio", name: "kv-mode", value: "json", checked: true, id: "kv-json" });
  const modeSplit = h("input", { type: "radio", name: "kv-mode", value: "split", id: "kv-split" });
  const varsEl = h("div", { class: "samples" });
  const previewEl = h("div", { "aria-live": "polite" });
  const kvEl = h("div", { "data-testid": "key-values" });
  const status = statusLine();
  const datalist = h("datalist", { id: "ct-tags" }, TAG_SUGGESTIONS.map((t) => h("option", { value: t })));
  let compiled = null;
  let template = null;
  const values = {};

  function choose() {
    template = templates.find((t) => t.key === picker.value) || null;
    compiled = template ? compileTemplate(template.title, template.body, template.data) : null;
    fill(varsEl, ...(compiled ? compiled.variables.map((v) => {
      const inp = h("input", { type: "text", value: values[v] ?? "", list: "ct-tags", "data-var": v, autocomplete: "off" });
      inp.addEventListener("input", () => { values[v] = inp.value; update(); });
      return field(v, inp, "A plain value, or CleverTap personalisation such as {{Profile.Name}}.");
    }) : []));
    update();
  }

  function update() {
    if (!compiled) {
      previewEl.replaceChildren();
      fill(kvEl, h("p", {}, "Choose a template to build its key-values."));
      return;
    }
    const vars = {};
    for (const v of compiled.variables) if (values[v]) vars[v] = values[v];
    showPreview(previewEl, compiled, vars);
    const problems = [];
    if (!eventName.value.trim()) problems.push("event name");
    for (const v of compiled.variables) if (!values[v]) problems.push(`variable ${v}`);
    const mode = modeSplit.checked ? "split" : "json";
    const kv = keyValues(template.key, eventName.value.trim(), vars, mode);
    const all = kv.map(([k, v]) => `${k}\t${v}`).join("\n");
    fill(kvEl, 
      problems.length ? h("p", { class: "notice", role: "status" }, `Still to fill: ${problems.join(", ")}.`) : null,
      h("table", { class: "kv" },
        h("caption", {}, "Key-values for the CleverTap webhook"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Value"), h("th", { scope: "col" }, ""))),
        h("tbody", {}, kv.map(([k, v]) => {
          const inp = h("input", { type: "text", readonly: true, value: v, class: "mono", "aria-label": `Value of ${k}`, "data-key": k });
          return h("tr", {}, h("th", { scope: "row", class: "mono" }, k), h("td", {}, inp),
            h("td", {}, copyButton(() => v, `value of ${k}`, inp)));
        }))),
      h("div", { class: "buttons" }, copyButton(() => all, "all key-values, one per line, key and value tab separated", null, "Copy all")),
      mode === "json" ? h("p", { class: "hint" },
        "CleverTap substitutes personalisation inside the variables string before calling the webhook; ",
        "a profile value containing a double quote would break that JSON. Use one key-value per variable to avoid it.") : null);
  }

  picker.addEventListener("change", choose);
  eventName.addEventListener("input", update);
  modeJson.addEventListener("change", update);
  modeSplit.addEventListener("change", update);
  root.append(datalist,
    h("div", { class: "cols" },
      h("section", { class: "card", "aria-labelledby": "b-in-h" },
        h("h2", { id: "b-in-h" }, "Notification"),
        field("Template", picker),
        field("Event name", eventName, "The CleverTap event that SENT and READ are reported under (evtName)."),
        h("fieldset", {}, h("legend", {}, "Variables as"),
          h("div", { class: "radio" }, modeJson, h("label", { for: "kv-json" }, "one variables key-value (JSON string)")),
          h("div", { class: "radio" }, modeSplit, h("label", { for: "kv-split" }, "one var.<name> key-value per variable"))),
        h("h3", {}, "Variables"), varsEl, status.el),
      h("section", { class: "card", "aria-labelledby": "b-out-h" },
        h("h2", { id: "b-out-h" }, "Preview"), previewEl,
        h("h2", {}, "Paste into CleverTap"), kvEl)));
  update();
}
