// A form generated from a JSON Schema object (a tool's `inputSchema`, or a prompt's
// arguments): one labelled field per property, read back into arguments with the
// schema's types. Strings, numbers, integers, booleans and enums get their own controls;
// arrays, objects and anything more involved are edited as JSON text. Any valid schema
// renders: a boolean schema (`true` allows anything, `false` nothing) and members of
// `anyOf`/`oneOf`, `properties` or `required` of unexpected shapes are taken as what
// they allow, never trusted to be objects.

import { asText, h } from "./dom.js";

let formCount = 0;

/** A plain object (not null, not an array). */
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * A sub-schema as an object: `true` (and anything that is not a schema) allows anything,
 * `{}`; `false` allows nothing, `null`.
 */
export function schemaOf(value) {
  if (value === false) return null;
  return isObject(value) ? value : {};
}

/** The JSON type a field is edited as: "enum", "string", "number", "integer", "boolean" or "json". */
export function fieldKind(schema) {
  if (!isObject(schema)) return "json";
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return "enum";
  const alternatives = schema.anyOf ?? schema.oneOf;
  if (Array.isArray(alternatives) && alternatives.length > 0 && alternatives.every((s) => isObject(s) && "const" in s)) {
    return "enum";
  }
  let type = schema.type;
  if (Array.isArray(type)) type = type.find((t) => t !== "null") ?? "null";
  if (type === "string" || type === "number" || type === "integer" || type === "boolean") return type;
  return "json";
}

/** A value of `schema`'s shape to start from: defaults, first choices, empty strings. */
export function skeleton(schema, depth = 0) {
  if (!isObject(schema) || depth > 5) return null;
  if ("default" in schema) return schema.default;
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0];
  let type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (!type && isObject(schema.properties)) type = "object";
  switch (type) {
    case "object":
      return Object.fromEntries(
        Object.entries(isObject(schema.properties) ? schema.properties : {})
          .filter(([, v]) => v !== false)
          .map(([k, v]) => [k, skeleton(v, depth + 1)]),
      );
    case "array":
      return isObject(schema.items) ? [skeleton(schema.items, depth + 1)] : [];
    case "string":
      return "";
    case "number":
    case "integer":
      return 0;
    case "boolean":
      return false;
    default:
      return null;
  }
}

function enumValues(schema) {
  if (Array.isArray(schema.enum)) return schema.enum;
  return (schema.anyOf ?? schema.oneOf).map((s) => s.const);
}

/**
 * Builds a form for `schema` (type object). Returns `{ fields, read }`: `fields` is the
 * element holding the controls; `read()` returns `{ ok: true, value }` with the arguments,
 * or `{ ok: false }` after marking each invalid field with its message.
 */
export function schemaForm(schema) {
  const id = `f${++formCount}`;
  const object = schemaOf(schema) ?? {};
  const properties = isObject(object.properties) ? object.properties : {};
  const required = new Set(Array.isArray(object.required) ? object.required.filter((n) => typeof n === "string") : []);
  const names = Object.keys(properties);
  const readers = [];
  const fields = h("div", { className: "fields" });
  if (names.length === 0) {
    fields.append(h("p", { className: "hint" }, "No arguments."));
  }
  names.forEach((name, index) => {
    const property = schemaOf(properties[name]);
    const field = property
      ? buildField(`${id}-${index}`, name, property, required.has(name))
      : refusedField(`${id}-${index}`, name);
    fields.append(field.element);
    readers.push(field);
  });
  return {
    fields,
    read() {
      // Built as entries: a property named "__proto__" is an argument like any other.
      const entries = [];
      let ok = true;
      for (const field of readers) {
        const result = field.read();
        field.showError(result.error);
        if (result.error) ok = false;
        else if (result.present) entries.push([field.name, result.value]);
      }
      if (!ok) readers.find((f) => f.invalid())?.focus();
      return ok ? { ok, value: Object.fromEntries(entries) } : { ok };
    },
  };
}

/** A property whose schema is `false`: shown, but it accepts no value and is never sent. */
function refusedField(id, name) {
  const element = h(
    "div",
    { className: "field field-none" },
    h("label", { for: id }, h("span", { className: "field-name" }, name), h("span", { className: "field-type" }, "no value allowed")),
    h("input", { id, type: "text", disabled: true, "aria-describedby": `${id}-desc` }),
    h("p", { id: `${id}-desc`, className: "hint" }, "The schema allows no value here (false); it is left out."),
  );
  return { name, element, read: () => ({ present: false }), focus() {}, invalid: () => false, showError() {} };
}

function buildField(id, name, schema, isRequired) {
  const kind = fieldKind(schema);
  const descriptionId = `${id}-desc`;
  const errorId = `${id}-err`;
  const description = typeof schema.description === "string" ? schema.description : kind === "json" ? "JSON" : "";
  const hasDefault = "default" in schema;
  let control;
  let touched = false;

  if (kind === "enum") {
    const values = enumValues(schema);
    control = h("select", { id });
    if (!isRequired || !hasDefault) control.append(h("option", { value: "" }, isRequired ? "choose…" : "(not set)"));
    values.forEach((v, i) => {
      const option = h("option", { value: String(i) }, typeof v === "string" ? v : JSON.stringify(v));
      if (hasDefault && JSON.stringify(schema.default) === JSON.stringify(v)) option.selected = true;
      control.append(option);
    });
  } else if (kind === "boolean") {
    control = h("input", { id, type: "checkbox" });
    control.checked = schema.default === true;
  } else if (kind === "number" || kind === "integer") {
    control = h("input", { id, type: "number", step: kind === "integer" ? "1" : "any", inputmode: kind === "integer" ? "numeric" : "decimal" });
    if (typeof schema.minimum === "number") control.min = String(schema.minimum);
    if (typeof schema.maximum === "number") control.max = String(schema.maximum);
    if (hasDefault) control.value = asText(schema.default);
  } else if (kind === "string") {
    const long = (typeof schema.maxLength === "number" && schema.maxLength > 200) || /text|content|body|query|prompt/i.test(name);
    control = long ? h("textarea", { id, rows: 3 }) : h("input", { id, type: "text" });
    control.spellcheck = false;
    if (hasDefault) control.value = asText(schema.default);
  } else {
    // Required JSON starts as a skeleton of the schema to fill in; optional JSON shows
    // one as a placeholder, and is left out of the arguments while empty.
    const start = JSON.stringify(skeleton(schema), null, 2) ?? "null";
    control = h("textarea", { id, rows: Math.min(10, Math.max(3, start.split("\n").length)), className: "json" });
    control.spellcheck = false;
    if (hasDefault || isRequired) control.value = start;
    else control.placeholder = start.length < 400 ? start : "JSON";
  }
  control.name = name;
  if (isRequired && kind !== "boolean") control.required = true;
  control.setAttribute("aria-describedby", `${descriptionId} ${errorId}`);
  control.addEventListener("input", () => (touched = true));
  control.addEventListener("change", () => (touched = true));

  const jsonType = typeof schema.type === "string" ? schema.type : Array.isArray(schema.type) ? schema.type.filter((t) => typeof t === "string").join(", ") || "JSON" : "JSON";
  const typeLabel = kind === "json" ? jsonType : kind === "enum" ? "choice" : kind;
  const label = h(
    "label",
    { for: id },
    h("span", { className: "field-name" }, name),
    h("span", { className: "field-type" }, String(typeLabel), isRequired ? ", required" : ""),
  );
  const error = h("p", { id: errorId, className: "field-error", role: "alert" });
  const element = h(
    "div",
    { className: `field field-${kind}` },
    kind === "boolean" ? h("div", { className: "check" }, control, label) : [label, control],
    h("p", { id: descriptionId, className: "hint" }, description),
    error,
  );

  function read() {
    if (kind === "boolean") {
      if (!isRequired && !hasDefault && !touched) return { present: false };
      return { present: true, value: control.checked };
    }
    if (kind === "enum") {
      if (control.value === "") return isRequired ? { error: "Choose a value." } : { present: false };
      return { present: true, value: enumValues(schema)[Number(control.value)] };
    }
    const text = control.value;
    if (text.trim() === "" && kind !== "string") {
      return isRequired ? { error: "A value is required." } : { present: false };
    }
    if (kind === "string") {
      if (text === "" && !isRequired) return { present: false };
      return { present: true, value: text };
    }
    if (kind === "number" || kind === "integer") {
      const number = Number(text);
      if (!Number.isFinite(number)) return { error: "Enter a number." };
      if (kind === "integer" && !Number.isInteger(number)) return { error: "Enter a whole number." };
      return { present: true, value: number };
    }
    try {
      return { present: true, value: JSON.parse(text) };
    } catch (err) {
      return { error: `Not valid JSON: ${err.message}` };
    }
  }

  return {
    name,
    element,
    read,
    focus: () => control.focus(),
    invalid: () => control.getAttribute("aria-invalid") === "true",
    showError(message) {
      error.textContent = message ?? "";
      if (message) control.setAttribute("aria-invalid", "true");
      else control.removeAttribute("aria-invalid");
    },
  };
}
