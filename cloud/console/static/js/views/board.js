// One estate's board: gates and doors with live state and one-click actions, intercom calls waiting,
// and the estate's recent commands, whoever sent them, with their outcome.

import { clear, confirmDialog, h, notify, upsert } from "../dom.js";
import { deviceLabel, formatDuration, formatTime, locationText, t, word } from "../i18n.js";
import {
  FINAL,
  callsOf,
  commandsOf,
  devicesOf,
  lastCommandFor,
  loadCalls,
  loadCommands,
  sendCommand,
  siteTz,
  store,
  subscribe,
} from "../store.js";

const ACTIONS = {
  barrier_gate: ["open", "close", "hold_open", "release"],
  door_access: ["unlock", "hold_unlocked", "release"],
};
const BOARD_KINDS = Object.keys(ACTIONS);

function value(dev, key) {
  const entry = (dev.state || {})[key];
  return entry && entry.value !== undefined ? entry.value : null;
}

function badge(label, val, extraClass = "") {
  const shown = val === null || val === undefined ? "unknown" : val;
  return h(
    "span",
    { class: `badge v-${String(shown).replace(/[^a-z_]/gi, "")} ${extraClass}`, dataset: { value: shown } },
    word("value", shown),
  );
}

function lockValue(dev) {
  const fromEvents = value(dev, "lock");
  const mine = dev.console.lock;
  if (mine && (!fromEvents || Date.parse(mine.at) >= Date.parse(dev.state.lock.at))) {
    if (mine.until && Date.now() > mine.until) return "locked";
    return mine.value;
  }
  return fromEvents;
}

function linkValue(dev) {
  if (dev.online === true) return "online";
  if (dev.online === false) return "offline";
  return "unknown";
}

export function commandLine(record, tz, { why = false } = {}) {
  const cmd = record.command;
  const final = FINAL.has(cmd.status);
  const reason = cmd.result_reason || (cmd.status === "error" ? cmd.reason : null);
  return h(
    "span",
    { class: `outcome s-${cmd.status}`, dataset: { status: cmd.status, final: String(final) } },
    t("command.status", { action: t(`action.${record.action}`), status: word("status", cmd.status) }),
    reason && !["succeeded"].includes(cmd.status) ? h("span", { class: "reason" }, ` (${t("command.reason", { reason })})`) : null,
    " ",
    h("time", { datetime: new Date(record.sentAt).toISOString() }, formatTime(new Date(record.sentAt).toISOString(), tz)),
    cmd.issued_by ? h("span", { class: "by" }, ` ${t("command.by", { user: cmd.issued_by })}`) : null,
    why && cmd.reason && OPENING.has(record.action) ? h("span", { class: "why" }, ` · ${t("command.for", { why: cmd.reason })}`) : null,
  );
}

// Letting someone in is what the audit is for: the operator says for whom (the log has who and when).
const OPENING = new Set(["open", "hold_open", "unlock", "hold_unlocked"]);
const WHY = ["visitor", "delivery", "resident", "maintenance", "emergency", "other"];

async function act(dev, action) {
  const name = `${deviceLabel(dev)}${dev.location ? ` — ${locationText(dev.location)}` : ""}`;
  const asks = OPENING.has(action);
  const answer = await confirmDialog({
    message: t("confirm.command", { action: t(`action.${action}`), device: name }),
    confirmLabel: t(`action.${action}`),
    fields: asks
      ? [
          {
            name: "why",
            type: "select",
            label: t("command.why"),
            options: WHY.map((w) => t(`why.${w}`)),
            placeholder: t("command.why.choose"),
            required: true,
          },
          { name: "note", label: t("command.note") },
        ]
      : [],
  });
  if (!answer) return;
  const who = store.user ? store.user.username : "console";
  const note = asks ? answer.note.trim() : "";
  const reason = asks ? `${answer.why}${note ? `: ${note}` : ""}` : `operations centre console (${who})`;
  await sendCommand(dev, action, action === "unlock" ? { duration_s: 5 } : {}, reason.slice(0, 500));
}

function deviceCard(dev, tz) {
  const rows = [];
  if (dev.kind === "barrier_gate") {
    rows.push([t("state.gate"), badge("gate", value(dev, "gate"), "main")]);
    if (dev.console.holdOpen) rows.push(["", badge("hold", "hold")]);
  } else {
    rows.push([t("state.lock"), badge("lock", lockValue(dev), "main")]);
    rows.push([t("state.door"), badge("door", value(dev, "door"))]);
  }
  rows.push([t("state.link"), badge("link", linkValue(dev))]);
  const last = lastCommandFor(dev.id);
  // A command still under way (this operator's or a colleague's) holds the buttons until its expiry.
  const busy = last && !FINAL.has(last.command.status) && !(Date.now() > Date.parse(last.command.expires_at));
  const title = deviceLabel(dev);
  return h(
    "article",
    {
      class: `device k-${dev.kind}`,
      id: `device-${dev.id}`,
      "aria-labelledby": `device-${dev.id}-name`,
      dataset: {
        device: dev.id,
        gate: dev.kind === "barrier_gate" ? (value(dev, "gate") ?? "unknown") : null,
        lock: dev.kind === "door_access" ? (lockValue(dev) ?? "unknown") : null,
        online: linkValue(dev),
      },
    },
    h("h3", { id: `device-${dev.id}-name` }, title, " ", h("span", { class: "kind" }, t(`kind.${dev.kind}`))),
    h("p", { class: "where" }, locationText(dev.location) || "\u00a0"),
    h("dl", {}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h(
      "div",
      { class: "actions" },
      ACTIONS[dev.kind].map((action) =>
        h(
          "button",
          { type: "button", class: action === "open" || action === "unlock" ? "primary" : "", onclick: () => act(dev, action), disabled: busy ? true : null },
          t(`action.${action}`),
        ),
      ),
    ),
    h("p", { class: "last-command", role: "status", "aria-live": "polite" }, last ? commandLine(last, tz) : ""),
  );
}

async function answer(call) {
  const dev = store.devices.get(call.device_id);
  if (!dev) return;
  const ok = await confirmDialog({
    message: t("confirm.answer", { device: `${deviceLabel(dev)}${call.apartment ? ` → ${call.apartment}` : ""}` }),
    confirmLabel: t("action.answer"),
  });
  if (!ok) return;
  const who = store.user ? store.user.username : "console";
  const reason = `intercom call ${call.call_id} answered by operations centre (${who})${call.apartment ? `, apartment ${call.apartment}` : ""}`;
  const record = await sendCommand(dev, "unlock", { duration_s: 5 }, reason, { callId: call.call_id });
  watchCallOutcome(record, call);
}

function watchCallOutcome(record, call) {
  const report = () => {
    if (record.command.status === "succeeded") {
      notify(t("intercom.released", { who: call.apartment || call.device_id }), "ok");
    } else {
      notify(`${t("action.answer")}: ${word("status", record.command.status)} ${record.command.result_reason || ""}`, "error");
    }
  };
  // The result may be in already: the stream can bring it before the POST that sent the command answers.
  if (FINAL.has(record.command.status)) {
    report();
    return;
  }
  const stop = subscribe((what, data) => {
    if (what !== "command" || data !== record || !FINAL.has(record.command.status)) return;
    stop();
    report();
  });
}

async function hangup(call) {
  const dev = store.devices.get(call.device_id);
  if (!dev) return;
  const ok = await confirmDialog({ message: `${t("action.hangup")}: ${deviceLabel(dev)}?`, confirmLabel: t("action.hangup") });
  if (ok) await sendCommand(dev, "hangup", { call_id: call.call_id }, "hung up by operations centre");
}

function callItem(call, tz) {
  const dev = store.devices.get(call.device_id);
  const pending = commandsOf(call.site_id).find((r) => r.callId === call.call_id);
  return h(
    "li",
    { class: "call", id: `call-${call.call_id}`, dataset: { call: call.call_id } },
    h(
      "p",
      {},
      h("strong", {}, `${t("intercom.station")}: ${deviceLabel(dev, call.device_id)}`),
      dev && dev.location ? ` (${locationText(dev.location)})` : "",
    ),
    h(
      "p",
      {},
      call.apartment ? `${t("intercom.apartment")}: ${call.apartment} · ` : "",
      t(call.target === "apartment" ? "intercom.to.apartment" : "intercom.to.centre"),
      " · ",
      formatTime(call.started_at, tz),
      " · ",
      h("span", { dataset: { since: call.started_at, format: "intercom.waiting" } }, t("intercom.waiting", { t: formatDuration(Date.now() - Date.parse(call.started_at)) })),
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: () => answer(call), disabled: pending && !FINAL.has(pending.command.status) ? true : null }, t("action.answer")),
      h("button", { type: "button", onclick: () => hangup(call) }, t("action.hangup")),
    ),
    pending ? h("p", { role: "status" }, commandLine(pending, tz)) : null,
  );
}

export function renderBoard(root, siteId) {
  const { tz } = siteTz(siteId);
  const gates = h("div", { class: "devices", id: "gates" });
  const doors = h("div", { class: "devices", id: "doors" });
  const calls = h("ol", { class: "calls", id: "call-queue" });
  const commands = h("ol", { class: "commands", id: "command-log" });
  const empty = h("p", { class: "empty", id: "board-empty", hidden: true }, t("board.none"));

  root.append(
    h(
      "div",
      { class: "board" },
      h(
        "section",
        { class: "panel board-devices", "aria-labelledby": "board-title" },
        h("h2", { id: "board-title" }, t("board.title")),
        empty,
        h("h3", { class: "group" }, t("board.gates")),
        gates,
        h("h3", { class: "group" }, t("board.doors")),
        doors,
      ),
      h(
        "div",
        { class: "side" },
        h(
          "section",
          { class: "panel", "aria-labelledby": "calls-title", id: "intercom" },
          h("h2", { id: "calls-title" }, t("intercom.title")),
          calls,
        ),
        h(
          "section",
          { class: "panel", "aria-labelledby": "commands-title" },
          h("h2", { id: "commands-title" }, t("board.commands")),
          commands,
        ),
      ),
    ),
  );

  const drawDevices = () => {
    clear(gates);
    clear(doors);
    const devs = devicesOf(siteId, BOARD_KINDS);
    empty.hidden = devs.length > 0;
    for (const dev of devs) (dev.kind === "barrier_gate" ? gates : doors).append(deviceCard(dev, tz));
  };
  const drawCalls = () => {
    clear(calls);
    const list = callsOf(siteId);
    if (!list.length) calls.append(h("li", { class: "empty" }, t("intercom.none")));
    for (const call of list) calls.append(callItem(call, tz));
  };
  const drawCommands = () => {
    clear(commands);
    const list = commandsOf(siteId).slice(0, 12);
    if (!list.length) commands.append(h("li", { class: "empty" }, t("board.commands.none")));
    for (const record of list) {
      commands.append(
        h(
          "li",
          { dataset: { device: record.command.device_id } },
          h("strong", {}, deviceLabel(store.devices.get(record.command.device_id), record.command.device_id)),
          " ",
          commandLine(record, tz, { why: true }),
        ),
      );
    }
  };
  drawDevices();
  drawCalls();
  drawCommands();
  const failed = (exc) => notify(t("error.api", { status: exc.status, message: exc.message }), "error");
  loadCalls(siteId).catch(failed);
  loadCommands(siteId).catch(failed);

  const unsubscribe = subscribe((what, data) => {
    if (what === "devices") drawDevices();
    // What happened while the stream was down or not yet open (this estate's opens a stream of its own):
    // colleagues' commands, calls that started.
    else if (what === "live" && store.live) {
      loadCommands(siteId).catch(() => {});
      loadCalls(siteId).catch(() => {});
    }
    else if (what === "device" && data.site_id === siteId && BOARD_KINDS.includes(data.kind)) {
      upsert(data.kind === "barrier_gate" ? gates : doors, deviceCard(data, tz));
    } else if (what === "calls") drawCalls();
    else if (what === "command" && data.command.site_id === siteId) {
      drawCommands();
      const dev = store.devices.get(data.command.device_id);
      if (dev && BOARD_KINDS.includes(dev.kind)) upsert(dev.kind === "barrier_gate" ? gates : doors, deviceCard(dev, tz));
      if (data.callId) drawCalls();
    }
  });
  // Timed unlocks fall back to locked on screen when their time is up.
  const timer = setInterval(() => {
    for (const dev of devicesOf(siteId, ["door_access"])) {
      const lock = dev.console.lock;
      if (lock && lock.until && !lock.shownLocked && Date.now() > lock.until) {
        lock.shownLocked = true;
        upsert(doors, deviceCard(dev, tz));
      }
    }
  }, 1000);
  return () => {
    unsubscribe();
    clearInterval(timer);
  };
}
