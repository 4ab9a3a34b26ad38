// Small DOM helpers: elements from data (text only, never HTML strings), the confirmation dialog.

import { t } from "./i18n.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key === "className" ? "class" : key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

// A labelled filter above a list: `options` as [value, text] pairs, `onchange` given the chosen value.
export function filterSelect(id, label, options, current, onchange) {
  return h(
    "p",
    { class: "field inline" },
    h("label", { for: id }, label),
    h(
      "select",
      { id, onchange: (e) => onchange(e.target.value) },
      options.map(([v, text]) => h("option", { value: v, selected: v === current ? true : null }, text)),
    ),
  );
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Replace the element with this id, or append the new one to parent.
export function upsert(parent, el) {
  const old = el.id ? document.getElementById(el.id) : null;
  if (old) old.replaceWith(el);
  else parent.append(el);
}

// Ask before acting. fields: [{name, label, type: "text"|"checkbox"|"select"|"textarea", options, required}]
// Resolves to null (cancelled) or {field: value}.
export function confirmDialog({ title, message, fields = [], confirmLabel }) {
  const dialog = document.getElementById("confirm");
  const form = h("form", { method: "dialog" });
  const heading = h("h2", { id: "confirm-title" }, title || t("confirm.title"));
  const inputs = {};
  const body = fields.map((f) => {
    const id = `confirm-${f.name}`;
    let input;
    if (f.type === "select") {
      // A placeholder (value "") with `required`: the form will not submit until a real choice is made.
      const first = f.placeholder ? [h("option", { value: "" }, f.placeholder)] : [];
      const options = f.options.map((o) => h("option", { value: o }, o));
      input = h("select", { id, name: f.name, required: f.required ? true : null }, [...first, ...options]);
      if (f.value !== undefined) input.value = f.value;
    } else if (f.type === "textarea") {
      input = h("textarea", { id, name: f.name, rows: 3 });
    } else if (f.type === "checkbox") {
      input = h("input", { id, name: f.name, type: "checkbox", checked: f.value ? true : null });
    } else {
      input = h("input", { id, name: f.name, type: "text", required: f.required ? true : null, autocomplete: "off" });
    }
    inputs[f.name] = input;
    return f.type === "checkbox"
      ? h("p", { class: "field check" }, input, h("label", { for: id }, f.label))
      : h("p", { class: "field" }, h("label", { for: id }, f.label), input);
  });
  const yes = h("button", { type: "submit", value: "ok", class: "primary" }, confirmLabel || t("confirm.yes"));
  const no = h("button", { type: "submit", value: "cancel", formnovalidate: true }, t("confirm.no"));
  form.append(heading, h("p", { id: "confirm-message" }, message), ...body, h("div", { class: "buttons" }, no, yes));
  clear(dialog).append(form);
  dialog.setAttribute("aria-labelledby", "confirm-title");
  dialog.setAttribute("aria-describedby", "confirm-message");
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (dialog.returnValue !== "ok") return resolve(null);
        const values = {};
        for (const [name, input] of Object.entries(inputs)) {
          values[name] = input.type === "checkbox" ? input.checked : input.value;
        }
        resolve(values);
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    (fields.length ? inputs[fields[0].name] : yes).focus();
  });
}

// A message in the page's live region (read out by screen readers).
export function notify(text, kind = "info") {
  const region = document.getElementById("notice");
  if (!region) return;
  region.textContent = text;
  region.dataset.kind = kind;
}
