// The functions of one namespace: each with its aliases, the version
// `latest` serves, its instances by state and its last hour in charts.
// Refreshed every few seconds, so a deploy from the CLI shows up here.

import { h, fill, failure, to } from './dom.js';
import { api, fnPath, nsPath } from './api.js';
import { hourCharts } from './charts.js';

const REFRESH_MS = 3000;

// `latest → v3`, `prod → v2 90 % · v3 10 %`.
export function aliasText(a) {
  if (!a.split) return `${a.name} → v${a.version}`;
  return `${a.name} → v${a.version} ${100 - a.split.percent} % · v${a.split.version} ${a.split.percent} %`;
}

export function aliasChips(aliases) {
  return h('span', { class: 'chips' },
    aliases.map((a) => h('span', { class: 'chip', dataset: { alias: a.name } }, aliasText(a))));
}

export function instanceText(i) {
  return `busy ${i.busy} · idle ${i.idle - i.paused} · paused ${i.paused} · starting ${i.starting} · waiting ${i.waiting}`;
}

function card(ns, f, stats) {
  return h('article', { class: 'card function', dataset: { function: f.name } },
    h('header', {},
      h('h2', {}, h('a', { href: to.fn(ns, f.name) }, f.name)),
      h('span', { class: 'version' }, `v${f.version}`),
      aliasChips(f.aliases)),
    h('p', { class: 'muted' }, `instances: ${instanceText(f.instances)}`),
    stats ? hourCharts(stats) : h('p', { class: 'muted' }, 'no figures yet'));
}

// What an `invoke` key can do: call a function it knows the name of.
function invokeOnly(page, main) {
  const name = h('input', { id: 'function-name', required: true, pattern: '[a-z0-9\\-]+', placeholder: 'api' });
  const form = h('form', { class: 'card' },
    h('p', {}, 'An invoke key calls functions and reads nothing: name the function to call.'),
    h('label', { for: 'function-name' }, 'Function'), name,
    h('button', { type: 'submit', class: 'primary' }, 'Open'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    location.hash = to.fn(page.namespace(), name.value.trim());
  });
  fill(main, h('h1', {}, `Namespace ${page.namespace()}`), form);
}

async function namespacePicker(ns) {
  const { namespaces } = await api('GET', '/v1/namespaces');
  const select = h('select', { id: 'namespace' },
    namespaces.map((n) => h('option', { value: n.name, selected: n.name === ns }, n.name)));
  select.addEventListener('change', () => {
    sessionStorage.setItem('thaw.ns', select.value);
    location.hash = to.functions(select.value);
  });
  return h('label', { class: 'picker' }, 'Namespace ', select);
}

export async function functionsPage(page, main) {
  if (!page.can.read) return invokeOnly(page, main);
  const ns = page.namespace();
  const list = h('div', { id: 'functions', class: 'list' });
  const status = h('p', { class: 'muted', id: 'functions-status' });
  fill(main,
    h('div', { class: 'title' },
      h('h1', {}, `Functions in ${ns}`),
      page.can.admin ? await namespacePicker(ns) : null),
    status, list);

  const load = async () => {
    let functions;
    try {
      ({ functions } = await api('GET', nsPath(ns, '/functions')));
    } catch (e) {
      if (page.alive) fill(list, failure(e));
      return;
    }
    const stats = await Promise.all(functions.map((f) =>
      api('GET', fnPath(ns, f.name, '/stats')).catch(() => null)));
    if (!page.alive) return;
    fill(status, `${functions.length} function${functions.length === 1 ? '' : 's'}; ` +
      'figures of the last hour since thaw started, refreshed every few seconds');
    if (functions.length === 0) {
      fill(list, h('p', { class: 'card muted' },
        'No function is deployed here yet: ', h('code', {}, 'thaw deploy ./folder --name api')));
      return;
    }
    fill(list, functions.map((f, i) => card(ns, f, stats[i])));
  };
  await load();
  page.every(REFRESH_MS, load);
}
