// What every view shares: calls to the service, the status line, DOM building and formatting.
// Server strings only ever reach the page as text (textContent, attributes), never as HTML.

const KEY = "lookalike-api-key";
const statusLine = document.getElementById("status");

/** The service's answer to `path` (relative, so the page works under any prefix), parsed as JSON.
 * A 401 asks for the API key once, keeps it for the session and retries. Throws Error(message). */
export async function api(path, options = {}) {
  const headers = new Headers(options.headers);
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    const message = await errorMessage(response);
    if (await askForKey(message, key)) return api(path, options);
    throw new Error(message);
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

async function errorMessage(response) {
  let detail;
  try {
    detail = (await response.json()).detail;
  } catch {
    return `The service answered ${response.status} ${response.statusText}`;
  }
  if (Array.isArray(detail)) {  // a 422: one entry per bad field
    return detail.map((error) => `${(error.loc || []).slice(1).join(".") || "request"}: ${error.msg}`).join("; ");
  }
  return String(detail || `The service answered ${response.status}`);
}

// Several requests may be refused at once (deleting a group): they share one question.
let keyQuestion = null;

function askForKey(message, refused) {
  keyQuestion ??= new Promise((resolve) => {
    const dialog = document.getElementById("key-dialog");
    const input = document.getElementById("key");
    document.getElementById("key-why").textContent = refused ? "That key was refused. " + message : message;
    input.value = "";
    dialog.addEventListener("close", () => {
      const ok = dialog.returnValue === "ok" && input.value.trim() !== "";
      if (ok) sessionStorage.setItem(KEY, input.value.trim());
      keyQuestion = null;
      resolve(ok);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
  return keyQuestion;
}

/** Say `text` in the live status line; `kind` "error" or "busy" (a spinner) styles it. */
export function status(text, kind = "") {
  statusLine.textContent = text;
  statusLine.dataset.kind = kind;
}

/** A new element: `el("a", {href: "#x", className: "y"}, "text", child)`; data-* and aria-* as attributes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (name.startsWith("data-") || name.startsWith("aria-") || name === "role") node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children.filter((child) => child != null && child !== false));
  return node;
}

export const baseName = (path) => String(path).split(/[\\/]/).filter(Boolean).pop() || String(path);

export function formatBytes(bytes) {
  if (bytes == null) return "–";
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (bytes >= 1024 && unit < units.length - 1) {
    bytes /= 1024;
    unit += 1;
  }
  return `${unit ? bytes.toFixed(bytes < 10 ? 1 : 0) : bytes} ${units[unit]}`;
}

export const formatNumber = (value) => (value == null ? "–" : Number(value).toLocaleString("en"));

/** A stored image's thumbnail in a fixed square box (the grid doesn't jump while they load);
 * a neutral placeholder with the file name when it has none. */
export function thumbnail(imageId, fileName) {
  const box = el("span", { className: "thumb-box" });
  const image = el("img", { alt: "", loading: "lazy", width: 256, height: 256 });
  const placeholder = () => image.replaceWith(el("span", { className: "placeholder" }, baseName(fileName)));
  image.addEventListener("error", placeholder, { once: true });
  const src = `images/${imageId}/thumbnail`;
  const key = sessionStorage.getItem(KEY);
  if (key) {  // an <img> cannot send the key: where one is needed, fetch it and show the bytes
    fetch(src, { headers: { "X-API-Key": key } })
      .then((response) => (response.ok ? response.blob() : Promise.reject()))
      .then((blob) => {
        image.src = URL.createObjectURL(blob);
        image.addEventListener("load", () => URL.revokeObjectURL(image.src), { once: true });
      })
      .catch(placeholder);
  } else {
    image.src = src;
  }
  box.append(image);
  return box;
}

export const VERDICTS = { exact: "exact", near_duplicate: "near duplicate", copy: "copy", similar: "similar" };

/** The colour-coded verdict badge; null for "none". */
export function verdictBadge(verdict) {
  return verdict in VERDICTS ? el("span", { className: "verdict", "data-verdict": verdict }, VERDICTS[verdict]) : null;
}

// A dialog's Cancel is a plain button (Enter in a field submits the form's other, default, button).
for (const cancel of document.querySelectorAll("dialog button[value=cancel]")) {
  cancel.addEventListener("click", () => cancel.closest("dialog").close("cancel"));
}
