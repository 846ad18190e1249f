// The side panels: the SOP (built from the server's Markdown tree, never from an HTML string), the agreement of
// annotators, and the exports.
import { clear, el } from "./dom.js";
import { api, banner } from "./app.js";

const SAFE_HREF = /^(https?:|mailto:|#)/i;

function build(node) {
  if (typeof node === "string") return document.createTextNode(node);
  const [tag, attrs, ...children] = node;
  const safe = {};
  if (tag === "a" && attrs.href && SAFE_HREF.test(attrs.href)) { safe.href = attrs.href; safe.rel = "noreferrer"; safe.target = "_blank"; }
  if (attrs.align) safe.class = `align-${attrs.align}`;
  return el(tag, safe, ...children.map(build));
}

export function renderSop(box, session) {
  clear(box);
  if (!session.sop) {
    box.append(el("p", { class: "muted", text: session.sop_error || "no SOP" }));
    return;
  }
  const body = el("div", { class: "sop" }, ...session.sop.map(build));
  const toc = el("div", { class: "toc" });
  const heads = [...body.querySelectorAll("h2")];
  for (const head of heads) {
    toc.append(el("button", { type: "button", class: "small", text: head.textContent,
                              onclick: () => head.scrollIntoView({ block: "start" }) }));
  }
  box.append(toc, body);
}

function pct(x) { return `${(100 * x).toFixed(0)}%`; }

export async function renderAgreement(box) {
  clear(box).append(el("p", { class: "muted", text: "reading…" }));
  const { status, data } = await api("GET", "/api/agreement");
  clear(box);
  if (status !== 200) return box.append(el("p", { text: data.detail || "no agreement" }));
  box.append(el("p", { text: `${data.shared_samples} samples labeled by two or more annotators.` }));
  for (const pair of data.pairs) {
    const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "field" }), el("th", { text: "agree" }),
                                                      el("th", { text: "Cohen's kappa" }))));
    const rows = el("tbody");
    for (const [name, field] of Object.entries(pair.fields)) {
      rows.append(el("tr", {}, el("td", { text: name }), el("td", { text: `${field.agree} / ${field.total}` }),
                     el("td", { text: field.kappa === null ? "—" : field.kappa.toFixed(2) })));
    }
    table.append(rows);
    box.append(el("h3", { text: `${pair.annotators.join(" × ")}: ${pair.shared} shared, exact ${pct(pair.exact)}` }), table);
  }
}

export function renderExport(box, session) {
  clear(box);
  if (session.role !== "reviewer") {
    box.append(el("p", { class: "muted", text: "Exports are the reviewer's: accepted labels leave from a reviewer's session." }));
    return;
  }
  const queue = el("select", { id: "export-queue", "aria-label": "queue to export" },
                   ...["relabel", "bad-cases", "seed"].map((q) => el("option", { value: q, text: q })));
  const out = el("pre", { id: "export-text" });
  const show = async () => {
    const { status, data } = await api("GET", `/api/export?queue=${encodeURIComponent(queue.value)}`);
    if (status !== 200) return banner(data.detail || "the export failed", "error");
    out.textContent = data || "(no accepted labels yet)";
    return data;
  };
  const download = async () => {
    const data = await show();
    if (typeof data !== "string") return;
    const link = el("a", { href: URL.createObjectURL(new Blob([data], { type: "application/x-ndjson" })),
                           download: `${session.task.name}-${queue.value}-alpaca.jsonl` });
    link.click();
    URL.revokeObjectURL(link.href);
  };
  const round = async () => {
    const { status, data } = await api("POST", "/api/export/round", { queue: queue.value });
    if (status !== 200) return banner(data.detail || "the export failed", "error");
    out.textContent = JSON.stringify(data, null, 2);
  };
  box.append(el("p", { text: "Accepted labels (submitted and reviewed) as Alpaca JSONL, with metadata and lineage." }),
    queue,
    el("div", { class: "actions" },
       el("button", { type: "button", id: "export-show", text: "Show", onclick: show }),
       el("button", { type: "button", id: "export-download", text: "Download JSONL", onclick: download }),
       el("button", { type: "button", id: "export-round", text: "Into the next round", onclick: round })),
    out);
}
