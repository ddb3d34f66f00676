// Every element of the dashboard is built here, from text: nothing a
// function or a tenant controls is ever parsed as HTML. Strings become
// text nodes; attributes are set one by one; handlers are functions.

const SVG = 'http://www.w3.org/2000/svg';

function setProps(el, props) {
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') {
      el.setAttribute('class', value);
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (name.startsWith('on')) {
      if (typeof value !== 'function') throw new TypeError(`${name} takes a function`);
      el.addEventListener(name.slice(2), value);
    } else if (name === 'value' || name === 'checked') {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

// h('p', {class: 'muted'}, 'text', h('b', {}, name)): an HTML element.
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

// The same for SVG elements.
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG, tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

// Replaces what `el` holds.
export function fill(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

// A time in milliseconds since the epoch, in the browser's time zone.
export function when(ms) {
  if (ms === undefined || ms === null) return '—';
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

// A log line's time: HH:MM:SS.mmm.
export function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function mib(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

// A message of success or failure shown beside a form.
export function notice(el, text, ok = false) {
  fill(el, text);
  el.className = ok ? 'notice ok' : 'notice error';
  el.hidden = false;
}

const part = encodeURIComponent;

// Where each page is: the dashboard's routes live in the URL's fragment.
export const to = {
  functions: (ns) => `#/ns/${part(ns)}`,
  fn: (ns, name) => `#/ns/${part(ns)}/fn/${part(name)}`,
  platform: () => '#/platform',
};

// An error of the API (or any other) as the page shows it.
export function failure(e) {
  const status = e.status ? `${e.status} ${e.code}: ` : '';
  return h('p', { class: 'notice error' }, `${status}${e.message}`);
}
