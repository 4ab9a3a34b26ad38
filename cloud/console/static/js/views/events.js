// The live event feed: the newest stored events, then whatever the stream brings, filtered by estate,
// device kind and severity. Below it, the events the cloud refused from the estate's gateways (kept as
// sent, with the reason): what a gateway on the wrong software version or a damaged buffer looks like.

import { get } from "../api.js";
import { clear, filterSelect, h, notify } from "../dom.js";
import { deviceLabel, eventWords, formatTime, locationText, t, word } from "../i18n.js";
import { siteTz, store, subscribe } from "../store.js";

const KINDS = ["barrier_gate", "door_access", "video_intercom", "smart_meter", "fire_panel", "ble_sensor"];
const SEVERITIES = ["safety", "access", "state", "telemetry"];
const SHOWN = 150;
const REFUSED_SHOWN = 50;

function detail(ev) {
  const d = ev.data || {};
  const bits = [];
  if (d.zone !== undefined) bits.push(`zone ${d.zone}${d.zone_name ? ` (${d.zone_name})` : ""}`);
  if (d.apartment) bits.push(`${t("intercom.apartment")} ${d.apartment}`);
  if (d.reason) bits.push(String(d.reason));
  if (d.card) bits.push(`card ${d.card}`);
  return bits.join(" · ");
}

export function renderEvents(root, siteId) {
  const filters = { site: siteId || "", kind: "", severity: "" };
  let items = [];
  const body = h("tbody", {});
  const empty = h("p", { class: "empty", hidden: true }, t("events.none"));
  const refused = refusedPanel();
  root.append(
    h(
      "section",
      { class: "panel", "aria-labelledby": "events-title" },
      h("h2", { id: "events-title" }, t("events.title")),
      h(
        "form",
        { class: "filters", onsubmit: (e) => e.preventDefault() },
        filterSelect(
          "filter-site",
          t("events.site"),
          [["", t("events.all")], ...store.sites.map((s) => [s.id, s.name || s.id])],
          filters.site,
          (v) => {
            filters.site = v;
            load();
            refused.load(v);
          },
        ),
        filterSelect("filter-kind", t("events.kind"), [["", t("kind.all")], ...KINDS.map((k) => [k, t(`kind.${k}`)])], "", (v) => {
          filters.kind = v;
          draw();
        }),
        filterSelect("filter-severity", t("events.severity"), [["", t("events.all")], ...SEVERITIES.map((v) => [v, t(`sev.${v}`)])], "", (v) => {
          filters.severity = v;
          draw();
        }),
      ),
      h(
        "table",
        { class: "events", id: "event-table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            [t("events.time"), t("events.device"), t("events.what"), t("events.severity"), t("events.where")].map((c) =>
              h("th", { scope: "col" }, c),
            ),
          ),
        ),
        body,
      ),
      empty,
    ),
    refused.panel,
  );

  const matches = (ev) => {
    if (filters.site && ev.site_id !== filters.site) return false;
    if (filters.severity && ev.severity !== filters.severity) return false;
    if (filters.kind) {
      const dev = store.devices.get(ev.device_id);
      if (!dev || dev.kind !== filters.kind) return false;
    }
    return true;
  };
  const row = (ev) => {
    const { tz } = siteTz(ev.site_id);
    const info = detail(ev);
    return h(
      "tr",
      { class: `sev-${ev.severity}`, dataset: { type: ev.type, device: ev.device_id, severity: ev.severity } },
      h("td", {}, h("time", { datetime: ev.ts }, formatTime(ev.ts, tz, true))),
      h("td", {}, deviceLabel(store.devices.get(ev.device_id), ev.device_id)),
      h("td", {}, eventWords(ev.type), info ? h("span", { class: "reason" }, ` — ${info}`) : null),
      h("td", {}, h("span", { class: `sev sev-${ev.severity}` }, word("sev", ev.severity))),
      h("td", {}, locationText(ev.location)),
    );
  };
  const draw = () => {
    clear(body);
    const shown = items.filter(matches).slice(0, SHOWN);
    empty.hidden = shown.length > 0;
    for (const ev of shown) body.append(row(ev));
  };
  let generation = 0;
  const load = async () => {
    const mine = ++generation;
    try {
      const page = await get("/events", { site_id: filters.site, limit: 300 });
      if (mine !== generation) return;
      const seen = new Set(page.items.map((e) => e.id));
      items = [...items.filter((e) => !seen.has(e.id) && matches(e)), ...page.items];
      items.sort((a, b) => (a.id < b.id ? 1 : -1));
      draw();
    } catch (exc) {
      notify(t("error.api", { status: exc.status, message: exc.message }), "error");
    }
  };
  load();
  refused.load(filters.site);
  // Events stored while the stream was down never come over it: when it is back, read the newest again
  // (merged by id, so nothing shows twice).
  let dropped = false;
  return subscribe((what, ev) => {
    if (what === "live") {
      if (!store.live) dropped = true;
      else if (dropped) {
        dropped = false;
        load();
      }
      return;
    }
    if (what !== "event" || items.some((e) => e.id === ev.id)) return;
    items.unshift(ev);
    items.length = Math.min(items.length, 1000);
    if (matches(ev)) {
      body.prepend(row(ev));
      empty.hidden = true;
      while (body.children.length > SHOWN) body.lastChild.remove();
    }
  });
}

// Closed until asked for: most days it is empty, and a refused event is for engineering, not the desk.
function refusedPanel() {
  const body = h("tbody", {});
  const count = h("span", { class: "count" }, "");
  const empty = h("p", { class: "empty", hidden: true }, t("refused.none"));
  const panel = h(
    "details",
    { class: "panel refused", id: "refused" },
    h("summary", {}, t("refused.title"), " ", count),
    h("p", { class: "hint" }, t("refused.hint")),
    h(
      "table",
      { class: "events", id: "refused-table" },
      h(
        "thead",
        {},
        h("tr", {}, [t("refused.received"), t("refused.gateway"), t("refused.why"), t("refused.as_sent")].map((c) => h("th", { scope: "col" }, c))),
      ),
      body,
    ),
    empty,
  );
  let generation = 0;
  const load = async (siteId) => {
    const mine = ++generation;
    try {
      const page = await get("/rejected-events", { site_id: siteId, limit: REFUSED_SHOWN });
      if (mine !== generation) return;
      clear(body);
      for (const r of page.items) {
        const { tz } = siteTz(r.site_id);
        body.append(
          h(
            "tr",
            { dataset: { key: r.key, gateway: r.gateway_id } },
            h("td", {}, h("time", { datetime: r.received_at }, formatTime(r.received_at, tz, true))),
            h("td", {}, r.gateway_id),
            h("td", { class: "reason" }, r.error),
            h("td", {}, h("code", {}, r.payload.length > 300 ? `${r.payload.slice(0, 300)}…` : r.payload)),
          ),
        );
      }
      const n = page.items.length;
      count.textContent = `(${page.next_cursor ? `${n}+` : n})`;
      empty.hidden = n > 0;
    } catch (exc) {
      notify(t("error.api", { status: exc.status, message: exc.message }), "error");
    }
  };
  return { panel, load };
}
