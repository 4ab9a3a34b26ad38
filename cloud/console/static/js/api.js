// The cloud's /api/v1 over fetch: bearer token when signed in, errors as ApiError, feature detection.

export const API = "/api/v1";
const TOKEN_KEY = "steward.token";
const REQUEST_TIMEOUT_MS = 20000;

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

let onUnauthorized = () => {};

export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

function errorMessage(status, body) {
  if (body && typeof body === "object") {
    if (body.error && body.error.message) return body.error.message;
    if (typeof body.detail === "string") return body.detail;
    if (body.detail) return JSON.stringify(body.detail);
  }
  return typeof body === "string" && body ? body : `HTTP ${status}`;
}

// request("GET", "/sites") -> parsed JSON; throws ApiError (status 0: no answer).
export async function request(method, path, { body, query, timeoutMs = REQUEST_TIMEOUT_MS, auth = true } = {}) {
  const url = new URL(API + path, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = getToken();
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
    });
  } catch (exc) {
    throw new ApiError(0, "network", exc.name === "AbortError" ? "timed out" : exc.message, null);
  } finally {
    clearTimeout(timer);
  }
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: keep the text */
  }
  if (!response.ok) {
    const code = data && data.error ? data.error.code : "";
    const error = new ApiError(response.status, code, errorMessage(response.status, data), data);
    if (response.status === 401 && auth && path !== "/auth/login") onUnauthorized(error);
    throw error;
  }
  return data;
}

export const get = (path, query, opts = {}) => request("GET", path, { ...opts, query });
export const post = (path, body, opts = {}) => request("POST", path, { ...opts, body });

// Does an API exist on this server? Probe a listing (no id in the path): 404 means not built (yet).
export async function probe(path, query) {
  try {
    await get(path, query);
    return true;
  } catch (exc) {
    if (exc.status === 404) return false;
    if (exc.status === 0) throw exc;
    return true;
  }
}

// Every item of a list the API pages by cursor.
export async function getAll(path, query = {}) {
  let items = [];
  let cursor;
  do {
    const page = await get(path, { ...query, limit: 1000, cursor });
    items = items.concat(page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

export function streamUrl(kinds, siteId) {
  const url = new URL(`${API}/stream`, window.location.origin);
  url.searchParams.set("kinds", kinds);
  if (siteId) url.searchParams.set("site_id", siteId);
  const token = getToken();
  if (token) url.searchParams.set("access_token", token);
  return url.toString();
}
