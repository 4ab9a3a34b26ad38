// The estate's command log (指令记录): who opened which gate or door, when, why, and what came of it,
// newest first, filtered and paged by the API (GET /commands), each command's audit trail a click away.
// What a manager looks up after an incident ("who let that van in last night?"); commands sent while
// the page is open join at the top as the stream brings them.

import { get } from "../api.js";
import { clear, filterSelect, h, notify } from "../dom.js";
import { deviceLabel, formatTime, t, word } from "../i18n.js";
import { siteTz, store, subscribe } from "../store.js";

const PAGE = 50;
const STATUSES = ["succeeded", "failed", "rejected", "expired", "accepted", "sent"];

// The UTC instant of midnight starting `day` (YYYY-MM-DD) on `tz`'s wall clock: the zone's offset at a
// first guess, corrected once (right unless midnight itself is skipped by a clock change).
function localMidnight(day, tz) {
  const [y, m, d] = day.split("-").map(Number);
  const wall = Date.UTC(y, m - 1, d);
  const offset = (ms) => {
    const parts = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    }).formatToParts(new Date(ms));
    const part = (type) => Number(parts.find((p) => p.type === type).value);
    return Date.UTC(part("year"), part("month") - 1, part("day"), part("hour"), part("minute"), part("second")) - ms;
  };
  const first = wall - offset(wall);
  return new Date(wall - offset(first));
}

export function renderCommands(root, siteId) {
  const { tz } = siteTz(siteId);
  const filters = { device_id: "", issued_by: "", status: "", day: "" };
  let cursor = null;
  let generation = 0;
  const body = h("tbody", {});
  const empty = h("p", { class: "empty", id: "log-empty", hidden: true }, t("log.none"));
  const more = h("button", { type: "button", id: "log-more", hidden: true, onclick: () => load(true) }, t("log.more"));
  const devices = [...store.devices.values()]
    .filter((d) => d.site_id === siteId)
    .sort((a, b) => deviceLabel(a).localeCompare(deviceLabel(b)));
  const field = (id, label, input) => h("p", { class: "field inline" }, h("label", { for: id }, label), input);
  const change = (name, value) => {
    filters[name] = value.trim();
    load(false);
  };
  root.append(
    h(
      "section",
      { class: "panel", "aria-labelledby": "log-title" },
      h("h2", { id: "log-title" }, t("log.title")),
      h(
        "form",
        { class: "filters", onsubmit: (e) => e.preventDefault() },
        filterSelect("log-device", t("log.device"), [["", t("events.all")], ...devices.map((d) => [d.id, deviceLabel(d)])], "", (v) =>
          change("device_id", v),
        ),
        filterSelect("log-status", t("log.status"), [["", t("events.all")], ...STATUSES.map((s) => [s, word("status", s)])], "", (v) =>
          change("status", v),
        ),
        field("log-by", t("log.by"), h("input", { id: "log-by", type: "text", autocomplete: "off", onchange: (e) => change("issued_by", e.target.value) })),
        field("log-day", t("log.day"), h("input", { id: "log-day", type: "date", onchange: (e) => change("day", e.target.value) })),
      ),
      h(
        "table",
        { class: "events", id: "log-table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            [t("events.time"), t("log.device"), t("log.action"), t("log.status"), t("log.by"), t("log.why"), ""].map((c) =>
              h("th", { scope: "col" }, c),
            ),
          ),
        ),
        body,
      ),
      empty,
      more,
    ),
  );

  const row = (cmd) => {
    const outcome = cmd.result_reason ? h("span", { class: "reason" }, ` — ${cmd.result_reason}`) : null;
    const trail = h("button", { type: "button", class: "trail", onclick: () => showTrail(cmd, tr, trail) }, t("log.trail"));
    const tr = h(
      "tr",
      { dataset: { command: cmd.id, device: cmd.device_id, status: cmd.status } },
      h("td", {}, h("time", { datetime: cmd.issued_at }, formatTime(cmd.issued_at, tz, true))),
      h("td", {}, deviceLabel(store.devices.get(cmd.device_id), cmd.device_id)),
      h("td", {}, word("action", cmd.action)),
      h("td", {}, h("span", { class: `outcome s-${cmd.status}` }, word("status", cmd.status)), outcome),
      h("td", {}, cmd.issued_by),
      h("td", { class: "why" }, cmd.reason || ""),
      h("td", {}, trail),
    );
    return tr;
  };

  const showTrail = async (cmd, tr, button) => {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("trail-row")) {
      next.remove();
      return;
    }
    button.disabled = true;
    try {
      const entries = await get(`/commands/${encodeURIComponent(cmd.id)}/audit`);
      const list = h(
        "ol",
        { class: "trail" },
        entries.map((a) =>
          h(
            "li",
            { dataset: { status: a.status } },
            h("time", { datetime: a.at }, formatTime(a.at, tz, true)),
            ` ${word("status", a.status)} · ${a.operator}`,
            a.reason ? h("span", { class: "reason" }, ` — ${a.reason}`) : null,
          ),
        ),
      );
      tr.after(h("tr", { class: "trail-row" }, h("td", { colspan: 7 }, list)));
    } catch (exc) {
      notify(t("error.api", { status: exc.status, message: exc.message }), "error");
    } finally {
      button.disabled = false;
    }
  };

  const query = () => {
    const params = { site_id: siteId, limit: PAGE };
    for (const name of ["device_id", "issued_by", "status"]) if (filters[name]) params[name] = filters[name];
    if (filters.day) {
      const [y, m, d] = filters.day.split("-").map(Number);
      const start = localMidnight(filters.day, tz);
      const end = localMidnight(new Date(Date.UTC(y, m - 1, d + 1)).toISOString().slice(0, 10), tz);
      params.from = start.toISOString();
      params.to = end.toISOString();
    }
    return params;
  };

  // One page at a time; `older` adds the next, a filter change starts again.
  const load = async (older) => {
    const mine = ++generation;
    try {
      const page = await get("/commands", { ...query(), ...(older && cursor ? { cursor } : {}) });
      if (mine !== generation) return;
      if (!older) clear(body);
      for (const cmd of page.items) body.append(row(cmd));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      empty.hidden = body.children.length > 0;
    } catch (exc) {
      notify(t("error.api", { status: exc.status, message: exc.message }), "error");
    }
  };
  load(false);

  const matches = (cmd) =>
    cmd.site_id === siteId &&
    !filters.day &&
    (!filters.device_id || cmd.device_id === filters.device_id) &&
    (!filters.issued_by || cmd.issued_by === filters.issued_by) &&
    (!filters.status || cmd.status === filters.status);
  return subscribe((what, data) => {
    if (what === "live" && store.live) {
      load(false); // what happened while the stream was away
      return;
    }
    if (what !== "command" || !data.command.issued_at || data.command.id.startsWith("local-")) return;
    const cmd = data.command;
    const shown = body.querySelector(`tr[data-command="${CSS.escape(cmd.id)}"]`);
    if (shown) {
      const open = shown.nextElementSibling && shown.nextElementSibling.classList.contains("trail-row");
      if (open) shown.nextElementSibling.remove();
      shown.replaceWith(row(cmd));
    } else if (matches(cmd)) {
      body.prepend(row(cmd));
      empty.hidden = true;
    }
  });
}
