// lensfinder inspect: grid of ranked candidates, zoomed view, keyboard grading 0-3 with undo.
// Every grade is sent to the server (and committed to SQLite) as the key is pressed.
"use strict";

const S = {
  config: null, grader: null, per: 60, page: -1, items: [], selected: 0, zoom: false,
  stretch: 1, q: 8, queue: Promise.resolve(), detail: null,
};
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// Run one action at a time, in key-press order: two quick presses grade two candidates in turn.
function enqueue(action) {
  S.queue = S.queue.then(action).catch((err) => say(err.message, true));
  return S.queue;
}

function q(name) { return new URLSearchParams(location.search).get(name); }

function imgUrl(index, kind, band) {
  const b = band === undefined ? "" : `&band=${band}`;
  return `/img/${index}/${kind}.png?stretch=${S.stretch.toFixed(4)}&q=${S.q.toFixed(4)}${b}`;
}

function current() { return S.items[S.selected - S.page * S.per]; }

function fmtScore(x) { return typeof x === "number" ? x.toFixed(2) : String(x); }

function updateProgress(p) {
  const el = $("progress");
  el.dataset.graded = p.graded;
  el.dataset.total = p.total;
  const pct = p.total ? (100 * p.graded / p.total) : 0;
  el.querySelector(".fill").style.width = `${pct}%`;
  el.querySelector(".text").textContent =
    `${p.graded} / ${p.total} graded by you (${pct.toFixed(1)}%) \u00b7 ${p.graded_by_anyone} by anyone`;
}

function cardFor(index) { return document.querySelector(`.card[data-index="${index}"]`); }

function paintBadge(item) {
  const card = cardFor(item.index);
  if (!card) return;
  card.dataset.grade = item.grade === null ? "" : String(item.grade);
  let badge = card.querySelector(".badge");
  if (item.grade === null) { if (badge) badge.remove(); }
  else {
    if (!badge) { badge = document.createElement("span"); card.appendChild(badge); }
    badge.className = `badge g${item.grade}`;
    badge.textContent = String(item.grade);
    badge.title = S.config.grades[String(item.grade)];
  }
  let mark = card.querySelector(".comment-mark");
  if (item.comment && !mark) {
    mark = document.createElement("span"); mark.className = "comment-mark"; mark.textContent = "\u270e"; card.appendChild(mark);
  } else if (!item.comment && mark) mark.remove();
  if (mark) mark.title = item.comment;
}

function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  for (const item of S.items) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.index = item.index;
    card.dataset.object = item.object;
    card.title = item.object;
    let picture;
    if (item.problem) {
      picture = document.createElement("div");
      picture.className = "placeholder";
      picture.textContent = `cannot show: ${item.problem}`;
    } else {
      picture = document.createElement("img");
      picture.alt = `rank ${item.rank}`;
      picture.dataset.kind = "composite";
      picture.src = imgUrl(item.index, "composite");
    }
    card.appendChild(picture);
    const caption = document.createElement("div");
    caption.className = "caption";
    caption.innerHTML = `<span class="rank"></span><span class="score"></span>`;
    caption.querySelector(".rank").textContent = `#${item.rank}`;
    caption.querySelector(".score").textContent = `score ${fmtScore(item.score)}`;
    card.appendChild(caption);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = item.name;
    card.appendChild(name);
    card.addEventListener("click", () => enqueue(() => select(item.index)));
    card.addEventListener("dblclick", () => enqueue(() => { select(item.index); return openZoom(); }));
    grid.appendChild(card);
    paintBadge(item);
  }
  const pages = Math.max(1, Math.ceil(S.config.total / S.per));
  $("page").textContent = `page ${S.page + 1} of ${pages} (ranks ${S.items.length ? S.items[0].rank : "-"}` +
    `\u2013${S.items.length ? S.items[S.items.length - 1].rank : "-"})`;
}

async function loadPage(page) {
  const data = await api(`/api/items?start=${page * S.per}&count=${S.per}&grader=${encodeURIComponent(S.grader)}`);
  S.page = page;
  S.items = data.items;
  renderGrid();
  updateProgress(data.progress);
}

async function goTo(index) {
  index = Math.max(0, Math.min(S.config.total - 1, index));
  const page = Math.floor(index / S.per);
  if (page !== S.page) await loadPage(page);
  await select(index);
}

async function select(index) {
  const old = cardFor(S.selected);
  if (old) old.classList.remove("selected");
  S.selected = index;
  const card = cardFor(index);
  if (card) {
    card.classList.add("selected");
    if (!S.zoom) card.scrollIntoView({block: "nearest"});
  }
  const item = current();
  $("comment").value = item ? item.comment : "";
  $("comment-target").textContent = item ? `#${item.rank} ${item.name}` : "-";
  history.replaceState(null, "", `?grader=${encodeURIComponent(S.grader)}&at=${index}`);
  if (S.zoom) await renderZoom();
}

async function grade(value) {
  const item = current();
  if (!item) return;
  const comment = $("comment").value;
  const saved = await api("/api/grade", {object: item.object, grader: S.grader, grade: value, comment: comment});
  item.grade = saved.grade;
  item.comment = saved.comment;
  paintBadge(item);
  updateProgress(saved.progress);
  say(`#${item.rank} graded ${value} (${S.config.grades[String(value)]})`);
  if (item.index + 1 < S.config.total) await goTo(item.index + 1);
  else { say(`#${item.rank} graded ${value}; that was the last candidate`); if (S.zoom) await renderZoom(); }
}

async function saveComment() {
  const item = current();
  if (!item || item.grade === null) { say("the comment is saved with the next grade you give"); return; }
  const saved = await api("/api/grade", {object: item.object, grader: S.grader, grade: item.grade, comment: $("comment").value});
  item.comment = saved.comment;
  paintBadge(item);
  say(`comment saved on #${item.rank}`);
}

async function undo() {
  const done = await api("/api/undo", {grader: S.grader});
  updateProgress(done.progress);
  if (done.object === null) { say("nothing to undo"); return; }
  if (done.index === null) { say(`undid a grade of ${done.object} (not in this catalogue)`); return; }
  await goTo(done.index);
  const item = current();
  item.grade = done.grade;
  item.comment = done.comment || "";
  $("comment").value = item.comment;
  paintBadge(item);
  say(`undone: #${item.rank} is now ${done.grade === null ? "ungraded" : "graded " + done.grade}`);
}

function panel(src, label, big) {
  const div = document.createElement("div");
  div.className = big ? "panel big" : "panel";
  const img = document.createElement("img");
  img.src = src;
  img.alt = label;
  div.appendChild(img);
  const caption = document.createElement("div");
  caption.textContent = label;
  div.appendChild(caption);
  return div;
}

function row(table, key, value) {
  const tr = document.createElement("tr");
  const a = document.createElement("td"); a.textContent = key;
  const b = document.createElement("td"); b.textContent = value;
  tr.append(a, b);
  table.appendChild(tr);
}

async function renderZoom() {
  const item = current();
  if (!item) return;
  const d = await api(`/api/item/${item.index}?grader=${encodeURIComponent(S.grader)}`);
  S.detail = d;
  $("zoom").dataset.index = d.index;
  $("zoom-title").textContent = `#${d.rank}  ${d.name}`;
  const panels = $("zoom-panels");
  panels.replaceChildren();
  if (d.problem) {
    const p = document.createElement("div");
    p.className = "placeholder";
    p.textContent = `cannot show: ${d.problem}`;
    panels.appendChild(p);
  } else {
    panels.appendChild(panel(imgUrl(d.index, "composite"),
      d.bands.length === 3 ? `composite: ${d.bands[2]}, ${d.bands[1]}, ${d.bands[0]} as RGB (Lupton asinh)` : "asinh", true));
    const mid = Math.floor(d.bands.length / 2);
    panels.appendChild(panel(imgUrl(d.index, "residual", mid), `${d.bands[mid]}, residual stretch (\u00b1\u03c3 about sky)`));
    if (d.bands.length >= 3)
      panels.appendChild(panel(imgUrl(d.index, "difference"), `${d.bands[0]} \u2212 k\u00b7${d.bands[d.bands.length - 1]} (lens light removed)`));
    d.bands.forEach((name, k) => panels.appendChild(panel(imgUrl(d.index, "band", k), `${name} band (asinh)`)));
  }
  const facts = $("zoom-facts");
  facts.replaceChildren();
  row(facts, "rank", d.rank);
  row(facts, "object", d.object);
  row(facts, "score (log-odds)", typeof d.score === "number" ? d.score.toPrecision(8) : d.score);
  if (d.p_lens !== null) row(facts, "p(lens)", d.p_lens);
  if (d.predicted) row(facts, "predicted", d.predicted);
  if (d.shape) row(facts, "shape", d.shape.join(" \u00d7 "));
  row(facts, "your grade", item.grade === null ? "none" : `${item.grade} (${S.config.grades[String(item.grade)]})`);
  if (item.comment) row(facts, "your comment", item.comment);
  const meta = $("zoom-meta");
  meta.replaceChildren();
  const keys = Object.keys(d.metadata).filter((k) => d.metadata[k] !== "");
  $("zoom-meta-title").textContent = keys.length ? "simulator metadata (manifest.csv)" : "not from a simulated set (no manifest.csv above the cutout)";
  for (const k of keys) {
    const v = d.metadata[k];
    const x = Number(v);
    row(meta, k, v !== "" && isFinite(x) && !Number.isInteger(x) ? x.toPrecision(4) : v);
  }
}

async function openZoom() {
  S.zoom = true;
  $("zoom").style.top = `${document.querySelector("header").offsetHeight}px`;
  $("zoom").style.bottom = `${document.querySelector("footer").offsetHeight}px`;
  $("zoom").hidden = false;
  await renderZoom();
}
function closeZoom() { S.zoom = false; $("zoom").hidden = true; const c = cardFor(S.selected); if (c) c.scrollIntoView({block: "nearest"}); }

function columns() {
  const cards = document.querySelectorAll(".card");
  if (!cards.length) return 1;
  const top = cards[0].offsetTop;
  let n = 0;
  for (const c of cards) { if (c.offsetTop !== top) break; n++; }
  return Math.max(1, n);
}

function refreshImages() {
  for (const img of document.querySelectorAll("img")) {
    const url = new URL(img.src);
    if (!url.pathname.startsWith("/img/")) continue;
    url.searchParams.set("stretch", S.stretch.toFixed(4));
    url.searchParams.set("q", S.q.toFixed(4));
    img.src = url.pathname + url.search;
  }
}

function setupSliders() {
  const stretch = $("stretch"), qs = $("q");
  const saved = JSON.parse(localStorage.getItem("lensfinder-stretch-v1") || "null");
  if (saved) { stretch.value = saved.stretch; qs.value = saved.q; }
  const apply = () => {
    S.stretch = Math.pow(10, Number(stretch.value));
    S.q = Number(qs.value);
    $("stretch-value").textContent = S.stretch.toFixed(2);
    $("q-value").textContent = S.q.toFixed(1);
  };
  apply();
  const changed = () => {
    apply();
    localStorage.setItem("lensfinder-stretch-v1", JSON.stringify({stretch: stretch.value, q: qs.value}));
    refreshImages();
  };
  stretch.addEventListener("change", changed);
  qs.addEventListener("change", changed);
}

function onKey(event) {
  const target = event.target;
  if (target && (target.id === "comment" || target.id === "login-name")) {
    if (target.id === "comment" && event.key === "Enter") { event.preventDefault(); target.blur(); enqueue(saveComment); }
    else if (event.key === "Escape") target.blur();
    return;
  }
  if (target && target.tagName === "INPUT") return;  // sliders keep their arrow keys
  if (event.ctrlKey && event.key.toLowerCase() === "z") { event.preventDefault(); enqueue(undo); return; }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  let handled = true;
  if (["0", "1", "2", "3"].includes(key)) enqueue(() => grade(Number(key)));
  else if (key === "u" || key === "Backspace") enqueue(undo);
  else if (key === "ArrowRight" || key === "l") enqueue(() => goTo(S.selected + 1));
  else if (key === "ArrowLeft" || key === "h") enqueue(() => goTo(S.selected - 1));
  else if (key === "ArrowDown" || key === "j") enqueue(() => goTo(S.selected + (S.zoom ? 1 : columns())));
  else if (key === "ArrowUp" || key === "k") enqueue(() => goTo(S.selected - (S.zoom ? 1 : columns())));
  else if (key === "n" || key === "PageDown") enqueue(() => goTo((S.page + 1) * S.per));
  else if (key === "p" || key === "PageUp") enqueue(() => goTo(Math.max(0, (S.page - 1) * S.per)));
  else if (key === "Enter" || key === "z" || key === " ") enqueue(() => (S.zoom ? closeZoom() : openZoom()));
  else if (key === "Escape") { if (S.zoom) closeZoom(); }
  else if (key === "c") $("comment").focus();
  else handled = false;
  if (handled) event.preventDefault();
}

async function start(grader) {
  S.grader = grader;
  localStorage.setItem("lensfinder-grader", grader);
  $("grader-name").textContent = grader;
  $("login").hidden = true;
  const at = q("at");
  const resume = await api(`/api/resume?grader=${encodeURIComponent(grader)}`);
  updateProgress(resume.progress);
  await goTo(at !== null && /^\d+$/.test(at) ? Number(at) : resume.index);
  say(resume.progress.graded ? `welcome back, ${grader}: ${resume.progress.graded} graded so far` : `grading as ${grader}`);
}

async function init() {
  S.config = await api("/api/config");
  $("catalogue").textContent = `${S.config.catalogue} \u00b7 ${S.config.total} candidates`;
  const per = Number(q("per"));
  S.per = per >= 1 && per <= S.config.max_page ? Math.floor(per) : S.config.page_size;
  setupSliders();
  document.addEventListener("keydown", onKey);
  $("prev").addEventListener("click", () => enqueue(() => goTo(Math.max(0, (S.page - 1) * S.per))));
  $("next").addEventListener("click", () => enqueue(() => goTo((S.page + 1) * S.per)));
  $("undo").addEventListener("click", () => enqueue(undo));
  for (const b of document.querySelectorAll("footer button[data-grade]"))
    b.addEventListener("click", () => enqueue(() => grade(Number(b.dataset.grade))));
  const grader = q("grader") || S.config.default_grader;
  if (grader) return enqueue(() => start(grader));
  const form = $("login");
  form.hidden = false;
  $("login-name").value = localStorage.getItem("lensfinder-grader") || "";
  $("login-name").focus();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("login-name").value.trim();
    if (name) enqueue(() => start(name));
  });
}

init().catch((err) => say(err.message, true));
