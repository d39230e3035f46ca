// The live stream of every frame, both directions, with connection events between them.
// Entries are kept in a bounded list (the oldest go first); the page shows the newest
// that match the filter, rendered in batches once per animation frame.

import { asText, h, pretty } from "./dom.js";

/** Frames kept for filtering, and their total size; beyond either, the oldest go. */
const KEPT = 5000;
const KEPT_BYTES = 32 * 1024 * 1024;
/** Rows shown at once; the newest matching ones. */
const SHOWN = 400;

/** A one-line summary of a frame; a message of odd shapes gets none rather than an error. */
export function summarize(frame) {
  try {
    return asText(summary(frame));
  } catch {
    return "";
  }
}

function summary(frame) {
  switch (frame?.type) {
    case "rpc": {
      const m = frame.message ?? {};
      if (m.method) {
        const detail = methodDetail(m.method, m.params);
        const call = detail ? `${m.method} ${detail}` : m.method;
        return m.id !== undefined ? `${call} #${fmtId(m.id)}` : call;
      }
      if (m.error) return `#${fmtId(m.id)} error ${m.error.code}: ${m.error.message ?? ""}`;
      if (m.id !== undefined) return `#${fmtId(m.id)} result`;
      return "message";
    }
    case "hello":
      return frame.resume ? `resume ${short(frame.resume.session)} after seq ${frame.resume.last_seq}` : `client ${frame.client?.name ?? ""}`;
    case "welcome":
      return `session ${short(frame.session)}${frame.resumed ? " resumed" : ""}`;
    case "status":
    case "session":
      return frame.reason ? `${frame.state}: ${frame.reason}` : frame.state;
    case "error":
      return `${frame.code}: ${frame.message}`;
    case "ack":
      return `up to seq ${frame.seq}`;
    default:
      return "";
  }
}

/** What a message is about, beyond its method: the tool, the resource, the progress. */
function methodDetail(method, params) {
  if (!params || typeof params !== "object") return "";
  switch (method) {
    case "tools/call":
    case "prompts/get":
      return typeof params.name === "string" ? params.name : "";
    case "resources/read":
    case "resources/subscribe":
    case "notifications/resources/updated":
      return typeof params.uri === "string" ? params.uri : "";
    case "notifications/progress":
      return `${params.progress}${params.total !== undefined ? `/${params.total}` : ""}${params.message ? ` ${params.message}` : ""}`;
    case "notifications/message":
      return `${params.level ?? ""} ${typeof params.data === "string" ? params.data : JSON.stringify(params.data ?? "")}`.slice(0, 200);
    default:
      return "";
  }
}

function fmtId(id) {
  return JSON.stringify(id) ?? "";
}

function short(session) {
  return typeof session === "string" ? session.slice(0, 8) : "";
}

/** The frame as shown: an API key in `hello` is never displayed. */
export function redact(frame) {
  if (frame && frame.type === "hello" && "token" in frame) return { ...frame, token: "(hidden)" };
  return frame;
}

/**
 * Wires the stream to its controls. `els`: list, filter, server, direction, pause,
 * clear, count. Returns `{ add(direction, frame, size), note(text, tone), servers(names) }`
 * (`size`: the frame's length on the wire, for the bound on what is kept).
 */
export function createStream(els) {
  const entries = [];
  let dropped = 0;
  let paused = false;
  let scheduled = false;
  let counter = 0;
  let bytes = 0;

  function matches(entry, query, server, direction) {
    if (direction && entry.direction !== direction) return false;
    if (server && entry.server !== server) return false;
    if (!query) return true;
    entry.text ??= `${entry.direction} ${entry.server ?? ""} ${entry.kind} ${entry.summary} ${
      entry.frame ? JSON.stringify(redact(entry.frame)) : ""
    }`.toLowerCase();
    return entry.text.includes(query);
  }

  function row(entry) {
    const time = entry.time.toLocaleTimeString([], { hour12: false });
    const arrow = entry.direction === "out" ? "→" : entry.direction === "in" ? "←" : "•";
    const dirLabel = entry.direction === "out" ? "sent" : entry.direction === "in" ? "received" : "connection";
    const head = [
      h("span", { className: "s-time" }, time),
      h("span", { className: "s-dir", title: dirLabel }, h("span", { "aria-hidden": "true" }, arrow), h("span", { className: "sr" }, dirLabel)),
      h("span", { className: "s-seq" }, entry.seq ?? ""),
      h("span", { className: "s-server" }, entry.server ?? ""),
      h("span", { className: "s-sum" }, entry.kind === "rpc" || !entry.frame ? null : [h("span", { className: "s-type" }, entry.kind), " "], entry.summary),
    ];
    if (!entry.frame) {
      return h("li", { className: `s-row s-note tone-${entry.tone}`, dataset: { dir: "note" } }, h("div", { className: "s-line" }, head));
    }
    const details = h("details", {}, h("summary", { className: "s-line" }, head));
    details.addEventListener("toggle", () => {
      if (details.open && details.children.length === 1) {
        details.append(h("pre", { className: "s-json" }, pretty(redact(entry.frame))));
      }
    });
    const tone = entry.kind === "error" || entry.frame?.message?.error ? "bad" : "plain";
    return h("li", { className: `s-row tone-${tone}`, dataset: { dir: entry.direction } }, details);
  }

  function render() {
    scheduled = false;
    const query = els.filter.value.trim().toLowerCase();
    const server = els.server.value;
    const direction = els.direction.value;
    const shown = [];
    let total = 0;
    for (let i = entries.length - 1; i >= 0; i--) {
      if (matches(entries[i], query, server, direction)) {
        total++;
        if (shown.length < SHOWN) shown.push(entries[i]);
      }
    }
    shown.reverse();
    const list = els.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    // Keep rows already rendered (and any opened by the reader); add only the new ones.
    const existing = new Map([...list.children].map((li) => [li.dataset.n, li]));
    const rows = shown.map((entry) => existing.get(String(entry.n)) ?? row(entry));
    rows.forEach((li, i) => (li.dataset.n = String(shown[i].n)));
    list.replaceChildren(...rows);
    if (atBottom) list.scrollTop = list.scrollHeight;
    const kept = dropped > 0 ? ` (oldest ${dropped} dropped)` : "";
    els.count.textContent =
      total === entries.length ? `${entries.length} frames${kept}` : `${total} of ${entries.length} frames match${kept}`;
  }

  function schedule() {
    if (paused || scheduled) return;
    scheduled = true;
    requestAnimationFrame(render);
  }

  function push(entry) {
    entry.n = ++counter;
    entry.time = new Date();
    entries.push(entry);
    bytes += entry.size;
    while (entries.length > 1 && (entries.length > KEPT || bytes > KEPT_BYTES)) {
      bytes -= entries.shift().size;
      dropped++;
    }
    schedule();
  }

  for (const el of [els.filter, els.server, els.direction]) el.addEventListener("input", () => {
    els.list.replaceChildren();
    schedule();
  });
  els.pause.addEventListener("click", () => {
    paused = !paused;
    els.pause.setAttribute("aria-pressed", String(paused));
    els.pause.textContent = paused ? "Resume" : "Pause";
    schedule();
  });
  els.clear.addEventListener("click", () => {
    entries.length = 0;
    dropped = 0;
    bytes = 0;
    els.list.replaceChildren();
    schedule();
  });

  return {
    add(direction, frame, size = 0) {
      push({ direction, frame, size, server: frame?.server, seq: frame?.seq, kind: frame?.type ?? "?", summary: summarize(frame) });
    },
    note(text, tone = "info") {
      push({ direction: "note", kind: "connection", summary: text, tone, size: text.length });
    },
    servers(names) {
      const current = els.server.value;
      els.server.replaceChildren(h("option", { value: "" }, "all"), ...names.map((n) => h("option", { value: n }, n)));
      els.server.value = names.includes(current) ? current : "";
    },
  };
}
