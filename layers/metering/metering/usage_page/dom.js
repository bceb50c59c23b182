// Building the page's DOM from text and nodes only: no HTML string is ever parsed, so no data the API returns
// can become markup.

export function element(tag, { className, text, attributes = {} } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

// A <data> element: the formatted text a person reads, the exact value a machine (or a test) reads.
export function dataValue(value, text) {
  return element("data", { text, attributes: { value } });
}

export function replaceChildren(target, children) {
  target.replaceChildren(...children);
}

export function show(node, visible) {
  node.hidden = !visible;
}

export function byId(id) {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`the page has no element #${id}`);
  return node;
}
