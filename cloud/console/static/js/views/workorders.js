// Work orders (工单): a board by status, sorted by priority, with the time left to each deadline and
// the transitions an operator makes (acknowledge, assign, start, resolve, close with follow-up).

import { get, post } from "../api.js";
import { clear, confirmDialog, h, notify } from "../dom.js";
import { formatDuration, formatTime, locationText, t } from "../i18n.js";
import { siteTz, store, subscribe } from "../store.js";

export const STATUSES = ["open", "acknowledged", "assigned", "in_progress", "resolved", "closed"];
const PRIORITIES = ["emergency", "urgent", "normal", "low"];
// The next step from each status (the server decides; a 409 names what it allows).
const NEXT = {
  open: ["acknowledged", "cancelled"],
  acknowledged: ["assigned", "cancelled"],
  assigned: ["in_progress"],
  in_progress: ["resolved"],
  resolved: ["closed"],
};
const REFRESH_MS = 15000;
const MAX_PAGES = 5;

export async function hasWorkOrders(siteId) {
  if (store.features.workorders.has(siteId)) return store.features.workorders.get(siteId);
  let present;
  try {
    await get("/work-orders", { site: siteId });
    present = true;
  } catch (exc) {
    if (exc.status === 0) throw exc;
    present = exc.status !== 404;
  }
  store.features.workorders.set(siteId, present);
  return present;
}

// The contract names them *_due_at; the first cloud/workorders build calls them *_due.
const responseDue = (o) => o.response_due_at || o.response_due || null;
const resolutionDue = (o) => o.resolution_due_at || o.resolution_due || null;

function deadline(label, iso, stillRunning) {
  if (!iso) return null;
  const left = Date.parse(iso) - Date.now();
  const late = left < 0;
  return h(
    "p",
    { class: `deadline${late && stillRunning ? " late" : ""}` },
    `${label}: `,
    stillRunning
      ? h(
          "span",
          { dataset: { until: iso } },
          late ? t("wo.overdue", { t: formatDuration(-left) }) : t("wo.left", { t: formatDuration(left) }),
        )
      : "✓",
  );
}

async function transition(order, to, reload) {
  const fields = [];
  if (to === "assigned") fields.push({ name: "assignee", label: t("wo.assignee"), type: "text", required: true });
  if (to === "closed") {
    fields.push(
      { name: "reached", label: t("wo.reached"), type: "checkbox", value: true },
      { name: "satisfaction", label: t("wo.satisfaction"), type: "select", options: ["5", "4", "3", "2", "1"], value: "5" },
      { name: "comment", label: t("wo.comment"), type: "textarea" },
    );
  }
  const values = await confirmDialog({
    message: `${t(`wo.do.${to}`)}: ${order.title || order.id}?`,
    fields,
    confirmLabel: t(`wo.do.${to}`),
  });
  if (!values) return;
  const body = { to };
  if (to === "assigned") body.assignee = values.assignee;
  if (to === "closed") {
    body.follow_up = { reached: values.reached, satisfaction: Number(values.satisfaction), comment: values.comment };
  }
  try {
    const updated = await post(`/work-orders/${encodeURIComponent(order.id)}/transitions`, body);
    notify(t("wo.done", { id: order.id, status: t(`wo.status.${(updated && updated.status) || to}`) }), "ok");
  } catch (exc) {
    let message = exc.message;
    const allowed = exc.body && (exc.body.allowed || (exc.body.error && exc.body.error.allowed));
    if (allowed) message += ` [${[].concat(allowed).join(", ")}]`;
    notify(exc.status === 409 ? t("wo.refused", { message }) : t("error.api", { status: exc.status, message }), "error");
  }
  await reload();
}

function card(order, tz, reload) {
  const active = !["resolved", "closed", "cancelled"].includes(order.status);
  const responding = order.status === "open";
  return h(
    "article",
    {
      class: `order p-${order.priority}${order.overdue ? " overdue" : ""}`,
      id: `wo-${order.id}`,
      "aria-labelledby": `wo-${order.id}-title`,
      dataset: { status: order.status, priority: order.priority, overdue: String(Boolean(order.overdue)) },
    },
    h(
      "h4",
      { id: `wo-${order.id}-title` },
      h("span", { class: `prio p-${order.priority}` }, t(`wo.prio.${order.priority}`) || order.priority),
      " ",
      order.title || order.category || order.id,
      order.overdue ? h("span", { class: "badge v-fault overdue-badge" }, t("wo.overdue.badge")) : null,
    ),
    h(
      "p",
      { class: "meta" },
      [order.category, order.device_id, locationText(order.location), order.apartment ? `${t("intercom.apartment")} ${order.apartment}` : null, order.assignee ? `${t("wo.assignee")}: ${order.assignee}` : null]
        .filter(Boolean)
        .join(" · "),
    ),
    order.created_at ? h("p", { class: "meta" }, formatTime(order.created_at, tz, true)) : null,
    deadline(t("wo.response"), responseDue(order), responding),
    deadline(t("wo.resolution"), resolutionDue(order), active),
    h(
      "div",
      { class: "actions" },
      (NEXT[order.status] || []).map((to) =>
        h(
          "button",
          { type: "button", class: to === "cancelled" ? "subtle" : "primary", onclick: () => transition(order, to, reload) },
          t(`wo.do.${to}`),
        ),
      ),
    ),
  );
}

export function renderWorkOrders(root, siteId) {
  const { tz } = siteTz(siteId);
  let priority = "";
  const columns = h("div", { class: "wo-board", id: "wo-board" });
  const section = h(
    "section",
    { class: "panel", "aria-labelledby": "wo-title" },
    h("h2", { id: "wo-title" }, t("wo.title")),
    h(
      "form",
      { class: "filters", onsubmit: (e) => e.preventDefault() },
      h(
        "p",
        { class: "field inline" },
        h("label", { for: "wo-priority" }, t("wo.priority")),
        h(
          "select",
          {
            id: "wo-priority",
            onchange: (e) => {
              priority = e.target.value;
              load();
            },
          },
          h("option", { value: "" }, t("events.all")),
          PRIORITIES.map((p) => h("option", { value: p }, t(`wo.prio.${p}`))),
        ),
      ),
    ),
    columns,
  );
  root.append(section);

  const rank = (o) => PRIORITIES.indexOf(o.priority);
  const draw = (orders) => {
    clear(columns);
    for (const status of STATUSES) {
      const list = orders
        .filter((o) => o.status === status)
        .sort((a, b) => rank(a) - rank(b) || Date.parse(resolutionDue(a) || 0) - Date.parse(resolutionDue(b) || 0));
      columns.append(
        h(
          "section",
          { class: "wo-column", "aria-labelledby": `wo-col-${status}`, dataset: { status } },
          h("h3", { id: `wo-col-${status}` }, `${t(`wo.status.${status}`)} (${list.length})`),
          list.length ? list.map((o) => card(o, tz, load)) : h("p", { class: "empty" }, t("wo.none")),
        ),
      );
    }
  };
  let generation = 0;
  const load = async () => {
    const mine = ++generation;
    const orders = [];
    let cursor;
    try {
      for (let page = 0; page < MAX_PAGES; page++) {
        const data = await get("/work-orders", { site: siteId, priority, cursor, limit: 200 });
        orders.push(...(data.items || []));
        cursor = data.next_cursor;
        if (!cursor) break;
      }
    } catch (exc) {
      notify(t("error.api", { status: exc.status, message: exc.message }), "error");
      return;
    }
    if (mine === generation) draw(orders);
  };
  load();
  let pending = null;
  const soon = () => {
    clearTimeout(pending);
    pending = setTimeout(load, 300);
  };
  const unsubscribe = subscribe((what, data) => {
    if (what === "workorder") soon();
    // Alarms become work orders on the server: look again shortly after one.
    else if (what === "event" && data.site_id === siteId && data.severity === "safety") setTimeout(soon, 700);
  });
  const timer = setInterval(load, REFRESH_MS);
  return () => {
    unsubscribe();
    clearInterval(timer);
    clearTimeout(pending);
  };
}
