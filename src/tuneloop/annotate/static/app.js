// The annotation page: queues, the sample form, validation, review, the side panels, the shortcuts.
// The server is the authority on every rule and role; this page shows what it says, next to the field it names.
import { AnswerEditor } from "./form.js";
import { clear, debounce, el, isTyping, when } from "./dom.js";
import { filterPanel, itemList } from "./list.js";
import { renderAgreement, renderExport, renderSop } from "./panels.js";

const $ = (id) => document.getElementById(id);
const state = {
  token: null, session: null, queue: "seed", filters: {}, items: [], index: -1, item: null,
  answer: null, problems: [], dirty: false, leaveWarned: false, checkSeq: 0, previewSeq: 0,
};

// -- the server ----------------------------------------------------------------------------------------------------
function readToken() {
  const match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("tuneloop-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // the token leaves the address bar
  }
  return sessionStorage.getItem("tuneloop-token");
}

export async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${state.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("application/json") ? await response.json() : await response.text();
  return { status: response.status, data };
}

export function banner(text, kind = "info", extra = []) {
  const node = $("banner");
  node.className = kind;
  clear(node).append(el("span", { text }), ...extra);
  node.hidden = false;
}

function hideBanner() { $("banner").hidden = true; }

// -- queues and the list -------------------------------------------------------------------------------------------
function renderQueues() {
  const nav = clear($("queues"));
  for (const name of state.session.queues) {
    nav.append(el("button", { type: "button", text: name, class: name === state.queue ? "active" : "",
                              dataset: { queue: name }, onclick: () => { state.queue = name; state.filters = {}; loadList(); } }));
  }
}

async function loadList(keep) {
  renderQueues();
  const params = new URLSearchParams({ queue: state.queue, ...state.filters });
  const { status, data } = await api("GET", `/api/items?${params}`);
  if (status !== 200) return banner(data.detail || "the queue could not be read", "error");
  state.items = data.items;
  renderFilters(data.facets);
  $("counts").textContent = `${data.items.length} of ${data.total} samples`;
  renderList();
  const at = keep ? state.items.findIndex((i) => i.kind === keep.kind && i.id === keep.id) : -1;
  if (at >= 0) state.index = at;
  else if (state.items.length) await openAt(0);
  else {
    Object.assign(state, { index: -1, item: null, problems: [] });  // answers still in flight for the old item are stale
    clear($("editor")).append(el("p", { class: "muted", text: "This queue is empty." }));
  }
}

function renderFilters(facets) {
  filterPanel($("filters"), state.session, facets, state.filters, loadList);
}

function renderList() {
  itemList($("items"), state.items, state.index, openAt);
}

async function openAt(index, force) {
  if (index < 0 || index >= state.items.length) return;
  if (state.dirty && !force && !state.leaveWarned) {
    state.leaveWarned = true;
    return banner("Unsaved changes: Ctrl+S saves a draft; move again to leave without saving.");
  }
  const summary = state.items[index];
  const { status, data } = await api("GET", `/api/items/${summary.kind}/${encodeURIComponent(summary.id)}`);
  if (status !== 200) return banner(data.detail || "the sample could not be read", "error");
  state.index = index;
  renderList();
  const current = $("items").children[index];
  if (current) current.scrollIntoView({ block: "nearest" });
  hideBanner();
  showItem(data);
}

// -- the form ------------------------------------------------------------------------------------------------------
function textRow(label, path, value, rows = 2) {
  const area = el("textarea", { rows, value: value || "", "aria-label": label, dataset: { path } });
  area.addEventListener("input", changed);
  return el("div", { class: "row", dataset: { path } }, el("label", { text: label }), area);
}

function selectRow(label, path, choices, value) {
  const select = el("select", { "aria-label": label, dataset: { path } });
  if (value && !choices.includes(value)) choices = [...choices, value];  // a value of the data's own is kept as it is
  for (const choice of choices) select.append(el("option", { value: choice, text: choice || "(none)", selected: choice === (value || "") }));
  select.addEventListener("change", changed);
  return el("div", { class: "row", dataset: { path } }, el("label", { text: label }), select);
}

function showItem(item) {
  state.item = item;
  state.dirty = false;
  state.leaveWarned = false;
  const sample = item.sample;
  const session = state.session;
  const annotator = session.role === "annotator";
  const editor = clear($("editor"));
  const head = el("div", { class: "card" },
    el("h3", {}, el("span", { class: `state state-${item.state}`, text: item.state }), el("code", { text: item.id })),
    el("div", { class: "muted", id: "status-line",
                text: `version ${item.version} · origin ${item.origin} · annotator ${item.annotator || "—"} · reviewer ` +
                      `${item.reviewer || "—"} · updated ${when(item.updated_at)} · created ${when(item.created_at)}` }),
    item.reasons && item.reasons.length ? el("div", { class: "reasons", text: "why it is here: " + item.reasons.join("; ") }) : null,
    item.comment ? el("div", { class: "comment", text: "comment: " + item.comment }) : null);
  const prompt = el("div", { class: "card" }, el("h3", { text: "Prompt" }),
    sample.system ? el("div", { class: "row" }, el("label", { text: "system" }), el("pre", { text: sample.system })) : null,
    ...(sample.history || []).map((turn, i) => el("div", { class: "row" }, el("label", { text: `turn ${i + 1}` }),
                                                   el("pre", { text: turn.join("\n→ ") }))),
    textRow("instruction", "instruction", sample.instruction),
    textRow("input", "input", sample.input, 3));
  const answerBox = el("div", { class: "answer-editor" });
  let plain = null;
  if (session.schema) {
    state.answer = new AnswerEditor(answerBox, session.schema, changed);
    state.answer.set(sample.output);
  } else {
    state.answer = null;
    plain = el("textarea", { rows: 6, value: sample.output, "aria-label": "output", id: "plain-output", dataset: { path: "output" } });
    plain.addEventListener("input", changed);
    answerBox.append(el("div", { class: "row", dataset: { path: "output" } }, el("label", { text: "output" }), plain));
  }
  const model = el("div", { class: "model-answer" }, el("h3", { text: item.model_answer_kind }),
    item.model_answer ? el("pre", { text: item.model_answer }) : el("p", { class: "muted", text: "none" }));
  if (item.proposal) model.append(el("h3", { text: `proposal (${item.proposed_by || "a model"})` }), el("pre", { text: item.proposal }));
  if (annotator) {
    for (const [text, source] of [["start from the model's answer", item.model_answer], ["start from the proposal", item.proposal]]) {
      if (source) model.append(el("button", { type: "button", class: "small", text, onclick: () => setOutput(source) }));
    }
  }
  const answer = el("div", { class: "card" }, el("h3", { text: "Answer" }), el("div", { class: "answer" }, answerBox, model));
  const meta = el("div", { class: "card" }, el("h3", { text: "Metadata" }),
    selectRow("expected", "expected", ["answer", "refuse"], sample.expected),
    selectRow("sample_type", "sample_type", session.sample_types, sample.sample_type),
    selectRow("difficulty", "meta.difficulty", ["", ...session.difficulties], sample.meta.difficulty),
    textRow("task_type", "meta.task_type", sample.meta.task_type, 1),
    textRow("domain", "meta.domain", sample.meta.domain, 1),
    el("div", { class: "muted", text: `source ${sample.meta.source || "—"} · lineage ${sample.lineage.source_id || "—"}` +
                                      (sample.lineage.parent_id ? ` ← ${sample.lineage.parent_id}` : "") }));
  const notes = annotator ? textRow("comment", "comment", "", 1) : null;
  editor.append(head, prompt, answer, meta, notes ? el("div", { class: "card" }, notes) : null,
                el("div", { class: "card" }, el("h3", { text: "Rule checks" }), el("ul", { id: "problems" })));
  if (session.role === "reviewer") editor.append(reviewCard(item));
  else editor.append(actionBar(item));
  editor.querySelectorAll("textarea, input, select, .answer-editor button, .model-answer button").forEach((node) => {
    if (!annotator && !node.closest(".review")) node.disabled = true;
  });
  runCheck();
  runPreview();
}

function setOutput(text) {
  if (state.answer) state.answer.set(text); else $("plain-output").value = text;
  changed();
}

function actionBar(item) {
  const bar = el("div", { class: "actions" },
    el("button", { type: "button", class: "primary", id: "submit", text: "Submit (Ctrl+Enter)", onclick: () => save("submit") }),
    el("button", { type: "button", id: "save-draft", text: "Save draft (Ctrl+S)", onclick: () => save("draft") }),
    el("button", { type: "button", id: "discard", text: "Discard (Alt+D)", onclick: () => save("discard") }),
    el("span", { id: "save-note", class: "muted" }));
  if (item.annotator && item.annotator !== state.session.user && ["submitted", "reviewed"].includes(item.status)) {
    bar.append(el("button", { type: "button", class: "small", text: "label it independently",
                              title: "start from the queued sample, not the other annotator's label (agreement)",
                              onclick: () => { showItem({ ...item, sample: item.queued_sample }); changed(); } }));
  }
  return bar;
}

function reviewCard(item) {
  const comment = el("textarea", { rows: 2, id: "review-comment", "aria-label": "review comment" });
  const card = el("div", { class: "card review" }, el("h3", { text: "Review" }));
  if (item.labels && item.labels.length) {
    card.append(el("div", { class: "labels" }, el("h3", { text: "submitted labels" }),
      ...item.labels.map((l) => el("div", {}, el("span", { class: "muted", text: `${l.annotator}, version ${l.version}, ${when(l.at)}` }),
                                   el("pre", { text: l.output })))));
  }
  const allowed = item.status === "submitted";
  card.append(el("div", { class: "row" }, el("label", { text: "comment" }), comment),
    el("div", { class: "actions" },
      el("button", { type: "button", class: "primary", id: "accept", text: "Accept", disabled: !allowed, onclick: () => review("accept") }),
      el("button", { type: "button", id: "reject", text: "Reject (with a comment)", disabled: !allowed, onclick: () => review("reject") }),
      allowed ? null : el("span", { class: "muted", text: "only a submitted label can be reviewed" })));
  return card;
}

function value(path) {
  const node = $("editor").querySelector(`[data-path="${path}"]:is(textarea, select, input)`);
  return node ? node.value : undefined;
}

function readForm() {
  return {
    instruction: value("instruction"), input: value("input"),
    output: state.answer ? state.answer.text : $("plain-output").value,
    expected: value("expected"), sample_type: value("sample_type"),
    meta: { task_type: value("meta.task_type"), difficulty: value("meta.difficulty"), domain: value("meta.domain") },
    comment: value("comment") || "",
  };
}

function changed() {
  state.dirty = true;
  state.leaveWarned = false;
  scheduleCheck();
  schedulePreview();
}

const scheduleCheck = debounce(() => runCheck(), 250);
const schedulePreview = debounce(() => runPreview(), 400);

async function runCheck() {
  if (!state.item) return;
  const seq = ++state.checkSeq;
  const item = state.item;
  const { status, data } = await api("POST", "/api/check", { kind: item.kind, id: item.id, form: readForm() });
  // a newer check is on its way, or the editor moved on (another item, an emptied queue): this answer is stale
  if (seq !== state.checkSeq || state.item !== item || !$("problems")) return;
  if (status !== 200) return banner(data.detail || "the rule check failed", "error");
  showProblems(data.problems);
}

async function runPreview() {
  if (!state.item) return;
  const seq = ++state.previewSeq;
  const { status, data } = await api("POST", "/api/preview", { kind: state.item.kind, id: state.item.id, form: readForm() });
  if (seq !== state.previewSeq) return;
  $("preview").textContent = status === 200 ? data.prompt : `No preview: ${data.detail || status}`;
}

function parentPath(path) {
  const next = path.replace(/(\.[^.[\]]+|\[\d+\])$/, "");
  return next === path ? null : next;
}

function fieldNode(path) {
  const editor = $("editor");
  if (path === "output") return editor.querySelector(".answer-raw") || editor.querySelector('.row[data-path="output"]');
  for (let at = path; at; at = parentPath(at)) {
    const node = editor.querySelector(`.field[data-path="${CSS.escape(at)}"], .row[data-path="${CSS.escape(at)}"]`);
    if (node) return node;
    if (at === "output") return fieldNode("output");
  }
  return null;
}

function showProblems(problems) {
  state.problems = problems;
  const editor = $("editor");
  editor.querySelectorAll(".problem").forEach((n) => n.remove());
  editor.querySelectorAll(".has-problem").forEach((n) => n.classList.remove("has-problem"));
  const box = $("problems");
  if (!box) return;  // no editor on screen (an emptied queue): nothing to mark
  const list = clear(box);
  for (const problem of problems) {
    const text = `${problem.field}: ${problem.message}${problem.fix ? "; " + problem.fix : ""}`;
    list.append(el("li", { text, dataset: { field: problem.field, rule: problem.rule } }));
    const node = fieldNode(problem.field);
    if (node) {
      node.classList.add("has-problem");
      node.append(el("div", { class: "problem", text: `${problem.message}${problem.fix ? " — " + problem.fix : ""}`,
                              dataset: { field: problem.field } }));
    }
  }
  if (!problems.length) list.append(el("li", { class: "ok muted", text: "every rule passes" }));
  const submit = $("submit");
  if (submit) {
    submit.disabled = problems.length > 0;
    submit.title = problems.length ? `fix ${problems.length} problem(s) first` : "";
  }
}

// -- saving --------------------------------------------------------------------------------------------------------
async function save(action) {
  if (!state.item || state.session.role !== "annotator") return;
  if (action === "submit" && state.problems.length) {
    banner(`Submit is blocked: fix ${state.problems.length} problem(s) first (a draft can always be saved).`, "error");
    const first = $("editor").querySelector(".has-problem");
    if (first) first.scrollIntoView({ block: "center" });
    return;
  }
  const { status, data } = await api("PUT", `/api/items/${state.item.kind}/${encodeURIComponent(state.item.id)}`,
                                     { action, version: state.item.version, form: readForm() });
  if (status === 200) {
    const note = { draft: "draft saved", submit: "submitted", discard: "discarded" }[action];
    hideBanner();
    showItem(data);
    $("save-note").textContent = `${note} · version ${data.version}`;
    const row = state.items[state.index];
    if (row) Object.assign(row, { state: data.state, status: data.status, version: data.version });
    renderList();
  } else if (status === 409) {
    conflict(data);
  } else if (status === 422) {
    showProblems(data.problems);
    banner(data.detail, "error");
  } else {
    banner(data.detail || `the save failed (${status})`, "error");
  }
}

function conflict(data) {
  const newer = data.item;
  banner(`Conflict: ${data.detail}. Their answer (version ${newer.version}, ${newer.annotator || newer.reviewer || "someone"}):`,
    "conflict", [
      el("pre", { class: "theirs", text: newer.sample.output || "(empty)" }),
      el("button", { type: "button", id: "load-theirs", text: "Load their version",
                     onclick: () => { hideBanner(); showItem(newer); } }),
      el("button", { type: "button", id: "keep-mine", text: "Keep my edits (save over theirs next)",
                     onclick: () => keepMine(newer.version) }),
    ]);
}

// The user has seen the newer text and keeps theirs: the next save goes over that version, knowingly.
function keepMine(version) {
  hideBanner();
  state.item.version = version;
  $("status-line").textContent += ` · your edits now go over version ${version}`;
  changed();
}

async function review(verdict) {
  const comment = $("review-comment").value;
  const { status, data } = await api("POST", "/api/review",
                                     { kind: state.item.kind, id: state.item.id, version: state.item.version, verdict, comment });
  if (status === 200) {
    showItem(data);
    banner(verdict === "accept" ? "accepted" : "rejected: back to the annotator as a draft");
    loadList({ kind: data.kind, id: data.id });
  } else if (status === 409) {
    conflict(data);
  } else {
    banner(data.detail || `the review failed (${status})`, "error");
  }
}

// -- shortcuts -----------------------------------------------------------------------------------------------------
function toggleHelp(show) {
  const help = $("help");
  help.hidden = show === undefined ? !help.hidden : !show;
}

function onKey(event) {
  const key = event.key;
  if ((event.ctrlKey || event.metaKey) && key === "Enter") { event.preventDefault(); return save("submit"); }
  if ((event.ctrlKey || event.metaKey) && (key === "s" || key === "S")) { event.preventDefault(); return save("draft"); }
  if (event.altKey && event.code === "KeyD") { event.preventDefault(); return save("discard"); }
  if (key === "Escape") { toggleHelp(false); if (document.activeElement) document.activeElement.blur(); return; }
  if (isTyping(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
  if (key === "?") { event.preventDefault(); return toggleHelp(); }
  if (key === "j") { event.preventDefault(); return openAt(state.index + 1); }
  if (key === "k") { event.preventDefault(); return openAt(state.index - 1); }
  if (/^[1-9]$/.test(key) && state.answer && state.session.role === "annotator") {
    if (state.answer.pickDigit(Number(key))) event.preventDefault();
  }
}

// -- side panels ---------------------------------------------------------------------------------------------------
function showTab(name) {
  document.querySelectorAll(".tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((t) => { t.hidden = t.id !== `tab-${name}`; });
  if (name === "agreement") renderAgreement($("tab-agreement"));
  if (name === "export") renderExport($("tab-export"), state.session);
}

async function start() {
  state.token = readToken();
  if (!state.token) return banner("No token: open the URL that `tuneloop annotate` printed.", "error");
  const { status, data } = await api("GET", "/api/session");
  if (status !== 200) return banner(data.detail || "the token was refused", "error");
  state.session = data;
  state.queue = data.role === "reviewer" ? "review" : "seed";
  $("task").textContent = data.task.name;
  $("who").textContent = `${data.user} (${data.role})`;
  renderSop($("tab-sop"), data);
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("help-button").addEventListener("click", () => toggleHelp());
  document.addEventListener("keydown", onKey);
  await loadList();
  document.body.dataset.ready = "1";  // for scripts and tests: the first sample is on the page
}

start();
