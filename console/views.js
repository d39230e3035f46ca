// What the console shows of one tool, resource or prompt: its form (generated from the
// tool's input schema, or from the prompt's arguments), and the outcome of its latest
// run: progress, result (text, images, audio, embedded resources, structured content)
// or error. Each view repaints itself through its `paint` when its run changes.

import { h, pretty, replace } from "./dom.js";
import { schemaForm } from "./schema-form.js";

function annotationsOf(tool) {
  const a = typeof tool.annotations === "object" && tool.annotations !== null ? tool.annotations : {};
  const chips = [];
  if (a.readOnlyHint) chips.push("read-only");
  if (a.destructiveHint) chips.push("destructive");
  if (a.idempotentHint) chips.push("idempotent");
  if (a.openWorldHint) chips.push("open world");
  return chips.map((c) => h("span", { className: `chip${c === "destructive" ? " chip-warn" : ""}` }, c));
}

/**
 * The view of one tool: its form and its latest run. Throws only on a bug; the caller
 * shows the error in place of the view, so that no other tool's form stays on screen.
 */
export function toolView(view, tool, send) {
  const runKey = `tools:${tool.name}`;
  const form = schemaForm(tool.inputSchema ?? {});
  const progressId = `progress-${tool.name}`;
  const wantProgress = h("input", { id: progressId, type: "checkbox", checked: true });
  const callButton = h("button", { type: "submit", className: "primary" }, "Call");
  const cancelButton = h("button", { type: "button", hidden: true }, "Cancel");
  const output = h("div", { className: "run-output", "aria-live": "polite" });
  const el = h(
    "form",
    { className: "item", "aria-labelledby": "item-title", novalidate: true },
    h("h3", { id: "item-title" }, typeof tool.title === "string" && tool.title && tool.title !== tool.name ? `${tool.title} ` : "", h("code", {}, tool.name)),
    tool.description ? h("p", { className: "description" }, tool.description) : null,
    h("div", { className: "chips" }, annotationsOf(tool)),
    form.fields,
    h("div", { className: "actions" }, callButton, cancelButton, h("div", { className: "check" }, wantProgress, h("label", { for: progressId }, "Ask for progress"))),
    output,
    rawJson(tool.inputSchema ?? {}, "Input schema"),
  );
  const paint = () => {
    const run = view.runs.get(runKey);
    callButton.disabled = Boolean(run?.running);
    cancelButton.hidden = !run?.running;
    replace(output, runOutput(run, toolResult));
  };
  el.addEventListener("submit", (event) => {
    event.preventDefault();
    const args = form.read();
    if (!args.ok) return;
    const params = { name: tool.name, arguments: args.value };
    send(runKey, "tools/call", params, wantProgress.checked, paint);
    cancelButton.focus();
  });
  cancelButton.addEventListener("click", () => {
    view.runs.get(runKey)?.abort.abort();
    callButton.focus();
  });
  el.paint = paint;
  paint();
  return el;
}

export function resourceView(view, resource, send) {
  const runKey = `resources:${resource.uri}`;
  const readButton = h("button", { type: "submit", className: "primary" }, "Read");
  const output = h("div", { className: "run-output", "aria-live": "polite" });
  const el = h(
    "form",
    { className: "item", "aria-labelledby": "item-title", novalidate: true },
    h("h3", { id: "item-title" }, resource.name ?? resource.uri),
    h("p", {}, h("code", {}, resource.uri), typeof resource.mimeType === "string" ? ` · ${resource.mimeType}` : ""),
    resource.description ? h("p", { className: "description" }, resource.description) : null,
    h("div", { className: "actions" }, readButton),
    output,
  );
  const paint = () => {
    const run = view.runs.get(runKey);
    readButton.disabled = Boolean(run?.running);
    replace(output, runOutput(run, resourceResult));
  };
  el.addEventListener("submit", (event) => {
    event.preventDefault();
    send(runKey, "resources/read", { uri: resource.uri }, false, paint);
  });
  el.paint = paint;
  paint();
  return el;
}

export function promptView(view, prompt, send) {
  const runKey = `prompts:${prompt.name}`;
  const schema = { type: "object", properties: {}, required: [] };
  for (const arg of Array.isArray(prompt.arguments) ? prompt.arguments : []) {
    if (typeof arg?.name !== "string") continue;
    schema.properties[arg.name] = { type: "string", description: arg.description };
    if (arg.required === true) schema.required.push(arg.name);
  }
  const form = schemaForm(schema);
  const getButton = h("button", { type: "submit", className: "primary" }, "Get prompt");
  const output = h("div", { className: "run-output", "aria-live": "polite" });
  const el = h(
    "form",
    { className: "item", "aria-labelledby": "item-title", novalidate: true },
    h("h3", { id: "item-title" }, prompt.title ?? prompt.name),
    prompt.description ? h("p", { className: "description" }, prompt.description) : null,
    form.fields,
    h("div", { className: "actions" }, getButton),
    output,
  );
  const paint = () => {
    const run = view.runs.get(runKey);
    getButton.disabled = Boolean(run?.running);
    replace(output, runOutput(run, promptResult));
  };
  el.addEventListener("submit", (event) => {
    event.preventDefault();
    const args = form.read();
    if (!args.ok) return;
    send(runKey, "prompts/get", { name: prompt.name, arguments: args.value }, false, paint);
  });
  el.paint = paint;
  paint();
  return el;
}

/** Sends one request for the item `runKey` and keeps its progress and outcome. */
function runOutput(run, showResult) {
  if (!run) return null;
  const parts = [];
  const last = run.progress.at(-1);
  if (run.running || run.progress.length > 0) {
    const progress = h("progress", { "aria-label": "Progress" });
    if (!run.running) {
      progress.max = 1;
      progress.value = 1;
    } else if (last?.total) {
      progress.max = last.total;
      progress.value = Math.min(last.progress, last.total);
    }
    const text = last
      ? `${last.progress}${last.total ? ` of ${last.total}` : ""}${last.message ? `: ${last.message}` : ""}`
      : "waiting for the first update…";
    parts.push(
      h("div", { className: "progress-line" }, progress, h("span", { className: "progress-text" }, run.running ? `Running · ${text}` : `Finished · last update ${text}`)),
    );
  }
  if (run.progress.length > 0) {
    parts.push(
      h(
        "details",
        { className: "progress-log" },
        h("summary", {}, `${run.progress.length} progress update${run.progress.length === 1 ? "" : "s"}`),
        h("ol", { "aria-label": "Progress updates" }, run.progress.map((p) => h("li", {}, `${p.progress}${p.total ? `/${p.total}` : ""}${p.message ? ` ${p.message}` : ""}`))),
      ),
    );
  }
  if (!run.running) {
    if (run.error) {
      parts.push(
        h(
          "section",
          { className: "result bad", "aria-label": "Result" },
          h("p", { className: "result-head" }, `Failed after ${run.ms} ms: ${errorText(run.error)}`),
          run.error.data !== undefined ? h("pre", {}, pretty(run.error.data)) : null,
        ),
      );
    } else {
      parts.push(showResult(run.result, run.ms));
    }
  }
  return parts;
}

function rawJson(value, title = "Raw JSON") {
  const details = h("details", { className: "raw" }, h("summary", {}, title));
  details.addEventListener("toggle", () => {
    if (details.open && details.children.length === 1) details.append(h("pre", {}, pretty(value)));
  });
  return details;
}

function contentBlock(block) {
  switch (block?.type) {
    case "text":
      return h("pre", { className: "text" }, block.text);
    case "image":
      return h("img", { src: `data:${block.mimeType};base64,${block.data}`, alt: `image (${block.mimeType})`, className: "image" });
    case "audio":
      return h("audio", { controls: true, src: `data:${block.mimeType};base64,${block.data}` });
    case "resource": {
      const r = block.resource ?? {};
      return h(
        "div",
        { className: "embedded" },
        h("p", {}, "Resource ", h("code", {}, r.uri ?? "")),
        r.text !== undefined ? h("pre", { className: "text" }, r.text) : h("p", { className: "hint" }, `binary, ${r.blob?.length ?? 0} base64 characters`),
      );
    }
    case "resource_link":
      return h("p", { className: "embedded" }, "Link to resource ", h("code", {}, block.uri ?? ""), block.name ? ` (${block.name})` : "");
    default:
      return h("pre", {}, pretty(block));
  }
}

function toolResult(result, ms) {
  const bad = Boolean(result?.isError);
  return h(
    "section",
    { className: bad ? "result bad" : "result", "aria-label": "Result" },
    h("p", { className: "result-head" }, bad ? `The tool reported an error (${ms} ms)` : `Result (${ms} ms)`),
    (result?.content ?? []).map(contentBlock),
    result?.structuredContent !== undefined ? [h("p", { className: "hint" }, "Structured content"), h("pre", {}, pretty(result.structuredContent))] : null,
    rawJson(result),
  );
}

function resourceResult(result, ms) {
  return h(
    "section",
    { className: "result", "aria-label": "Result" },
    h("p", { className: "result-head" }, `Contents (${ms} ms)`),
    (result?.contents ?? []).map((c) => contentBlock({ type: "resource", resource: c })),
    rawJson(result),
  );
}

function promptResult(result, ms) {
  return h(
    "section",
    { className: "result", "aria-label": "Result" },
    h("p", { className: "result-head" }, `Messages (${ms} ms)`, result?.description ? `: ${result.description}` : ""),
    (result?.messages ?? []).map((m) => h("div", { className: "message" }, h("p", { className: "role" }, m.role), contentBlock(m.content))),
    rawJson(result),
  );
}

export function errorText(err) {
  if (!err) return "";
  if (err.name === "AbortError") return "cancelled";
  const code = err.code !== undefined ? ` (${err.code})` : "";
  return `${err.message ?? err}${code}`;
}
