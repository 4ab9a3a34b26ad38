// The console shell: sign-in (when the server has it), the estate list, and one page per estate tab.
// Routes: #/login, #/sites, #/site/<id>[/events|/work-orders|/readings].

import { get, post, setToken, setUnauthorizedHandler } from "./api.js";
import { clear, h, notify } from "./dom.js";
import { formatDuration, getLang, setLang, t } from "./i18n.js";
import {
  connectStream,
  disconnectStream,
  gatewaysOf,
  loadGateways,
  loadSites,
  siteById,
  siteTz,
  store,
  subscribe,
  useSite,
} from "./store.js";
import { renderBoard } from "./views/board.js";
import { renderCommands } from "./views/commands.js";
import { renderEvents } from "./views/events.js";
import { renderReadings } from "./views/readings.js";
import { hasWorkOrders, renderWorkOrders } from "./views/workorders.js";

const view = document.getElementById("view");
let cleanup = () => {};
let ready = false; // signed in (or no sign-in on this server) and the registry loaded

// ---- header ---------------------------------------------------------------------------------------

function renderHeader(siteId, tab, workOrders) {
  const header = clear(document.getElementById("header"));
  const site = siteId ? siteById(siteId) : null;
  const tz = siteId ? siteTz(siteId) : null;
  const tabs = [
    ["board", t("nav.board"), `#/site/${siteId}`],
    ["events", t("nav.events"), `#/site/${siteId}/events`],
    workOrders ? ["work-orders", t("nav.workorders"), `#/site/${siteId}/work-orders`] : null,
    ["readings", t("nav.readings"), `#/site/${siteId}/readings`],
    ["commands", t("nav.commands"), `#/site/${siteId}/commands`],
  ].filter(Boolean);
  header.append(
    h(
      "div",
      { class: "brand" },
      h("a", { href: ready ? "#/sites" : "#/login" }, t("app.title")),
      site ? h("span", { class: "site-name" }, ` / ${site.name || site.id}`) : null,
    ),
    ready
      ? h(
          "nav",
          { "aria-label": "main" },
          h("a", { href: "#/sites", "aria-current": !siteId ? "page" : null }, t("nav.sites")),
          siteId ? tabs.map(([key, label, href]) => h("a", { href, "aria-current": key === tab ? "page" : null }, label)) : null,
        )
      : null,
    h(
      "div",
      { class: "tools" },
      tz ? h("span", { class: "tz", id: "tz-note" }, t(tz.fromSite ? "tz.note" : "tz.default", { tz: tz.tz })) : null,
      ready
        ? h("span", { id: "live", class: "live", dataset: { live: store.live ? "on" : "off" } }, store.live ? t("live.on") : t("live.off"))
        : null,
      ready ? h("span", { class: "user" }, store.user ? `${store.user.username} (${store.user.role})` : t("user.none")) : null,
      h(
        "button",
        { type: "button", id: "lang", lang: getLang() === "zh" ? "en" : "zh-CN", title: t("lang.switch.label"), onclick: switchLang },
        t("lang.switch"),
      ),
      ready && store.authOn ? h("button", { type: "button", onclick: signOut }, t("signout")) : null,
    ),
  );
}

function switchLang() {
  setLang(getLang() === "zh" ? "en" : "zh");
  route();
}

// ---- sign-in --------------------------------------------------------------------------------------

async function detectAuth() {
  try {
    store.user = await get("/auth/me");
    store.authOn = true;
    return true;
  } catch (exc) {
    if (exc.status === 404) {
      store.authOn = false; // no sign-in on this server (yet): go straight in
      store.user = null;
      return true;
    }
    if (exc.status === 401 || exc.status === 403) {
      store.authOn = true;
      setToken(null);
      return false;
    }
    throw exc;
  }
}

async function enter() {
  await loadSites();
  ready = true;
}

function signOut() {
  setToken(null);
  store.user = null;
  store.siteId = null;
  ready = false;
  disconnectStream();
  location.hash = "#/login";
}

function renderLogin() {
  const error = h("p", { class: "error", role: "alert", id: "login-error" });
  const form = h(
    "form",
    { class: "panel login", "aria-labelledby": "login-title", onsubmit: submit },
    h("h2", { id: "login-title" }, t("signin.title")),
    h("p", { class: "field" }, h("label", { for: "username" }, t("signin.username")), h("input", { id: "username", name: "username", autocomplete: "username", required: true })),
    h(
      "p",
      { class: "field" },
      h("label", { for: "password" }, t("signin.password")),
      h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true }),
    ),
    error,
    h("button", { type: "submit", class: "primary" }, t("signin.submit")),
  );
  async function submit(e) {
    e.preventDefault();
    error.textContent = "";
    try {
      const answer = await post("/auth/login", { username: form.username.value, password: form.password.value }, { auth: false });
      setToken(answer.access_token);
      store.authOn = true;
      store.user = answer.user || (await get("/auth/me"));
    } catch (exc) {
      if (exc.status !== 404) {
        error.textContent = t("signin.failed", { message: exc.status === 0 ? exc.message : exc.message || exc.status });
        return;
      }
      store.authOn = false; // no sign-in on this server: go straight in
      notify(t("signin.noauth"));
    }
    try {
      await enter();
    } catch (exc) {
      error.textContent = t("error.api", { status: exc.status, message: exc.message });
      return;
    }
    location.hash = "#/sites";
  }
  view.append(form);
  form.username.focus();
  return () => {};
}

// ---- estates --------------------------------------------------------------------------------------

function renderSites() {
  const list = h("ul", { class: "sites", id: "site-list" });
  view.append(h("section", { class: "panel", "aria-labelledby": "sites-title" }, h("h2", { id: "sites-title" }, t("sites.title")), list));
  const draw = () => {
    clear(list);
    if (!store.sites.length) list.append(h("li", { class: "empty" }, t("sites.none")));
    for (const site of store.sites) {
      const kinds = site.devices || {};
      const total = Object.values(kinds).reduce((a, b) => a + b, 0);
      const count = (kind) => kinds[kind] || 0;
      const gateways = gatewaysOf(site.id);
      const offline = gateways.filter((g) => !g.online).length;
      list.append(
        h(
          "li",
          { class: `site${offline ? " has-offline" : ""}`, dataset: { site: site.id, gatewaysOffline: String(offline) } },
          h("h3", {}, h("a", { href: `#/site/${encodeURIComponent(site.id)}` }, site.name || site.id)),
          h("p", { class: "meta" }, site.id, " · ", t("sites.devices", { n: total })),
          h(
            "p",
            { class: "gateways" },
            offline
              ? h("span", { class: "badge v-offline" }, t("sites.offline", { n: offline, total: gateways.length }))
              : h("span", { class: "badge v-online" }, t("sites.online", { total: gateways.length })),
          ),
          h(
            "p",
            { class: "meta" },
            ["barrier_gate", "door_access", "video_intercom", "smart_meter", "fire_panel"]
              .filter((k) => count(k))
              .map((k) => `${t(`kind.${k}`)} ${count(k)}`)
              .join(" · "),
          ),
          h("a", { class: "button", href: `#/site/${encodeURIComponent(site.id)}` }, t("sites.open")),
        ),
      );
    }
  };
  draw();
  loadGateways().catch((exc) => notify(t("error.api", { status: exc.status, message: exc.message }), "error"));
  return subscribe((what) => {
    if (what === "sites" || what === "gateways") draw();
  });
}

// ---- routing --------------------------------------------------------------------------------------

let routing = 0;

async function route() {
  const mine = ++routing;
  cleanup();
  cleanup = () => {};
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (!ready) {
      const signedIn = await detectAuth();
      if (signedIn) await enter();
    }
  } catch (exc) {
    renderHeader(null);
    clear(view).append(h("p", { class: "error", role: "alert" }, t("error.network", { message: exc.message })));
    return;
  }
  if (mine !== routing) return;
  clear(view);
  if (!ready) {
    renderHeader(null);
    if (parts[0] !== "login") location.replace("#/login");
    cleanup = renderLogin();
    return;
  }
  if (parts[0] === "site" && parts[1]) {
    const siteId = parts[1];
    const tab = parts[2] || "board";
    let workOrders = false;
    try {
      workOrders = await hasWorkOrders(siteId);
    } catch {
      workOrders = false;
    }
    if (mine !== routing) return;
    if (!siteById(siteId)) {
      renderHeader(siteId, tab, workOrders);
      view.append(h("p", { class: "error", role: "alert", id: "no-site" }, t("sites.missing", { site: siteId })));
      return;
    }
    try {
      // Before the header: its live sign must be this estate's stream, not the one it replaces.
      await useSite(siteId);
    } catch (exc) {
      renderHeader(siteId, tab, workOrders);
      view.append(h("p", { class: "error", role: "alert" }, t("error.api", { status: exc.status, message: exc.message })));
      return;
    }
    if (mine !== routing) return;
    renderHeader(siteId, tab, workOrders);
    if (tab === "events") cleanup = renderEvents(view, siteId);
    else if (tab === "work-orders") {
      if (workOrders) cleanup = renderWorkOrders(view, siteId);
      else view.append(h("p", { class: "empty", id: "wo-unavailable" }, t("wo.unavailable")));
    } else if (tab === "readings") cleanup = renderReadings(view, siteId);
    else if (tab === "commands") cleanup = renderCommands(view, siteId);
    else cleanup = renderBoard(view, siteId);
    document.title = `${siteById(siteId).name || siteId} — ${t("app.title")}`;
    return;
  }
  if (parts[0] !== "sites") {
    location.replace("#/sites");
    return;
  }
  renderHeader(null);
  connectStream(null);
  cleanup = renderSites();
  document.title = t("app.title");
}

// The live indicator and every countdown on screen, kept current.
subscribe((what) => {
  if (what !== "live") return;
  const live = document.getElementById("live");
  if (!live) return;
  live.dataset.live = store.live ? "on" : "off";
  live.textContent = store.live ? t("live.on") : t("live.off");
});

setInterval(() => {
  for (const el of document.querySelectorAll("[data-until]")) {
    const left = Date.parse(el.dataset.until) - Date.now();
    el.textContent = left < 0 ? t("wo.overdue", { t: formatDuration(-left) }) : t("wo.left", { t: formatDuration(left) });
    el.closest(".deadline")?.classList.toggle("late", left < 0);
  }
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = t(el.dataset.format, { t: formatDuration(Date.now() - Date.parse(el.dataset.since)) });
  }
}, 1000);

setUnauthorizedHandler(() => {
  if (!ready) return;
  ready = false;
  store.siteId = null;
  disconnectStream();
  setToken(null);
  location.hash = "#/login";
});

setLang(getLang());
window.addEventListener("hashchange", route);
route();
