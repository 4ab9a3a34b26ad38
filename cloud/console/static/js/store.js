// What the console knows: estates, devices with live state, the estates' recent commands (every
// operator's), intercom calls waiting.
// Fed by the HTTP API once and then by the /stream server-sent events; views subscribe to changes.

import { get, getAll, post, streamUrl } from "./api.js";
import { DEFAULT_TZ } from "./i18n.js";

// The same table as cloud/state.py: (event type) -> (state key, value).
const EXACT = {
  "gate.opened": ["gate", "open"],
  "gate.open": ["gate", "open"],
  "gate.closed": ["gate", "closed"],
  "gate.opening": ["gate", "moving"],
  "gate.closing": ["gate", "moving"],
  "gate.moving": ["gate", "moving"],
  "gate.stopped": ["gate", "stopped"],
  "gate.fault": ["gate", "fault"],
  "gate.obstructed": ["gate", "obstructed"],
  "door.locked": ["lock", "locked"],
  "door.unlocked": ["lock", "unlocked"],
  "door.opened": ["door", "open"],
  "door.open": ["door", "open"],
  "door.closed": ["door", "closed"],
  "door.forced_open": ["door", "forced_open"],
  "door.held_open": ["door", "held_open"],
  "door.fault": ["door", "fault"],
};

export function stateUpdates(type, data) {
  if (type in EXACT) {
    const [key, value] = EXACT[type];
    return { [key]: value };
  }
  if (["gate.state", "door.state", "device.state"].includes(type) && typeof data.state === "string") {
    return { [type.split(".")[0]]: data.state };
  }
  if (type.startsWith("meter.reading") || type.startsWith("sensor.reading")) return { reading: data };
  if (type.startsWith("fire.")) {
    const what = type.slice("fire.".length);
    const value = data.state ?? what;
    return data.zone !== undefined && data.zone !== null ? { [`zone.${data.zone}`]: value } : { panel: value };
  }
  if (type === "device.online" || type === "device.offline") return { link: type.slice("device.".length) };
  return {};
}

// Apply updates unless what is recorded is newer (late, redelivered events never roll the board back).
export function mergeState(state, updates, at) {
  const out = { ...state };
  const when = Date.parse(at);
  for (const [key, value] of Object.entries(updates)) {
    const current = out[key];
    if (current && current.at && Date.parse(current.at) > when) continue;
    out[key] = { value, at };
  }
  return out;
}

export const FINAL = new Set(["succeeded", "failed", "rejected", "expired", "error"]);
const CALL_END = new Set(["intercom.call_answered", "intercom.call_ended", "intercom.call_missed"]);
const CALL_WINDOW_MS = 2 * 3600 * 1000;
const LONG_POLL_S = 5;
// The command log read when an estate opens, and how many commands the console keeps at most.
const COMMAND_LOG = 30;
const COMMANDS_KEPT = 300;

export const store = {
  authOn: false,
  user: null,
  sites: [], // each with `devices`: how many of each kind
  siteId: null, // the estate on screen: its devices are loaded and its stream is open
  devices: new Map(), // the estate's, by id
  gateways: new Map(), // every estate's: id -> {id, site_id, online}, for the estate list's health
  commands: new Map(), // id -> {command, action, deviceId, callId, sentAt}
  calls: new Map(), // call_id -> {call_id, device_id, site_id, target, apartment, started_at, location}
  // Calls answered here or seen ending on the stream: a reload whose reads left before that must not
  // bring them back.
  handledCalls: new Set(),
  live: false,
  features: { workorders: new Map() }, // site id -> true/false
};

const listeners = new Set();

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(what, data) {
  for (const fn of [...listeners]) {
    try {
      fn(what, data);
    } catch (exc) {
      console.error("listener failed", exc);
    }
  }
}

export function siteById(id) {
  return store.sites.find((s) => s.id === id) || null;
}

// A site carries the `timezone` its gateways report; before one has, Asia/Shanghai (the console says so).
export function siteTz(id) {
  const site = siteById(id);
  return { tz: (site && site.timezone) || DEFAULT_TZ, fromSite: Boolean(site && site.timezone) };
}

export function devicesOf(siteId, kinds) {
  return [...store.devices.values()].filter(
    (d) => (!siteId || d.site_id === siteId) && (!kinds || kinds.includes(d.kind)),
  );
}

export async function loadSites() {
  store.sites = await getAll("/sites");
  emit("sites");
}

// One estate's devices: an operations centre runs hundreds, and a console shows one at a time.
export async function loadDevices(siteId) {
  const rows = await getAll("/devices", { site_id: siteId });
  const before = store.devices;
  store.devices = new Map(
    rows.map((d) => {
      const old = before.get(d.id);
      if (!old) return [d.id, { ...d, console: {} }];
      // An event the stream brought while this read was on its way is newer than the read: keep it.
      let state = d.state || {};
      for (const [key, entry] of Object.entries(old.state || {})) {
        if (entry && entry.at) state = mergeState(state, { [key]: entry.value }, entry.at);
      }
      return [d.id, { ...d, state, console: old.console || {} }];
    }),
  );
  emit("devices");
}

// ---- intercom calls -------------------------------------------------------------------------------

export async function loadCalls(siteId) {
  const since = Date.now() - CALL_WINDOW_MS;
  const types = ["intercom.call_started", ...CALL_END];
  const pages = await Promise.all(
    types.map((type) => get("/events", { site_id: siteId, type, limit: 200 })),
  );
  const ended = new Set();
  for (const page of pages.slice(1)) for (const ev of page.items) ended.add(ev.data.call_id);
  // Calls the stream brought while these reads were on their way stay; ended ones go.
  for (const id of ended) store.calls.delete(id);
  for (const ev of pages[0].items) {
    const id = ev.data.call_id;
    if (!id || ended.has(id) || store.handledCalls.has(id) || Date.parse(ev.ts) < since) continue;
    store.calls.set(id, callFromEvent(ev));
  }
  emit("calls");
}

function callFromEvent(ev) {
  return {
    call_id: ev.data.call_id,
    device_id: ev.device_id,
    site_id: ev.site_id,
    target: ev.data.target,
    apartment: ev.data.apartment,
    started_at: ev.ts,
    location: ev.location,
  };
}

export function callsOf(siteId) {
  return [...store.calls.values()]
    .filter((c) => c.site_id === siteId)
    .sort((a, b) => Date.parse(a.started_at) - Date.parse(b.started_at));
}

// ---- the live stream ------------------------------------------------------------------------------

function onEvent(ev) {
  const dev = store.devices.get(ev.device_id);
  if (dev) {
    const updates = stateUpdates(ev.type, ev.data || {});
    if (Object.keys(updates).length) dev.state = mergeState(dev.state || {}, updates, ev.ts);
    if (ev.type === "device.offline") dev.online = false;
    if (ev.type === "device.online") dev.online = true;
    if (Object.keys(updates).length || ev.type.startsWith("device.")) emit("device", dev);
  }
  if (ev.type === "intercom.call_started" && ev.data.call_id && !store.handledCalls.has(ev.data.call_id)) {
    store.calls.set(ev.data.call_id, callFromEvent(ev));
    emit("calls");
  } else if (CALL_END.has(ev.type) && ev.data.call_id) {
    store.handledCalls.add(ev.data.call_id);
    if (store.calls.delete(ev.data.call_id)) emit("calls");
  }
  emit("event", ev);
}

// The estate list shows which estates have a gateway offline; the stream keeps it current.
export async function loadGateways() {
  const rows = await getAll("/gateways");
  store.gateways = new Map(rows.map((g) => [g.id, { id: g.id, site_id: g.site_id, online: g.online }]));
  emit("gateways");
}

export function gatewaysOf(siteId) {
  return [...store.gateways.values()].filter((g) => g.site_id === siteId);
}

function onGateway(msg) {
  const known = store.gateways.get(msg.id);
  if (known) known.online = Boolean(msg.online);
  else if (msg.site_id) store.gateways.set(msg.id, { id: msg.id, site_id: msg.site_id, online: Boolean(msg.online) });
  emit("gateways");
  for (const dev of store.devices.values()) {
    if (dev.gateway_id !== msg.id) continue;
    dev.online = msg.online ? true : null;
    emit("device", dev);
  }
}

let source = null;
let streamSite = undefined; // the site_id the open stream is narrowed to; null: the estate list's
let resyncTimer = null;
let retryTimer = null;
let wanted = false;
const RETRY_MS = 3000;

// EventSource retries by itself after a dropped connection, but gives up for good on an error answer
// (a 401 once the token expired) and the server ends the stream with `end` when the token is revoked:
// then ask who we are (a 401 there sends the page to sign-in) and connect again.
function scheduleReconnect() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(async () => {
    try {
      await get("/auth/me");
    } catch (exc) {
      if (exc.status === 401) return;
    }
    if (wanted) connectStream(streamSite, { again: true });
  }, RETRY_MS);
}

// The estate list needs only gateways coming and going; an estate's pages everything of that estate.
export function connectStream(siteId, { again = false } = {}) {
  if (!again && source && streamSite === siteId) return;
  disconnectStream();
  wanted = true;
  streamSite = siteId;
  source = new EventSource(siteId ? streamUrl("event,command,gateway,work_order", siteId) : streamUrl("gateway"));
  source.addEventListener("end", () => {
    source.close();
    store.live = false;
    emit("live");
    scheduleReconnect();
  });
  // "ready", not "open": the server sends it once the stream is subscribed, so a change after the
  // registry is read below is on the stream, by construction.
  source.addEventListener("ready", () => {
    store.live = true;
    emit("live");
    // Whatever happened while (re)connecting: read the registry again.
    clearTimeout(resyncTimer);
    if (siteId) resyncTimer = setTimeout(() => loadDevices(siteId).catch(() => {}), 0);
  });
  source.addEventListener("error", () => {
    store.live = false;
    emit("live");
    if (source && source.readyState === EventSource.CLOSED) scheduleReconnect();
  });
  const parse = (handler) => (message) => {
    try {
      handler(JSON.parse(message.data));
    } catch (exc) {
      console.error("bad stream message", exc);
    }
  };
  source.addEventListener("event", parse(onEvent));
  source.addEventListener("command", parse((cmd) => applyCommand(cmd)));
  source.addEventListener("gateway", parse(onGateway));
  source.addEventListener("work_order", parse((wo) => emit("workorder", wo)));
}

// Open an estate: its devices, then its stream.
export async function useSite(siteId) {
  if (store.siteId !== siteId) {
    await loadDevices(siteId);
    store.siteId = siteId;
  }
  connectStream(siteId);
}

export function disconnectStream() {
  wanted = false;
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
  store.live = false;
  emit("live");
}

// ---- commands -------------------------------------------------------------------------------------

function applyResultState(record) {
  const cmd = record.command;
  const dev = store.devices.get(cmd.device_id);
  if (!dev || cmd.status !== "succeeded") return;
  const result = cmd.result_state || {};
  const extra = dev.console;
  if (dev.kind === "barrier_gate") {
    if (typeof result.hold_open === "boolean") extra.holdOpen = result.hold_open;
    else if (cmd.action === "hold_open") extra.holdOpen = true;
    else if (cmd.action === "release") extra.holdOpen = false;
  } else if (dev.kind === "door_access") {
    // Door controllers report the lock in command results, not as events: keep what the result says
    // and, for a timed unlock, when the lock falls back.
    const lock = result.lock === "locked" || result.lock === "unlocked" ? result.lock : null;
    const at = cmd.updated_at;
    if (cmd.action === "unlock") {
      const seconds = Number((cmd.args || {}).duration_s || 5);
      extra.lock = { value: lock || "unlocked", at, until: Date.parse(at) + seconds * 1000 };
    } else if (cmd.action === "hold_unlocked") {
      extra.lock = { value: lock || "unlocked", at, held: true };
    } else if (cmd.action === "release" || cmd.action === "lock") {
      extra.lock = { value: lock || "locked", at };
    }
  }
  emit("device", dev);
}

// The estate's log: what every operator did there, also before this page was loaded. Oldest first, so
// that the newest result decides what the board shows of a door's lock or a gate's hold.
export async function loadCommands(siteId) {
  const page = await get("/commands", { site_id: siteId, limit: COMMAND_LOG });
  for (const cmd of page.items.slice().reverse()) applyCommand(cmd);
}

function forget() {
  if (store.commands.size <= COMMANDS_KEPT) return;
  const done = [...store.commands.entries()]
    .filter(([, r]) => FINAL.has(r.command.status))
    .sort(([, a], [, b]) => a.sentAt - b.sentAt);
  for (const [id] of done.slice(0, store.commands.size - COMMANDS_KEPT)) store.commands.delete(id);
}

// Commands the stream or the log brought while this console was posting one to the same device: that
// may be ours, whose id the POST's answer has not told yet. Held until it has, then applied, so that one
// command never shows twice and an intercom call's unlock still ends the call.
const early = new Map();

function posting(deviceId) {
  return [...store.commands.values()].some((r) => r.posting && r.deviceId === deviceId);
}

function releaseEarly() {
  const held = [...early.values()];
  early.clear();
  for (const cmd of held) applyCommand(cmd);
}

export function applyCommand(cmd) {
  let record = store.commands.get(cmd.id);
  if (!record) {
    if (posting(cmd.device_id)) {
      const before = early.get(cmd.id);
      if (!before || !FINAL.has(before.status)) early.set(cmd.id, cmd);
      return;
    }
    // A colleague's command (the stream, the log) or one sent before a reload: shown, and its result
    // applied to the board, as if sent from here.
    record = { command: cmd, action: cmd.action, deviceId: cmd.device_id, sentAt: Date.parse(cmd.issued_at) };
    store.commands.set(cmd.id, record);
    forget();
    applyResultState(record);
    emit("command", record);
    return;
  }
  const order = ["pending", "sent", "accepted"];
  const was = record.command.status;
  if (FINAL.has(was) && was !== cmd.status) return; // never out of a final state
  if (!FINAL.has(cmd.status) && order.indexOf(cmd.status) < order.indexOf(was)) return;
  record.command = cmd;
  record.sentAt = Date.parse(cmd.issued_at) || record.sentAt; // the cloud's clock orders the log
  if (cmd.status !== was) applyResultState(record);
  if (cmd.status === "succeeded" && record.callId) {
    store.handledCalls.add(record.callId);
    store.calls.delete(record.callId);
    emit("calls");
  }
  emit("command", record);
}

export function commandsOf(siteId) {
  return [...store.commands.values()]
    .filter((r) => !siteId || r.command.site_id === siteId)
    .sort((a, b) => (a.sentAt < b.sentAt ? 1 : -1));
}

export function lastCommandFor(deviceId) {
  return commandsOf().find((r) => r.command.device_id === deviceId) || null;
}

// Send, then follow until final: the stream carries changes, a long-poll makes sure we hear of them.
export async function sendCommand(device, action, args, reason, { callId } = {}) {
  const local = `local-${Date.now()}-${Math.random().toString(16).slice(2)}`;
  const placeholder = {
    id: local,
    device_id: device.id,
    site_id: device.site_id,
    action,
    args,
    status: "pending",
    reason,
    result_reason: null,
  };
  const record = { command: placeholder, action, deviceId: device.id, callId, sentAt: Date.now(), posting: true };
  store.commands.set(local, record);
  emit("command", record);
  let cmd;
  try {
    cmd = await post(`/devices/${encodeURIComponent(device.id)}/commands`, { action, args, reason });
  } catch (exc) {
    record.posting = false;
    record.command = { ...placeholder, status: "error", result_reason: exc.message };
    emit("command", record);
    releaseEarly();
    return record;
  }
  record.posting = false;
  store.commands.delete(local);
  record.command = { ...placeholder, status: "sent" };
  store.commands.set(cmd.id, record);
  applyCommand(cmd);
  releaseEarly(); // the stream may have brought this command, even its result, before the answer
  follow(record).catch((exc) => console.error("command follow failed", exc));
  return record;
}

async function follow(record) {
  const id = record.command.id;
  const giveUpAt = Date.parse(record.command.expires_at || "") + 30000 || Date.now() + 120000;
  while (!FINAL.has(record.command.status) && Date.now() < giveUpAt) {
    try {
      const cmd = await get(
        `/commands/${encodeURIComponent(id)}`,
        { wait: LONG_POLL_S, seen: record.command.status },
        { timeoutMs: (LONG_POLL_S + 10) * 1000 },
      );
      applyCommand(cmd);
    } catch (exc) {
      if (exc.status === 404 || exc.status === 401 || exc.status === 403) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}
