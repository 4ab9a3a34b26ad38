// Meter and sensor readings per device over the last 24 hours, as small inline SVG charts.

import { get } from "../api.js";
import { h, s } from "../dom.js";
import { formatShort, locationText, t } from "../i18n.js";
import { devicesOf, siteTz } from "../store.js";

const KINDS = ["smart_meter", "ble_sensor"];
const DAY_MS = 24 * 3600 * 1000;
const W = 320;
const H = 110;
const PAD = { left: 44, right: 8, top: 8, bottom: 20 };

function num(v) {
  if (!Number.isFinite(v)) return "—";
  const abs = Math.abs(v);
  return abs >= 1000 ? v.toFixed(0) : abs >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function chart(series, from, to, tz) {
  const buckets = series.buckets;
  const lo = Math.min(...buckets.map((b) => b.min));
  const hi = Math.max(...buckets.map((b) => b.max));
  const span = hi - lo || Math.abs(hi) || 1;
  const x = (iso) => {
    const share = Math.min(1, Math.max(0, (Date.parse(iso) - from) / (to - from)));
    return PAD.left + share * (W - PAD.left - PAD.right);
  };
  const flat = hi === lo; // one value all day: a level line through the middle
  const y = (v) => PAD.top + (flat ? 0.5 : 1 - (v - lo) / span) * (H - PAD.top - PAD.bottom);
  const line = buckets.map((b) => `${x(b.start).toFixed(1)},${y(b.avg).toFixed(1)}`).join(" ");
  const band =
    buckets.map((b) => `${x(b.start).toFixed(1)},${y(b.max).toFixed(1)}`).join(" ") +
    " " +
    [...buckets].reverse().map((b) => `${x(b.start).toFixed(1)},${y(b.min).toFixed(1)}`).join(" ");
  const label = `${series.point}: ${t("readings.avg", { min: num(lo), max: num(hi) })}`;
  return h(
    "figure",
    { class: "chart", dataset: { point: series.point } },
    s(
      "svg",
      { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": label },
      s("title", {}, label),
      s("line", { x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom, class: "axis" }),
      s("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom, class: "axis" }),
      s("text", { x: PAD.left - 4, y: PAD.top + 8, class: "tick", "text-anchor": "end" }, num(hi)),
      s("text", { x: PAD.left - 4, y: H - PAD.bottom, class: "tick", "text-anchor": "end" }, num(lo)),
      s("text", { x: PAD.left, y: H - 4, class: "tick" }, formatShort(from, tz)),
      s("text", { x: W - PAD.right, y: H - 4, class: "tick", "text-anchor": "end" }, formatShort(to, tz)),
      buckets.length > 1 ? s("polygon", { points: band, class: "band" }) : null,
      buckets.length > 1 ? s("polyline", { points: line, class: "line" }) : null,
      buckets.map((b) => s("circle", { cx: x(b.start).toFixed(1), cy: y(b.avg).toFixed(1), r: 2.5, class: "dot" })),
    ),
    h("figcaption", {}, h("strong", {}, series.point), " ", label.slice(series.point.length + 2)),
  );
}

export function renderReadings(root, siteId) {
  const { tz } = siteTz(siteId);
  const devices = devicesOf(siteId, KINDS);
  const list = h("div", { class: "readings" });
  root.append(
    h(
      "section",
      { class: "panel", "aria-labelledby": "readings-title" },
      h("h2", { id: "readings-title" }, t("readings.title")),
      devices.length ? list : h("p", { class: "empty" }, t("readings.none")),
    ),
  );
  const to = Date.now();
  const from = to - DAY_MS;
  for (const dev of devices) {
    const body = h("div", { class: "charts" }, h("p", { class: "empty" }, "…"));
    list.append(
      h(
        "article",
        { class: "device-readings", id: `readings-${dev.id}`, "aria-labelledby": `readings-${dev.id}-name` },
        h("h3", { id: `readings-${dev.id}-name` }, dev.id, " ", h("span", { class: "kind" }, t(`kind.${dev.kind}`))),
        h("p", { class: "where" }, locationText(dev.location)),
        body,
      ),
    );
    get(`/devices/${encodeURIComponent(dev.id)}/readings`, {
      from: new Date(from).toISOString(),
      to: new Date(to).toISOString(),
      bucket: "1h",
    })
      .then((data) => {
        body.replaceChildren(
          ...(data.series.length
            ? data.series.filter((x) => x.buckets.length).map((x) => chart(x, from, to, tz))
            : [h("p", { class: "empty" }, t("readings.nodata"))]),
        );
      })
      .catch((exc) => body.replaceChildren(h("p", { class: "error" }, t("error.api", { status: exc.status, message: exc.message }))));
  }
  return () => {};
}
