// The two-photo page: plain JS over /v1/models and /v1/compare, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const MEANING = {
  "near-duplicate": "Scores like this come from edited copies of one photo (resized, cropped, " +
    "recompressed, recoloured); fewer than 1% of unrelated photo pairs score this high.",
  "same object": "Scores like this come from the same object photographed from another " +
    "viewpoint or in other light; fewer than 1% of photos of different objects score this high.",
  "same category": "Scores like this come from two things of the same kind (two cups, two " +
    "faces); fewer than 1% of pairs from different categories score this high.",
  "same person": "Scores like this come from two photos of one person (the boxes show the " +
    "faces that matched); fewer than 1% of photos of different people score this high.",
  "different": "Below every calibrated threshold: most likely unrelated photos.",
};

// The face model answers with the box of the face that matched in each image (its pixels):
// drawn over the preview, in percent of the image's natural size so that it scales with it.
function showFace(which, box) {
  const mark = $("face-" + which);
  const img = $("preview-" + which);
  if (!box || !img.naturalWidth) {
    mark.hidden = true;
    return;
  }
  const w = img.naturalWidth, h = img.naturalHeight;
  mark.style.left = (100 * box.left / w) + "%";
  mark.style.top = (100 * box.top / h) + "%";
  mark.style.width = (100 * (box.right - box.left) / w) + "%";
  mark.style.height = (100 * (box.bottom - box.top) / h) + "%";
  mark.hidden = false;
}
let thresholds = {};

// A bearer token, when the server needs one: sent with every API call, kept for this tab only.
$("token").value = sessionStorage.getItem("imgsim-token") || "";
$("token").addEventListener("change", () => {
  sessionStorage.setItem("imgsim-token", $("token").value);
  $("model").innerHTML = "";
  loadModels();
});
// A 401 opens the token field and says why, instead of leaving a bare error: without a token
// the server requires one; with one, it refused that token.
function needsToken(resp) {
  if (resp.status !== 401) return false;
  $("token-box").open = true;
  $("token-why").textContent = $("token").value.trim() === ""
    ? "This server requires a bearer token: enter the --auth-token it was started with."
    : "The server refused this token: check it against the server's --auth-token.";
  $("token").focus();
  return true;
}

// The model a variant belongs to: the longest other listed name it starts with
// ("efficientnet-lite2-gem-260" -> "efficientnet-lite2"); a base model is its own group.
function baseOf(name, names) {
  let base = name;
  for (const other of names) {
    if (other !== name && name.startsWith(other + "-") && (base === name || other.length > base.length)) {
      base = other;
    }
  }
  return base;
}

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function showPreview(input, img) {
  const file = input.files[0];
  showFace(img.id.slice(-1), null);  // a new photo: the old box does not belong to it
  if (!file) { img.hidden = true; return; }
  img.src = URL.createObjectURL(file);
  img.hidden = false;
}

function updateButton() {
  $("compare").disabled = !(ready && $("image-a").files.length && $("image-b").files.length);
}

for (const [inputId, previewId] of [["image-a", "preview-a"], ["image-b", "preview-b"]]) {
  const input = $(inputId);
  const zone = document.querySelector(`.drop[data-for="${inputId}"]`);
  input.addEventListener("change", () => { showPreview(input, $(previewId)); updateButton(); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });
}

// The server's readiness (/readyz, the same truth as gRPC Health): until its default model is
// prepared, the page says so, with the reason, and polls; Compare is enabled once it is ready.
let ready = false;

async function watchReadiness() {
  try {
    const resp = await fetch("/readyz");
    const body = await resp.json();
    ready = resp.ok;
    $("preparing").hidden = ready;
    $("preparing").textContent = ready ? "" :
      `The server is still preparing its model (${body.reason}); Compare is enabled when it is ready.`;
  } catch (err) {
    ready = false;
    $("preparing").hidden = false;
    $("preparing").textContent = "The server does not answer: " + err.message;
  }
  updateButton();
  if (!ready) setTimeout(watchReadiness, 1000);
  else loadModels();  // states and weights change while a server prepares
}

async function loadModels() {
  try {
    $("error").textContent = "";
    const resp = await fetch("/v1/models", { headers: authHeaders() });
    const body = await resp.json();
    if (needsToken(resp)) return;
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    $("token-why").textContent = "";
    const select = $("model");
    select.innerHTML = "";
    const usable = body.models.filter((m) => m.weights_available);
    const names = usable.map((m) => m.name);
    const groups = new Map();  // base model -> its optgroup, in listing order
    for (const m of usable) {
      const base = baseOf(m.name, names);
      if (!groups.has(base)) {
        const group = document.createElement("optgroup");
        group.label = base;
        groups.set(base, group);
        select.appendChild(group);
      }
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = m.name + (m.name === body.default_model ? " (default)" : "");
      opt.title = m.description;
      groups.get(base).appendChild(opt);
      thresholds[m.name] = m.thresholds;
    }
    select.value = body.default_model;
  } catch (err) {
    $("error").textContent = "Could not list the models: " + err.message;
  }
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("error").textContent = "";
  $("score").textContent = "";
  $("verdict").textContent = "";
  $("verdict").className = "";
  $("meaning").textContent = "";
  showFace("a", null);
  showFace("b", null);
  const data = new FormData();
  data.append("image_a", $("image-a").files[0]);
  data.append("image_b", $("image-b").files[0]);
  data.append("model", $("model").value);
  $("compare").disabled = true;
  try {
    const resp = await fetch("/v1/compare", { method: "POST", body: data, headers: authHeaders() });
    const body = await resp.json();
    if (needsToken(resp)) throw new Error("a bearer token is needed (see above)");
    if (!resp.ok) {
      const err = body.error || {};
      throw new Error(`${err.message || resp.statusText} (HTTP ${resp.status} ${err.code || ""})`.trim());
    }
    $("score").textContent = `${body.score.toFixed(4)} (${body.model})`;
    showFace("a", body.face_a);
    showFace("b", body.face_b);
    if (body.verdict) {
      $("verdict").textContent = body.verdict;
      $("verdict").className = body.verdict === "different" ? "different" : "";
      $("meaning").textContent = MEANING[body.verdict] || "";
    }
  } catch (err) {
    $("error").textContent = "Comparison failed: " + err.message;
  } finally {
    updateButton();
  }
});

loadModels();
watchReadiness();
