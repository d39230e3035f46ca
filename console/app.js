// The mcpmux web console: one WebSocket to the gateway that served this page (through
// the mcpmux client library), every server with its live state, browsing and calling
// tools, resources and prompts, and the live stream of every frame.

import { connect } from "./mcpmux/index.js";
import { h, replace, rovingFocus, setTabStop } from "./dom.js";
import { createStream } from "./stream.js";
import { errorText, promptView, resourceView, toolView } from "./views.js";

const KEY_STORAGE = "mcpmux.console.key";
const CLIENT_INFO = { name: "mcpmux-console", version: "1.0.0" };
const KINDS = {
  tools: { method: "tools/list", field: "tools", capability: "tools", label: "Tools" },
  resources: { method: "resources/list", field: "resources", capability: "resources", label: "Resources" },
  prompts: { method: "prompts/list", field: "prompts", capability: "prompts", label: "Prompts" },
};
/** Progress updates kept per call (the newest). */
const PROGRESS_KEPT = 200;

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  session: $("session"),
  keyButton: $("key-button"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyForget: $("key-forget"),
  banner: $("banner"),
  serverList: $("server-list"),
  noServers: $("no-servers"),
  detail: $("detail"),
  detailTitle: $("detail-title"),
  detailState: $("detail-state"),
  initButton: $("init-button"),
  closeButton: $("close-button"),
  serverInfo: $("server-info"),
  tabs: $("tabs"),
  browse: $("browse"),
  itemList: $("item-list"),
  moreButton: $("more-button"),
  itemView: $("item-view"),
};

const stream = createStream({
  list: $("stream-list"),
  filter: $("stream-filter"),
  server: $("stream-server"),
  direction: $("stream-direction"),
  pause: $("stream-pause"),
  clear: $("stream-clear"),
  count: $("stream-count"),
});

/** Everything the page knows; rebuilt on every new connection. */
const app = {
  mux: null,
  /** Bumped by every (re)start, so that an old connection's late events are ignored. */
  generation: 0,
  /** name -> view of one server (see `serverView`). */
  servers: new Map(),
  selected: null,
  retryTimer: null,
};

function serverView(name, state) {
  return {
    name,
    state,
    session: "none", // "none" | "opening" | "open" | "lost" | "closed"
    reason: "",
    info: null,
    tab: "tools",
    lists: {},
    selectedItem: null,
    /** key -> { running, progress[], result, error, ms, abort } of the latest run. */
    runs: new Map(),
  };
}

// ---------------------------------------------------------------- connection

function gatewayUrl() {
  const url = new URL("/ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || undefined;
  } catch {
    return undefined;
  }
}

async function start() {
  const generation = ++app.generation;
  clearTimeout(app.retryTimer);
  const previous = app.mux;
  app.mux = null;
  previous?.close().catch(() => {});
  app.servers.clear();
  renderServers();
  renderDetail();
  showConnection("connecting", "Connecting…");
  const token = storedKey();
  const WebSocket = tappedWebSocket((direction, data) => {
    if (generation === app.generation) showFrame(direction, data);
  });
  let mux;
  try {
    mux = await connect(gatewayUrl(), { token, client: CLIENT_INFO, reconnect: true, WebSocket });
  } catch (err) {
    if (generation === app.generation) connectFailed(err);
    return;
  }
  if (generation !== app.generation) {
    mux.close().catch(() => {});
    return;
  }
  app.mux = mux;
  hideBanner();
  wire(mux, generation);
  for (const [name, state] of mux.servers) app.servers.set(name, serverView(name, state));
  stream.servers([...app.servers.keys()]);
  stream.note(`Connected: session ${shortId(mux.session)}`, "good");
  showConnection("open", "Connected");
  if (!app.selected || !app.servers.has(app.selected)) app.selected = app.servers.keys().next().value ?? null;
  renderServers();
  renderDetail();
}

/**
 * The browser's WebSocket, watched: every frame it sends or receives is shown in the
 * stream, from the first `hello` on (the key in it is hidden when shown).
 */
function tappedWebSocket(tap) {
  return class TappedWebSocket extends globalThis.WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener("message", (event) => tap("in", event.data));
    }

    send(data) {
      tap("out", data);
      super.send(data);
    }
  };
}

/** 4501: the gateway wants a (different) API key. `err` is a failed connect or a close event. */
function isUnauthorized(err) {
  return err?.code === 4501 || err?.data?.code === 4501;
}

function showFrame(direction, data) {
  let frame;
  try {
    frame = typeof data === "string" ? JSON.parse(data) : { type: "(binary)" };
  } catch {
    frame = { type: "(not JSON)", text: String(data).slice(0, 200) };
  }
  stream.add(direction, frame, typeof data === "string" ? data.length : 0);
  if (frame?.type === "welcome") ui.session.textContent = `session ${shortId(frame.session)}`;
}

function connectFailed(err) {
  if (isUnauthorized(err)) {
    showConnection("closed", "Needs an API key");
    askForKey(storedKey() ? "The gateway refused this API key. Enter another one." : "This gateway needs an API key.");
    return;
  }
  showConnection("closed", "Not connected");
  showBanner(`Cannot connect to the gateway: ${err?.message ?? err}. Trying again in 3 s.`, "Try now", start);
  app.retryTimer = setTimeout(start, 3000);
}

function wire(mux, generation) {
  const live = (fn) => (e) => {
    if (generation === app.generation) fn(e);
  };
  mux.on("connection", live(onConnection));
  mux.on("status", live(({ server, state }) => {
    const view = app.servers.get(server) ?? addServer(server);
    view.state = state;
    renderServers();
    if (app.selected === server) renderDetail();
  }));
  mux.on("session", live(({ server, state, reason }) => {
    const view = app.servers.get(server);
    if (!view) return;
    if (state === "open") {
      if (view.session !== "opening") view.session = "open";
    } else {
      view.session = state;
      view.reason = reason ?? "";
      view.info = null;
    }
    renderServers();
    if (app.selected === server) renderDetail();
  }));
  for (const name of mux.servers.keys()) listenForChanges(mux, name, generation);
}

function addServer(name) {
  const view = serverView(name, undefined);
  app.servers.set(name, view);
  stream.servers([...app.servers.keys()]);
  if (app.mux) listenForChanges(app.mux, name, app.generation);
  return view;
}

/** Lists that the server says changed are fetched again while they are on screen. */
function listenForChanges(mux, name, generation) {
  for (const [kind, spec] of Object.entries(KINDS)) {
    mux.server(name).onNotification(`notifications/${spec.capability}/list_changed`, () => {
      const view = app.servers.get(name);
      if (generation !== app.generation || !view || view.session !== "open") return;
      view.lists[kind] = undefined;
      if (app.selected === name && view.tab === kind) loadList(view, kind);
    });
  }
}

function onConnection(e) {
  switch (e.state) {
    case "connecting":
      showConnection("connecting", "Connecting…");
      break;
    case "reconnecting": {
      const why = e.code ? ` (code ${e.code}${e.reason ? `: ${e.reason}` : ""})` : "";
      const attempt = e.attempt ? `, attempt ${e.attempt}` : "";
      showConnection("reconnecting", `Reconnecting${attempt}…`);
      stream.note(`Connection lost${why}; reconnecting${attempt}`, "warn");
      break;
    }
    case "open":
      if (e.resumed === false) {
        showConnection("open", "Reconnected: new session");
        stream.note("Reconnected, but the session could not be resumed: a new one started; initialize the servers again", "warn");
        showBanner("The connection came back with a new session: calls in flight were lost. Initialize the servers again.");
      } else if (e.resumed) {
        showConnection("open", "Reconnected: resumed");
        stream.note(`Reconnected: session ${shortId(app.mux?.session)} resumed, nothing lost`, "good");
        hideBanner();
      }
      if (app.mux?.session) ui.session.textContent = `session ${shortId(app.mux.session)}`;
      break;
    case "closed": {
      const why = e.code ? ` (code ${e.code}${e.reason ? `: ${e.reason}` : ""})` : "";
      showConnection("closed", `Closed${why}`);
      stream.note(`Connection closed${why}`, "bad");
      if (isUnauthorized(e)) {
        askForKey("The gateway needs an API key (it closed the connection with 4501).");
      } else {
        showBanner(`The gateway closed the connection${why}.`, "Reconnect", start);
      }
      break;
    }
  }
}

function showConnection(state, text) {
  ui.connection.dataset.state = state;
  ui.connection.textContent = text;
}

function showBanner(text, action, onAction) {
  replace(ui.banner, h("span", {}, text), action ? h("button", { type: "button", onclick: onAction }, action) : null);
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.banner.replaceChildren();
}

function shortId(id) {
  return typeof id === "string" ? id.slice(0, 8) : "";
}

// ---------------------------------------------------------------- API key

function toggleKeyForm(open, message) {
  ui.keyForm.hidden = !open;
  ui.keyButton.setAttribute("aria-expanded", String(open));
  if (open) {
    if (message) showBanner(message);
    ui.keyInput.focus();
  }
}

function askForKey(message) {
  toggleKeyForm(true, message);
}

ui.keyButton.addEventListener("click", () => toggleKeyForm(ui.keyForm.hidden));
ui.keyForm.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  toggleKeyForm(false);
  ui.keyButton.focus();
});
ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value;
  ui.keyInput.value = "";
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage refused (private mode): the key is not kept across reloads.
  }
  toggleKeyForm(false);
  hideBanner();
  start();
  ui.keyButton.focus();
});
ui.keyForget.addEventListener("click", () => {
  try {
    sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Nothing was stored.
  }
  ui.keyInput.value = "";
  toggleKeyForm(false);
  start();
  ui.keyButton.focus();
});

// ---------------------------------------------------------------- servers

function stateLabel(view) {
  return view.state ?? "unknown";
}

function sessionLabel(view) {
  switch (view.session) {
    case "open":
      return "initialized";
    case "opening":
      return "initializing…";
    case "lost":
      return "session lost";
    default:
      return "";
  }
}

function renderServers() {
  const buttons = [];
  const items = [...app.servers.values()].map((view) => {
    const current = view.name === app.selected;
    const button = h(
      "button",
      {
        type: "button",
        className: "server-button",
        "aria-current": current ? "true" : false,
        dataset: { name: view.name },
        onclick: () => selectServer(view.name),
      },
      h("span", { className: "server-name" }, view.name),
      " ",
      h("span", { className: `badge state-${stateLabel(view)}` }, stateLabel(view)),
      sessionLabel(view) ? [" ", h("span", { className: `session-mark session-${view.session}` }, sessionLabel(view))] : null,
    );
    buttons.push(button);
    return h("li", {}, button);
  });
  const focused = document.activeElement?.closest?.(".server-button")?.dataset.name;
  ui.serverList.replaceChildren(...items);
  setTabStop(buttons, buttons.find((b) => b.dataset.name === (focused ?? app.selected)));
  if (focused) buttons.find((b) => b.dataset.name === focused)?.focus();
  ui.noServers.hidden = app.servers.size > 0;
  ui.noServers.textContent = app.mux ? "The gateway has no servers." : "Waiting for the gateway…";
}
rovingFocus(ui.serverList, ".server-button");

function selectServer(name) {
  app.selected = name;
  renderServers();
  renderDetail();
}

function renderDetail() {
  const view = app.selected ? app.servers.get(app.selected) : null;
  if (!view) {
    ui.detailTitle.textContent = "No server selected";
    ui.detailState.textContent = "";
    ui.detailState.className = "badge";
    ui.initButton.hidden = true;
    ui.closeButton.hidden = true;
    ui.tabs.hidden = true;
    ui.browse.hidden = true;
    ui.serverInfo.textContent = app.mux
      ? "Choose a server."
      : "Waiting for the gateway…";
    return;
  }
  ui.detailTitle.textContent = view.name;
  ui.detailState.textContent = stateLabel(view);
  ui.detailState.className = `badge state-${stateLabel(view)}`;
  const open = view.session === "open" && view.info;
  ui.initButton.hidden = false;
  ui.initButton.disabled = view.session === "opening" || !app.mux;
  ui.initButton.textContent = view.session === "opening" ? "Initializing…" : open ? "Initialize again" : "Initialize";
  ui.initButton.classList.toggle("primary", !open);
  ui.closeButton.hidden = !open;
  if (open) {
    const info = view.info.serverInfo ?? {};
    replace(
      ui.serverInfo,
      h("strong", {}, info.title ?? info.name ?? view.name),
      info.version ? ` ${info.version}` : "",
      ` · MCP ${view.info.protocolVersion ?? "?"}`,
      view.info.instructions
        ? h("details", { className: "instructions" }, h("summary", {}, "Instructions from the server"), h("pre", {}, view.info.instructions))
        : "",
    );
  } else if (view.session === "lost") {
    ui.serverInfo.textContent = `The upstream session was lost${view.reason ? ` (${view.reason})` : ""}. Initialize again to go on.`;
  } else if (view.session === "opening") {
    ui.serverInfo.textContent = "Initializing…";
  } else if (view.error) {
    ui.serverInfo.textContent = `Initialize failed: ${view.error}`;
  } else {
    ui.serverInfo.textContent = view.state === "ready"
      ? "Not initialized. Initialize to browse its tools, resources and prompts."
      : `The server is ${stateLabel(view)}; you can initialize now (the gateway waits for it to be ready).`;
  }
  ui.tabs.hidden = !open;
  ui.browse.hidden = !open;
  if (!open) return;
  renderTabs(view);
  renderItems(view);
  renderItemView(view);
}

ui.initButton.addEventListener("click", () => initialize(app.selected));
ui.closeButton.addEventListener("click", async () => {
  const view = app.servers.get(app.selected);
  if (!view || !app.mux) return;
  await app.mux.server(view.name).close().catch((err) => stream.note(`close failed: ${err.message}`, "bad"));
});

async function initialize(name) {
  const view = app.servers.get(name);
  const mux = app.mux;
  if (!view || !mux) return;
  view.session = "opening";
  view.error = "";
  view.lists = {};
  view.selectedItem = null;
  renderServers();
  renderDetail();
  try {
    const result = await mux.server(name).initialize({ clientInfo: CLIENT_INFO });
    if (mux !== app.mux) return;
    view.info = result;
    view.session = "open";
    const caps = result?.capabilities ?? {};
    view.tab = Object.keys(KINDS).find((k) => caps[KINDS[k].capability]) ?? "tools";
  } catch (err) {
    if (mux !== app.mux) return;
    view.session = "none";
    view.error = errorText(err);
  }
  renderServers();
  if (app.selected === name) {
    renderDetail();
    if (view.session === "open") ui.tabs.querySelector("[aria-selected=true]")?.focus();
  }
}

// ---------------------------------------------------------------- tools, resources, prompts

function renderTabs(view) {
  const caps = view.info?.capabilities ?? {};
  const tabs = [...ui.tabs.querySelectorAll("[role=tab]")];
  for (const tab of tabs) {
    const kind = tab.dataset.kind;
    const list = view.lists[kind];
    const supported = Boolean(caps[KINDS[kind].capability]);
    tab.textContent = list?.items ? `${KINDS[kind].label} (${list.items.length}${list.cursor ? "+" : ""})` : KINDS[kind].label;
    tab.setAttribute("aria-selected", String(kind === view.tab));
    tab.disabled = !supported;
    tab.title = supported ? "" : `${view.name} offers no ${kind}`;
    if (kind === view.tab) ui.browse.setAttribute("aria-labelledby", tab.id);
  }
  setTabStop(tabs, tabs.find((t) => t.dataset.kind === view.tab));
}

ui.tabs.addEventListener("click", (event) => {
  const tab = event.target.closest("[role=tab]");
  const view = app.servers.get(app.selected);
  if (!tab || !view || tab.disabled) return;
  view.tab = tab.dataset.kind;
  view.selectedItem = null;
  renderDetail();
  tab.focus();
});
rovingFocus(ui.tabs, "[role=tab]:not([disabled])", { horizontal: true });

async function loadList(view, kind, more = false) {
  const mux = app.mux;
  if (!mux) return;
  const current = view.lists[kind];
  if (current?.loading) return;
  const items = more ? current.items : [];
  view.lists[kind] = { items, cursor: more ? current.cursor : undefined, loading: true };
  if (app.selected === view.name) renderItems(view);
  try {
    const params = more && current.cursor ? { cursor: current.cursor } : {};
    const result = await mux.server(view.name).request(KINDS[kind].method, params);
    if (mux !== app.mux) return;
    const listed = result?.[KINDS[kind].field];
    // Only items this page can name; anything else a server sends is left out.
    const usable = (Array.isArray(listed) ? listed : []).filter((item) => typeof itemKey(kind, item) === "string");
    const cursor = typeof result?.nextCursor === "string" ? result.nextCursor : undefined;
    view.lists[kind] = { items: [...items, ...usable], cursor };
  } catch (err) {
    if (mux !== app.mux) return;
    view.lists[kind] = { items, error: errorText(err) };
  }
  if (app.selected === view.name && view.tab === kind) {
    renderTabs(view);
    renderItems(view);
  }
}

function itemKey(kind, item) {
  if (typeof item !== "object" || item === null) return undefined;
  return kind === "resources" ? item.uri : item.name;
}

function renderItems(view) {
  const kind = view.tab;
  const list = view.lists[kind];
  if (list === undefined) {
    loadList(view, kind);
    return;
  }
  ui.moreButton.hidden = !list.cursor || list.loading;
  if (list.loading && list.items.length === 0) {
    ui.itemList.replaceChildren(h("li", { className: "hint" }, "Loading…"));
    return;
  }
  if (list.error) {
    ui.itemList.replaceChildren(h("li", { className: "bad" }, `Could not list ${kind}: ${list.error}`));
    return;
  }
  if (list.items.length === 0) {
    ui.itemList.replaceChildren(h("li", { className: "hint" }, `No ${kind}.`));
    return;
  }
  const buttons = [];
  const focused = document.activeElement?.closest?.(".item-button")?.dataset.key;
  const rows = list.items.map((item) => {
    const key = itemKey(kind, item);
    const run = view.runs.get(`${kind}:${key}`);
    const button = h(
      "button",
      {
        type: "button",
        className: "item-button",
        "aria-current": view.selectedItem === key ? "true" : false,
        dataset: { key },
        title: typeof item.description === "string" ? item.description : "",
        onclick: () => {
          view.selectedItem = key;
          renderItems(view);
          renderItemView(view);
        },
      },
      h("span", { className: "item-name" }, kind === "resources" && typeof item.name === "string" ? item.name : key),
      run?.running ? [" ", h("span", { className: "running-mark" }, "running")] : null,
    );
    buttons.push(button);
    return h("li", {}, button);
  });
  ui.itemList.replaceChildren(...rows);
  ui.itemList.setAttribute("aria-label", KINDS[kind].label);
  setTabStop(buttons, buttons.find((b) => b.dataset.key === (focused ?? view.selectedItem)));
  if (focused) buttons.find((b) => b.dataset.key === focused)?.focus();
}
rovingFocus(ui.itemList, ".item-button");
ui.moreButton.addEventListener("click", () => {
  const view = app.servers.get(app.selected);
  if (view) loadList(view, view.tab, true);
});

function selectedItem(view) {
  const list = view.lists[view.tab];
  return list?.items?.find((item) => itemKey(view.tab, item) === view.selectedItem) ?? null;
}

function renderItemView(view) {
  const item = selectedItem(view);
  if (!item) {
    const list = view.lists[view.tab];
    replace(ui.itemView, list?.items?.length ? h("p", { className: "hint" }, `Choose one of the ${view.tab} to see it here.`) : null);
    return;
  }
  const send = (runKey, method, params, wantProgress, paint) => run(view, runKey, method, params, wantProgress, paint);
  // Nothing of the previous item stays bound to a button while this one is built.
  ui.itemView.replaceChildren();
  const build = { tools: toolView, resources: resourceView, prompts: promptView }[view.tab];
  try {
    replace(ui.itemView, build(view, item, send));
  } catch (err) {
    replace(
      ui.itemView,
      h(
        "div",
        { className: "item", role: "alert" },
        h("h3", { id: "item-title" }, h("code", {}, itemKey(view.tab, item))),
        h("p", { className: "bad" }, `This item cannot be shown: ${err?.message ?? err}`),
      ),
    );
  }
}

async function run(view, runKey, method, params, wantProgress, paint) {
  const mux = app.mux;
  if (!mux) return;
  const abort = new AbortController();
  const record = { running: true, progress: [], result: undefined, error: undefined, ms: 0, abort };
  view.runs.set(runKey, record);
  const started = performance.now();
  const repaint = () => {
    if (view.runs.get(runKey) !== record) return;
    if (app.selected === view.name && ui.itemView.firstElementChild?.paint === paint) paint();
  };
  const onprogress = wantProgress
    ? (p) => {
        record.progress.push(p);
        if (record.progress.length > PROGRESS_KEPT) record.progress.shift();
        repaint();
      }
    : undefined;
  repaint();
  if (app.selected === view.name) renderItems(view);
  try {
    record.result = await mux.server(view.name).request(method, params, { signal: abort.signal, onprogress });
  } catch (err) {
    record.error = err;
  }
  record.running = false;
  record.ms = Math.round(performance.now() - started);
  repaint();
  if (app.selected === view.name && view.tab === runKey.split(":")[0]) renderItems(view);
}

start();
