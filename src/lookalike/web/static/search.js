// The search view: by a photo (picked, dropped or pasted), by a stored photo, or by a text.
import { api, baseName, el, status, thumbnail, verdictBadge } from "./common.js";

const ENGINE_NAMES = {
  image_text: "image text", text: "OCR words", captions: "caption", caption_embedding: "caption meaning",
};
const engineName = (engine) => ENGINE_NAMES[engine] || engine;

const results = document.getElementById("results");
const headline = document.getElementById("headline");
const timer = document.getElementById("timer");
const preview = document.getElementById("preview");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");
const textInput = document.getElementById("text");

let running = null;  // the AbortController of the search on screen: a new search cancels it

/** Run one search: `request(signal)` fetches the answer, `paint(answer)` shows it and says what it found. */
async function search(request, paint) {
  running?.abort();
  const controller = (running = new AbortController());
  const started = performance.now();
  const seconds = () => `${((performance.now() - started) / 1000).toFixed(1)} s`;
  const tick = setInterval(() => (timer.textContent = seconds()), 100);
  results.dataset.state = "loading";
  results.setAttribute("aria-busy", "true");
  headline.textContent = "";
  status("Searching…", "busy");
  try {
    const found = await paint(await request(controller.signal), controller.signal);
    if (controller.signal.aborted) return;
    status(`${found} ${found === 1 ? "photo" : "photos"} in ${seconds()}`);
    results.dataset.state = "done";
  } catch (error) {
    if (controller.signal.aborted) return;
    results.replaceChildren();
    results.dataset.state = "error";
    status(error.message, "error");
  } finally {
    clearInterval(tick);
    if (running === controller) {
      timer.textContent = seconds();
      results.removeAttribute("aria-busy");
    }
  }
}

preview.addEventListener("error", () => (preview.hidden = true));  // a stored photo without a thumbnail

function showPreview(src, label) {
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = src;
  preview.alt = label;
  preview.hidden = false;
}

function searchByFile(file) {
  showPreview(URL.createObjectURL(file), `Your photo, ${file.name}`);
  const form = new FormData();
  form.append("image", file);
  form.append("k", "20");
  search((signal) => api("search", { method: "POST", body: form, signal }), (answer) => paintFused(answer, false));
}

function searchById(imageId, fileName) {
  showPreview(`images/${imageId}/thumbnail`, `Searching by ${baseName(fileName)}`);
  search((signal) => api(`images/${imageId}/similar?k=20`, { signal }), (answer) => paintFused(answer, true));
  headline.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

function searchByText(text) {
  preview.hidden = true;
  const body = JSON.stringify({ text, k: 20 });
  const headers = { "Content-Type": "application/json" };
  search((signal) => api("search_text", { method: "POST", body, headers, signal }), (answer, signal) => paintText(answer, text, signal));
}

// -- answers of the fused image search --

function paintFused({ verdict, hits }, byStoredPhoto) {
  const match = hits.find((hit) => hit.verdict === verdict);
  const where = byStoredPhoto ? "Also in your library" : "Already in your library";
  const of = match && baseName(match.file_name);
  headline.textContent = {
    exact: `${where}: exact copy of ${of}`,
    near_duplicate: `${where}: near duplicate of ${of}`,
    copy: `${where}: a copy of ${of}`,
    similar: "Not here; similar photos:",
  }[verdict] || (hits.length ? "Nothing like it; the closest photos:" : "Nothing like it");
  results.replaceChildren(...hits.map(fusedCard));
  return hits.length;
}

const round = (value) => String(Number(value.toPrecision(3)));

function evidenceValue(evidence) {
  if (evidence.distance != null) return `distance ${round(evidence.distance)}`;
  if (evidence.matches != null) return `${evidence.matches} matches`;
  return `relevance ${round(evidence.relevance)}`;
}

function fusedCard(hit) {
  const engines = Object.entries(hit.evidence || {});
  const line = ([engine, e]) => {
    const precise = e.precise_matches != null ? `, ${e.precise_matches} precise` : "";
    return `${engineName(engine)}: ${evidenceValue(e)}${precise}, rank ${e.rank}, weight ${round(e.weight)}`;
  };
  const badges = engines.map((entry) => {
    const value = evidenceValue(entry[1]).replace(/^(distance|relevance) /, "");
    return el("li", { className: "badge", title: line(entry) }, el("b", {}, engineName(entry[0])), ` ${value}`);
  });
  const details = el("details", {},
    el("summary", {}, "Evidence"),
    el("ul", { className: "evidence" }, el("li", {}, `score ${round(hit.score)}`), ...engines.map((entry) => el("li", {}, line(entry)))));
  return card(hit, verdictBadge(hit.verdict), el("ul", { className: "badges", "aria-label": "Engines" }, ...badges), details);
}

/** A result card; its thumbnail is a button that searches by that photo. */
function card(hit, ...body) {
  const name = baseName(hit.file_name);
  const button = el("button", { type: "button", className: "thumb", title: `Search by ${hit.file_name}`, "aria-label": `Search by ${name}` },
    thumbnail(hit.image_id, hit.file_name));
  button.addEventListener("click", () => searchById(hit.image_id, hit.file_name));
  return el("article", { className: "card", "data-image-id": hit.image_id },
    button, el("div", { className: "card-body" }, el("h3", { className: "name", title: hit.file_name }, name), ...body));
}

// -- answers of the text search --

async function paintText({ hits, found = {} }, text, signal) {
  // The photos ranked by meaning first, then those only some engine's own list has (found by words, tags).
  const cards = new Map(hits.map((hit) => [hit.image_id, { ...hit, lists: {} }]));
  for (const [engine, list] of Object.entries(found)) {
    list.forEach((entry, rank) => {
      if (!cards.has(entry.image_id)) cards.set(entry.image_id, { ...entry, lists: {} });
      cards.get(entry.image_id).lists[engine] = { ...entry, rank: rank + 1 };
    });
  }
  headline.textContent = cards.size ? `Photos for “${text}”` : `No photo matches “${text}”`;
  const painted = [...cards.values()].map((hit) => textCard(hit, text, signal));
  results.replaceChildren(...painted.map(([node]) => node));
  await Promise.all(painted.map(([, wordsRead]) => wordsRead));  // "done" once the OCR lines are in
  return cards.size;
}

function textCard(hit, text, signal) {
  const badges = Object.entries(hit.lists).map(([engine, entry]) => {
    const tip = `${engineName(engine)}: ${evidenceValue(entry)}, rank ${entry.rank}`;
    // Focusable, so the score shows (a CSS tooltip) on keyboard focus as on hover.
    return el("li", { className: "badge", tabIndex: 0, "data-tip": tip, "aria-label": tip }, el("b", {}, engineName(engine)));
  });
  const similarity = hit.similarity != null ? el("p", { className: "muted small" }, `similarity ${round(hit.similarity)}`) : null;
  const node = card(hit, similarity, el("ul", { className: "badges", "aria-label": "Found by" }, ...badges));
  const wordsRead = hit.lists.text ? addWordsRead(node, hit.image_id, text, signal) : null;
  return [node, wordsRead];
}

/** The OCR lines of a photo the text engine found, the query's words marked; lines with a match first. */
async function addWordsRead(node, imageId, text, signal) {
  let lines;
  try {
    lines = await api(`images/${imageId}/text`, { signal });
  } catch {
    return;  // the card stands without them
  }
  const wanted = words(text);
  const shown = lines.map((line) => highlighted(line.text, wanted))
    .sort((a, b) => hasMark(b) - hasMark(a)).slice(0, 3);
  if (!shown.length) return;
  const quote = el("p", { className: "ocr" }, el("span", { className: "muted" }, "Reads: "));
  shown.forEach((parts, i) => quote.append(...(i ? [" · "] : []), ...parts));
  node.querySelector(".card-body").append(quote);
}

// Case- and accent-insensitive; a word of 4+ letters also matches within one edit, as the server's does.
const fold = (word) => word.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase();
const words = (text) => fold(text).match(/[\p{L}\p{N}]+/gu) || [];
const hasMark = (parts) => parts.some((part) => part instanceof Node);

function matches(word, wanted) {
  const folded = fold(word);
  return wanted.some((w) => w === folded || (w.length >= 4 && folded.length >= 4 && oneEditApart(w, folded)));
}

function oneEditApart(a, b) {
  if (Math.abs(a.length - b.length) > 1) return false;
  let i = 0;
  while (i < a.length && a[i] === b[i]) i += 1;
  // After the common start: one substitution, one insertion or one deletion, then the same rest.
  return a.slice(i + 1) === b.slice(i + 1) || a.slice(i) === b.slice(i + 1) || a.slice(i + 1) === b.slice(i);
}

/** The line as text and <mark> nodes: split() with a captured group puts the words at odd indexes. */
function highlighted(line, wanted) {
  return line.split(/([\p{L}\p{N}]+)/u).map((part, i) => (i % 2 && matches(part, wanted) ? el("mark", {}, part) : part));
}

// -- input: picker, drag and drop, paste, text form --

fileInput.addEventListener("change", () => {
  if (fileInput.files.length) searchByFile(fileInput.files[0]);
  fileInput.value = "";  // choosing the same file again searches again
});

document.getElementById("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textInput.value.trim();
  if (text) searchByText(text);
});

const hasFiles = (event) => event.dataTransfer?.types.includes("Files");
document.addEventListener("dragover", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();  // allows the drop, anywhere on the page
  drop.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) drop.classList.remove("dragging");  // left the window
});
document.addEventListener("drop", (event) => {
  drop.classList.remove("dragging");
  if (!hasFiles(event)) return;
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (!document.getElementById("view-search").hidden) return searchByFile(file);
  // From another view: switch first, so that the switch doesn't clear the search's status.
  addEventListener("hashchange", () => searchByFile(file), { once: true });
  location.hash = "#search";
});

document.addEventListener("paste", (event) => {
  const file = event.clipboardData?.files[0];
  if (!file || document.getElementById("view-search").hidden) return;
  event.preventDefault();
  searchByFile(file);
});
