// Template placeholder syntax, the same rules as src/sbct_pipeline/templates.py:
// {name} is a placeholder, {{ and }} are literal braces, names are [A-Za-z_][A-Za-z0-9_.-]*.
// Positions count code points, as Python does, so error messages match the server's.
// tests/test_dashboard_browser.py checks this module against the Python one.

const NAME = /^[A-Za-z_][A-Za-z0-9_.\-]*$/;

export class TemplateSyntaxError extends Error {
  constructor(field, position, problem) {
    super(`${field}: ${problem} at character ${position}`);
    this.field = field;
    this.position = position;
  }
}

// Python's repr() of a str, for the messages that quote a bad name.
function pyRepr(s) {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = "";
  for (const c of s) {
    if (c === "\\") out += "\\\\";
    else if (c === q) out += "\\" + c;
    else if (c === "\n") out += "\\n";
    else if (c === "\r") out += "\\r";
    else if (c === "\t") out += "\\t";
    else out += c;
  }
  return q + out + q;
}

// Compile a text into parts: literal strings at even indexes, variable names at odd ones.
export function compileText(text, field = "text") {
  const cs = Array.from(text);
  const n = cs.length;
  const parts = [];
  let buf = "";
  let i = 0;
  while (i < n) {
    const c = cs[i];
    if (c === "{") {
      if (i + 1 < n && cs[i + 1] === "{") { buf += "{"; i += 2; continue; }
      const end = cs.indexOf("}", i + 1);
      if (end < 0) throw new TemplateSyntaxError(field, i, "unclosed '{'");
      const name = cs.slice(i + 1, end).join("");
      if (!NAME.test(name)) {
        const what = name ? `invalid variable name ${pyRepr(name)}` : "empty placeholder";
        throw new TemplateSyntaxError(field, i, what + " (use {{ for a literal brace)");
      }
      parts.push(buf, name);
      buf = "";
      i = end + 1;
    } else if (c === "}") {
      if (i + 1 < n && cs[i + 1] === "}") { buf += "}"; i += 2; continue; }
      throw new TemplateSyntaxError(field, i, "unmatched '}' (use }} for a literal brace)");
    } else {
      buf += c;
      i += 1;
    }
  }
  parts.push(buf);
  return parts;
}

// A compiled string inside data (a class, so a user's own {"parts": [...]} is never mistaken).
class Parts {
  constructor(parts) { this.parts = parts; }
}

function compileData(value, path) {
  if (typeof value === "string") return new Parts(compileText(value, path));
  if (Array.isArray(value)) return value.map((v, i) => compileData(v, `${path}[${i}]`));
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = compileData(v, `${path}.${k}`);
    return out;
  }
  return value;
}

function dataNames(value, out) {
  if (value === null || typeof value !== "object") return;
  if (value instanceof Parts) {
    for (let k = 1; k < value.parts.length; k += 2) out.push(value.parts[k]);
  } else {
    for (const v of Object.values(value)) dataNames(v, out);
  }
}

// Compile title, body and data; throws TemplateSyntaxError naming the field.
export function compileTemplate(title, body, data) {
  const t = compileText(title, "title");
  const b = compileText(body, "body");
  const d = compileData(data ?? null, "data");
  const names = [];
  for (let k = 1; k < t.length; k += 2) names.push(t[k]);
  for (let k = 1; k < b.length; k += 2) names.push(b[k]);
  dataNames(d, names);
  return { title: t, body: b, data: d, variables: [...new Set(names)] };
}

// Render parts to segments: {text} literals and {name, value} placeholders (value undefined
// when the variable is missing), so a page can show which text came from which variable.
export function segments(parts, variables) {
  const out = [];
  for (let k = 0; k < parts.length; k++) {
    if (k % 2 === 0) { if (parts[k]) out.push({ text: parts[k] }); }
    else out.push({ name: parts[k], value: Object.hasOwn(variables, parts[k]) ? variables[parts[k]] : undefined });
  }
  return out;
}

export function renderText(parts, variables) {
  return segments(parts, variables)
    .map((s) => ("text" in s ? s.text : s.value ?? `{${s.name}}`)).join("");
}

export function renderData(value, variables) {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v) => renderData(v, variables));
  if (value instanceof Parts) {
    return renderText(value.parts, variables);
  }
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = renderData(v, variables);
  return out;
}

// Render a compiled template as the worker would; missing names listed, never blanked.
export function render(compiled, variables) {
  const missing = compiled.variables.filter((v) => !Object.hasOwn(variables, v));
  return {
    title: renderText(compiled.title, variables),
    body: renderText(compiled.body, variables),
    data: renderData(compiled.data, variables),
    missing,
  };
}

// CleverTap personalisation such as {{Profile.Name}} or {{Event.Amount | default: "0"}}:
// CleverTap fills it in before calling the webhook.
export function isPersonalisation(value) {
  return /\{\{\s*[^{}]+\}\}/.test(value);
}
