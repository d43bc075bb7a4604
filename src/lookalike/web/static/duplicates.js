// The duplicates view: groups of copies, a page at a time; keep one photo of a group, delete the others.
import { api, baseName, el, formatBytes, status, thumbnail, verdictBadge } from "./common.js";

const PAGE = 20;
const tier = document.getElementById("tier");
const groups = document.getElementById("groups");
const total = document.getElementById("dup-total");
const pageLabel = document.getElementById("page");
const prev = document.getElementById("prev");
const next = document.getElementById("next");
const confirm = document.getElementById("confirm");

let page = 0;

/** Load and show the current page; then announce `said` (after a deletion), styled as `kind`. */
export async function showDuplicates(said = "", kind = "") {
  status("Looking for duplicates…", "busy");
  groups.dataset.state = "loading";
  let answer;
  try {
    answer = await api(`duplicates?tier=${tier.value}&offset=${page * PAGE}&limit=${PAGE}`);
  } catch (error) {
    status(error.message, "error");
    return;
  }
  const pages = Math.max(1, Math.ceil(answer.total / PAGE));
  if (page >= pages) {  // the last page emptied by a deletion: show the one before
    page = pages - 1;
    return showDuplicates(said, kind);
  }
  total.textContent = `${answer.total.toLocaleString("en")} ${answer.total === 1 ? "group" : "groups"}`;
  pageLabel.textContent = `Page ${page + 1} of ${pages}`;
  prev.disabled = page === 0;
  next.disabled = page + 1 >= pages;
  groups.replaceChildren(...answer.groups.map((found, i) => group(found, page * PAGE + i)));
  if (!answer.total) groups.append(el("p", { className: "panel empty" }, "No duplicates at this tier."));
  groups.dataset.state = "done";
  status(said, kind);
}

function group(found, index) {
  const keep = `keep-${index}`;
  const button = el("button", { type: "button", className: "danger" }, "Delete the others");
  const section = el("section", { className: "panel group", "data-group": index, "aria-label": `Group ${index + 1}` },
    el("div", { className: "group-head" },
      verdictBadge(found.tier), el("span", { className: "muted" }, `${found.images.length} photos`), button),
    el("fieldset", { className: "members" },
      el("legend", { className: "visually-hidden" }, "The photo to keep"),
      ...found.images.map((image, i) => member(image, keep, i === 0))));
  button.addEventListener("click", () => {
    const kept = Number(section.querySelector(`input[name="${keep}"]:checked`).value);
    deleteOthers(found.images.filter((image) => image.image_id !== kept));
  });
  return section;
}

/** One photo of a group: the whole card is the label of its "Keep" radio. */
function member(image, keep, checked) {
  const facts = el("span", { className: "muted small" }, "\u00a0");
  api(`images/${image.image_id}`).then((about) => {
    const size = about.width ? `${about.width}×${about.height}` : null;
    facts.textContent = [size, about.bytes != null ? formatBytes(about.bytes) : null].filter(Boolean).join(" · ") || "\u00a0";
  }, () => {});  // the facts are a nicety: the card stands without them
  return el("label", { className: "member", "data-image-id": image.image_id },
    thumbnail(image.image_id, image.file_name),
    el("span", { className: "name", title: image.file_name }, baseName(image.file_name)),
    el("span", { className: "muted small path" }, folder(image.file_name)),  // copies often differ only there
    facts,
    el("span", { className: "keep" }, el("input", { type: "radio", name: keep, value: image.image_id, checked }), "Keep"));
}

const folder = (path) => String(path).slice(0, -baseName(path).length) || "\u00a0";

async function deleteOthers(doomed) {
  const list = document.getElementById("confirm-list");
  list.replaceChildren(...doomed.map((image) => el("li", {}, image.file_name)));
  confirm.querySelector("button.danger").textContent = `Delete ${doomed.length} ${doomed.length === 1 ? "photo" : "photos"}`;
  confirm.returnValue = "";
  confirm.showModal();
  await new Promise((resolve) => confirm.addEventListener("close", resolve, { once: true }));
  if (confirm.returnValue !== "delete") return;
  status("Deleting…", "busy");
  const failed = [];
  for (const image of doomed) {
    try {
      await api(`images/${image.image_id}`, { method: "DELETE" });
    } catch (error) {
      failed.push(`${baseName(image.file_name)}: ${error.message}`);
    }
  }
  const deleted = doomed.length - failed.length;
  const said = [`Deleted ${deleted} ${deleted === 1 ? "photo" : "photos"}.`, ...failed].join(" ");
  await showDuplicates(said, failed.length ? "error" : "");
  document.getElementById("dup-title").focus();  // the button that opened the dialog is gone
}

tier.addEventListener("change", () => {
  page = 0;
  showDuplicates();
});
prev.addEventListener("click", () => {
  page -= 1;
  showDuplicates();
});
next.addEventListener("click", () => {
  page += 1;
  showDuplicates();
});
