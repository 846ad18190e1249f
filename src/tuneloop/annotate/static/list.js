// The queue's list and its filters (every value of every filter comes from the server; text set as text).
import { clear, el } from "./dom.js";

export function filterPanel(box, session, facets, filters, reload) {
  clear(box);
  for (const name of session.filters) {
    const select = el("select", { "aria-label": `filter ${name}`, dataset: { filter: name } },
                      el("option", { value: "", text: "all" }));
    for (const value of facets[name] || []) {
      select.append(el("option", { value, text: name === "status" ? session.states[value] || value : value,
                                   selected: filters[name] === value }));
    }
    select.addEventListener("change", () => {
      if (select.value) filters[name] = select.value; else delete filters[name];
      reload();
    });
    box.append(el("label", {}, name.replace("_", " "), select));
  }
}

export function itemList(list, items, current, open) {
  clear(list);
  items.forEach((item, index) => {
    list.append(el("li", { class: index === current ? "current" : "", dataset: { id: item.id }, onclick: () => open(index) },
      el("span", { class: `state state-${item.state}`, text: item.state }),
      el("code", { text: item.id }),
      el("span", { class: "snippet", text: item.input }),
      item.reasons && item.reasons.length ? el("span", { class: "reasons", text: item.reasons.join(" · ") }) : null,
      item.cluster !== null && item.cluster !== undefined ? el("span", { class: "muted", text: ` cluster ${item.cluster}` }) : null));
  });
}
