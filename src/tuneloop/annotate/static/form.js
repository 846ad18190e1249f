// The answer editor: a field-by-field form generated from the task's JSON Schema, and the raw JSON text of the
// answer, kept in sync both ways. The raw text is what is saved (it is what the model must produce); the form
// writes it with pyDumps, and a raw edit that parses rebuilds the form.
import { clear, el, pyDumps } from "./dom.js";

function jsonType(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

// A field's schema as {spec, types, nullable}: anyOf/oneOf of one type and null counts as a nullable field.
export function describe(spec) {
  spec = spec || {};
  for (const key of ["anyOf", "oneOf"]) {
    const branches = spec[key];
    if (Array.isArray(branches)) {
      const rest = branches.filter((b) => !(b && (b.type === "null" || (b.const === null))));
      if (rest.length === 1) {
        const inner = describe({ ...spec, ...rest[0], [key]: undefined });
        return { ...inner, nullable: inner.nullable || rest.length < branches.length };
      }
      return { spec, types: ["json"], nullable: false };
    }
  }
  let types = spec.type;
  if (types === undefined) {
    if (Array.isArray(spec.enum)) types = [...new Set(spec.enum.map(jsonType))];
    else if (spec.properties) types = ["object"];
    else if (spec.items) types = ["array"];
    else types = ["json"];
  }
  if (!Array.isArray(types)) types = [types];
  const nullable = types.includes("null") || (Array.isArray(spec.enum) && spec.enum.includes(null));
  return { spec, types: types.filter((t) => t !== "null"), nullable };
}

// The empty answer a form starts from: every key of the schema, in its order, null (arrays empty).
export function skeleton(spec) {
  const { spec: s, types, nullable } = describe(spec);
  if (types[0] === "object" && s.properties) {
    const out = {};
    for (const [key, child] of Object.entries(s.properties)) out[key] = skeleton(child);
    return out;
  }
  if (types[0] === "array" && !nullable) return [];
  return null;
}

function enumLabel(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function parseNumber(text, nullable) {
  const s = text.trim();
  if (s === "") return nullable ? null : "";
  // a value that is no number stays text, so the schema check names the field instead of the form guessing
  return /^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(s) ? Number(s) : text;
}

export class AnswerEditor {
  constructor(root, schema, onChange) {
    this.root = root;
    this.schema = schema;
    this.onChange = onChange;
    this.enumFields = [];
    this.activeEnum = null;
    this.text = "";
    this.value = undefined;
    this.fields = el("div", { class: "fields", dataset: { path: "output" } });
    this.raw = el("textarea", { class: "raw", id: "raw-json", rows: 6, spellcheck: "false",
                                "aria-label": "raw JSON of the answer", dataset: { path: "output" } });
    this.rawNote = el("div", { class: "raw-note" });
    this.raw.addEventListener("input", () => this.fromRaw());
    clear(root).append(
      el("div", { class: "answer-form" }, el("h3", { text: "Answer fields" }), this.fields),
      el("div", { class: "answer-raw" }, el("h3", { text: "Raw JSON (what the model must write)" }), this.raw, this.rawNote),
    );
  }

  set(text) {
    this.text = text || "";
    this.raw.value = this.text;
    this.parse();
    this.render();
  }

  parse() {
    this.rawNote.textContent = "";
    if (!this.text.trim()) {
      this.value = skeleton(this.schema);
      this.pristine = true;  // the skeleton becomes the answer only once a field is edited
      return;
    }
    this.pristine = false;
    try {
      this.value = JSON.parse(this.text);
    } catch (err) {
      this.value = undefined;
      this.rawNote.textContent = "The raw text is not JSON (" + err.message + "): the field editor waits until it parses.";
    }
  }

  fromRaw() {
    this.text = this.raw.value;
    this.parse();
    this.render();
    this.onChange();
  }

  // A field edit: the tree changed in place; the raw text follows.
  changed() {
    this.pristine = false;
    this.value = this.holder.root;
    this.text = pyDumps(this.value);
    this.raw.value = this.text;
    this.rawNote.textContent = "";
    this.onChange();
  }

  render() {
    this.enumFields = [];
    clear(this.fields);
    if (this.value === undefined) {
      this.fields.append(el("p", { class: "muted", text: "Fix the raw JSON to edit field by field." }));
      return;
    }
    this.holder = { root: this.value };
    this.fields.append(this.field("output", this.schema, this.holder, "root", "answer"));
    const first = this.enumFields[0];
    if (!this.enumFields.includes(this.activeEnum)) this.activeEnum = first || null;
    else if (this.activeEnum) {
      // the field was rebuilt: point at the new select of the same path
      this.activeEnum = this.enumFields.find((s) => s.dataset.path === this.activeEnum.dataset.path) || first;
    }
  }

  field(path, spec, holder, key, name) {
    const info = describe(spec);
    const value = holder[key];
    const kind = info.types.length === 1 ? info.types[0] : "json";
    const wrap = el("div", { class: "field kind-" + kind, dataset: { path } });
    const label = el("label", { class: "field-name", text: name });
    if (info.spec.description) label.title = info.spec.description;
    if (Array.isArray(info.spec.enum)) {
      wrap.append(label, this.enumPicker(path, info.spec.enum, holder, key, value));
    } else if (kind === "object" && info.spec.properties && value !== null && typeof value === "object" && !Array.isArray(value)) {
      const box = el("fieldset", { class: "object" }, el("legend", { text: name }));
      const order = Object.keys(info.spec.properties);
      for (const [child, childSpec] of Object.entries(info.spec.properties)) {
        const childHolder = new Proxy(value, {
          set: (target, prop, v) => {
            const missing = !(prop in target);
            target[prop] = v;
            if (missing) reorder(target, order);  // a key the form adds goes to its place in the schema's order
            return true;
          },
        });
        box.append(this.field(`${path}.${child}`, childSpec, childHolder, child, child));
      }
      wrap.append(box);
      if (info.nullable) wrap.append(this.nullToggle(holder, key, true, () => skeleton(info.spec)));
    } else if (kind === "array" && Array.isArray(value)) {
      const list = el("div", { class: "array" });
      value.forEach((_item, index) => {
        const row = el("div", { class: "array-item" },
          this.field(`${path}[${index}]`, info.spec.items || {}, value, index, `${name}[${index}]`),
          el("button", { type: "button", class: "small", text: "remove",
                         onclick: () => { value.splice(index, 1); this.changed(); this.render(); } }));
        list.append(row);
      });
      list.append(el("button", { type: "button", class: "small", text: `add ${name} item`,
                                 onclick: () => { value.push(skeleton(info.spec.items || {})); this.changed(); this.render(); } }));
      wrap.append(label, list);
      if (info.nullable) wrap.append(this.nullToggle(holder, key, true, () => []));
    } else if ((kind === "object" || kind === "array") && value === null) {
      wrap.append(label, el("span", { class: "muted", text: " null " }),
                  this.nullToggle(holder, key, false, () => (kind === "array" ? [] : skeleton(info.spec))));
    } else if (kind === "string" || kind === "number" || kind === "integer") {
      const input = el("input", { type: "text", class: "scalar", "aria-label": path,
                                  value: value === null || value === undefined ? "" : String(value) });
      if (kind !== "string") input.inputMode = "decimal";
      const isNull = value === null;
      let box = null;
      if (isNull) input.placeholder = "null";
      input.addEventListener("input", () => {
        holder[key] = kind === "string" ? input.value : parseNumber(input.value, info.nullable);
        if (box) box.checked = holder[key] === null;  // typing a value is leaving null
        this.changed();
      });
      wrap.append(label, input);
      if (info.nullable) {
        box = el("input", { type: "checkbox", class: "null-box", checked: isNull, "aria-label": `${path} is null` });
        box.addEventListener("change", () => {
          if (box.checked) { input.value = ""; input.placeholder = "null"; }
          holder[key] = box.checked ? null : (kind === "string" ? input.value : parseNumber(input.value, false));
          this.changed();
        });
        wrap.append(el("label", { class: "null" }, box, " null"));
      }
      if (value === undefined) wrap.append(el("span", { class: "missing", text: "missing" }));
    } else if (kind === "boolean") {
      const choices = info.nullable ? [true, false, null] : [true, false];
      wrap.append(label, this.enumPicker(path, choices, holder, key, value));
    } else {
      const area = el("textarea", { class: "json-field", rows: 2, value: value === undefined ? "" : JSON.stringify(value),
                                    "aria-label": path });
      area.addEventListener("input", () => {
        try {
          holder[key] = JSON.parse(area.value);
          area.classList.remove("bad");
          this.changed();
        } catch {
          area.classList.add("bad");
        }
      });
      wrap.append(label, area);
    }
    return wrap;
  }

  enumPicker(path, choices, holder, key, value) {
    const select = el("select", { class: "enum", "aria-label": path, dataset: { path } });
    const known = choices.findIndex((c) => c === value);
    if (known < 0) {
      const shown = value === undefined ? "(missing)" : `${enumLabel(value)} (not an allowed value)`;
      select.append(el("option", { value: "", text: shown, selected: true }));
    }
    choices.forEach((choice, index) => {
      const digit = index < 9 ? `${index + 1} · ` : "";
      select.append(el("option", { value: String(index), text: digit + enumLabel(choice), selected: index === known }));
    });
    select.addEventListener("change", () => {
      if (select.value === "") return;
      holder[key] = choices[Number(select.value)];
      if (select.options[0].value === "") select.remove(0);
      this.changed();
    });
    select.addEventListener("focus", () => { this.activeEnum = select; });
    select.choices = choices;
    this.enumFields.push(select);
    return select;
  }

  nullToggle(holder, key, isSet, make) {
    return el("button", { type: "button", class: "small", text: isSet ? "set to null" : "give a value",
                          onclick: () => { holder[key] = isSet ? null : make(); this.changed(); this.render(); } });
  }

  // Digit n picks the n-th label of the enum field last focused (the first enum field before any is focused).
  pickDigit(n) {
    const select = this.activeEnum;
    if (!select || n < 1 || n > Math.min(9, select.choices.length)) return false;
    select.value = String(n - 1);
    select.dispatchEvent(new Event("change"));
    return true;
  }
}

function reorder(target, order) {
  const entries = Object.entries(target);
  const rank = (k) => (order.includes(k) ? order.indexOf(k) : order.length);
  entries.sort((a, b) => rank(a[0]) - rank(b[0]));
  for (const [k] of entries) delete target[k];
  for (const [k, v] of entries) target[k] = v;
}
