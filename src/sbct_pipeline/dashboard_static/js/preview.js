// The notification preview card, shared by the template editor and the Notification Builder.

import { fill, h } from "./api.js";
import { isPersonalisation, renderData, segments } from "./render.js";

function line(parts, variables) {
  return segments(parts, variables).map((s) => {
    if ("text" in s) return s.text;
    if (s.value === undefined) return h("mark", { class: "missing", title: `no value for ${s.name}` }, `{${s.name}}`);
    if (isPersonalisation(s.value)) return h("span", { class: "tag", title: `${s.name}: filled in by CleverTap` }, s.value);
    return h("span", { class: "filled", title: s.name }, s.value);
  });
}

// Fill `el` with the preview of `compiled` rendered with `variables`, or with `error`.
export function showPreview(el, compiled, variables, error) {
  if (error) {
    fill(el, h("p", { class: "status error", role: "alert" }, error));
    return;
  }
  const missing = compiled.variables.filter((v) => !Object.hasOwn(variables, v));
  const data = renderData(compiled.data, variables);
  fill(el, 
    h("div", { class: "notification", "data-testid": "preview" },
      h("p", { class: "n-title", "data-testid": "preview-title" }, line(compiled.title, variables)),
      h("p", { class: "n-body", "data-testid": "preview-body" }, line(compiled.body, variables)),
      data === null || data === undefined ? null
        : h("pre", { class: "n-data", "data-testid": "preview-data" }, JSON.stringify(data, null, 2))),
    missing.length
      ? h("p", { class: "hint" }, `Without a value: ${missing.join(", ")}. Delivery fails for a user whose webhook lacks one.`)
      : null);
}
