// Small DOM helpers shared by the console's modules.

/**
 * Creates an element. `attrs` keys starting with "on" add listeners; `dataset` and
 * boolean values are handled; children may be strings, nodes, arrays, null or false.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      for (const [name, data] of Object.entries(value)) el.dataset[name] = asText(data);
    } else if (key === "className") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, asText(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : asText(child));
  }
}

/**
 * Any value as text, never throwing: strings as they are, other JSON as JSON (an object
 * from a server may carry a `toString` that is not a function).
 */
export function asText(value) {
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (value === undefined) return "";
  return pretty(value);
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** JSON for people: indented, with long strings kept whole. */
export function pretty(value) {
  try {
    return JSON.stringify(value, null, 2) ?? "";
  } catch {
    return Object.prototype.toString.call(value);
  }
}

/**
 * Arrow-key navigation inside a group of buttons (one tab stop for the whole group):
 * Up/Down (or Left/Right with `horizontal`), Home and End move the focus.
 */
export function rovingFocus(container, selector, { horizontal = false } = {}) {
  const prev = horizontal ? "ArrowLeft" : "ArrowUp";
  const next = horizontal ? "ArrowRight" : "ArrowDown";
  container.addEventListener("keydown", (event) => {
    if (![prev, next, "Home", "End"].includes(event.key)) return;
    const items = [...container.querySelectorAll(selector)];
    const at = items.indexOf(document.activeElement);
    if (at < 0 || items.length === 0) return;
    event.preventDefault();
    let to = at;
    if (event.key === prev) to = (at - 1 + items.length) % items.length;
    if (event.key === next) to = (at + 1) % items.length;
    if (event.key === "Home") to = 0;
    if (event.key === "End") to = items.length - 1;
    for (const item of items) item.tabIndex = -1;
    items[to].tabIndex = 0;
    items[to].focus();
  });
}

/** Makes exactly one item of a roving group reachable with Tab: the current one. */
export function setTabStop(items, current) {
  items.forEach((item, i) => {
    item.tabIndex = item === current || (!current && i === 0) ? 0 : -1;
  });
}
