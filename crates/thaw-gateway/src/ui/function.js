// One function: its figures, an invoke form, live logs, versions and
// aliases with rollback, secrets by name, schedules and dead letters.
// Buttons that change anything exist only for a role that may (each is
// marked data-changes); the API refuses the rest anyway.

import { h, fill, failure, notice, when, clock } from './dom.js';
import { api, fnPath } from './api.js';
import { hourCharts, weightBar } from './charts.js';
import { aliasChips, aliasText, instanceText } from './functions.js';

const OVERVIEW_MS = 5000;
const LOGS_MS = 1000;
const DEAD_MS = 5000;
// Log lines kept on the page; older ones scroll away.
const MAX_LINES = 1000;

function section(id, title, ...children) {
  return h('section', { class: 'card', id }, h('h2', {}, title), ...children);
}

// A button that changes state through the API: runs `action`, then
// `after`, and says how it went in `note`.
function change(label, note, action, after, props = {}) {
  const button = h('button', { type: 'button', dataset: { changes: '' }, ...props }, label);
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      const said = await action();
      if (said) notice(note, said, true);
      await after?.();
    } catch (e) {
      notice(note, `${e.status ?? ''} ${e.code ?? ''}: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function table(head, rows) {
  return h('table', {},
    h('thead', {}, h('tr', {}, head.map((t) => h('th', {}, t)))),
    h('tbody', {}, rows));
}

function overview(page, path) {
  const facts = h('div', { id: 'overview' });
  const charts = h('div', { id: 'charts' });
  const load = async () => {
    const [f, stats] = await Promise.all([api('GET', path()), api('GET', path('/stats'))]);
    if (!page.alive) return;
    fill(facts,
      h('p', {}, h('span', { class: 'version' }, `v${f.version}`), ' ', aliasChips(f.aliases)),
      h('dl', { class: 'facts' },
        h('dt', {}, 'URL'), h('dd', {}, h('code', {}, f.url)),
        h('dt', {}, 'Entry'), h('dd', {}, f.entry),
        h('dt', {}, 'Deployed'), h('dd', {}, `${when(f.deployed_ms)} by ${f.deployed_by}`),
        h('dt', {}, 'Instances'), h('dd', { id: 'instances' }, instanceText(f.instances))));
    fill(charts, hourCharts(stats));
  };
  return { el: h('section', { class: 'card', id: 'function-overview' }, facts, charts), load };
}

function invokeForm(page, path, logs) {
  const target = h('input', { id: 'invoke-target', placeholder: 'latest', size: 10 });
  const event = h('textarea', { id: 'invoke-event', rows: 4, spellcheck: 'false' }, '{}');
  const result = h('div', { id: 'invoke-result' });
  const form = h('form', { id: 'invoke-form' },
    h('div', { class: 'row' },
      h('label', { for: 'invoke-target' }, 'Alias or version'), target),
    h('label', { for: 'invoke-event' }, 'Event (JSON)'), event,
    h('button', { type: 'submit', class: 'primary', dataset: { changes: '' }, id: 'invoke' }, 'Invoke'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = event.value.trim() || 'null';
    try {
      JSON.parse(text);
    } catch (err) {
      return fill(result, h('p', { class: 'notice error' }, `The event is not JSON: ${err.message}`));
    }
    const qualifier = target.value.trim();
    fill(result, h('p', { class: 'muted' }, 'running…'));
    try {
      const r = await api('POST', path('/invoke', qualifier), text);
      fill(result, outcome(r));
      logs.catchUp();
    } catch (err) {
      fill(result, failure(err), logLines(err.details?.logs ?? []));
    }
  });
  return section('invoke-section', 'Invoke', form, result);
}

function logLines(lines) {
  if (!lines.length) return null;
  return h('pre', { class: 'output' }, lines.map((l) => `${l.stream}: ${l.line}\n`));
}

// What POST {F}/invoke answered: status, body, headers, logs.
function outcome(r) {
  const head = [
    r.status !== undefined ? `status ${r.status}` : 'no status',
    `version ${r.version}`,
    r.cold ? 'cold start' : 'warm',
    `invocation ${r.invocation}`,
  ].join(' · ');
  let body = r.body ?? null;
  if (body === null && r.body_base64) body = `(binary, base64) ${r.body_base64}`;
  return h('div', {},
    h('p', { id: 'invoke-status' }, head),
    r.error ? h('pre', { class: 'output error', id: 'invoke-error' },
      `${r.error.name ?? 'Error'}: ${r.error.message}\n${r.error.stack ?? ''}`) : null,
    r.headers?.length ? h('details', {}, h('summary', {}, 'Headers'),
      h('pre', { class: 'output' }, r.headers.map(([k, v]) => `${k}: ${v}\n`))) : null,
    body !== null ? [h('h3', {}, 'Body'), h('pre', { class: 'output', id: 'invoke-body' }, body)] : null,
    r.logs.length ? [h('h3', {}, 'Logs'), logLines(r.logs)] : null);
}

// Lines as they come: GET {F}/logs?after=SEQ every second.
function liveLogs(page, path) {
  const list = h('ol', { class: 'logs', id: 'logs' });
  const filter = h('input', { id: 'log-invocation', inputmode: 'numeric', placeholder: 'all', size: 12 });
  const state = h('span', { class: 'muted', id: 'logs-state' });
  let next = null;
  let invocation = null;
  let generation = 0;

  const line = (l) => {
    const by = h('button', { type: 'button', class: 'link', title: 'only this invocation' }, `#${l.invocation ?? '—'}`);
    if (l.invocation !== undefined) by.addEventListener('click', () => only(l.invocation));
    return h('li', { class: l.stream },
      h('time', {}, clock(l.ts_ms)),
      h('span', { class: 'v' }, l.version !== undefined ? `v${l.version}` : ''),
      by,
      h('span', { class: 'line' }, l.line));
  };
  const load = async () => {
    const mine = generation;
    const query = new URLSearchParams({ limit: '500' });
    if (next !== null) query.set('after', String(next));
    if (invocation !== null) query.set('invocation', String(invocation));
    const got = await api('GET', path(`/logs?${query}`));
    if (!page.alive || mine !== generation) return;
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.append(...got.logs.map(line));
    while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
    next = got.next;
    fill(state, invocation === null ? 'every invocation' : `invocation ${invocation} only`);
  };
  const only = (id) => {
    invocation = id;
    filter.value = id === null ? '' : String(id);
    next = null;
    generation += 1;
    list.replaceChildren();
    load().catch(() => {});
  };
  const form = h('form', { class: 'row', id: 'log-filter' },
    h('label', { for: 'log-invocation' }, 'Invocation'), filter,
    h('button', { type: 'submit' }, 'Filter'),
    h('button', { type: 'button', onclick: () => only(null) }, 'All'),
    state);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = filter.value.trim();
    only(/^\d+$/.test(v) ? Number(v) : null);
  });
  return {
    el: section('logs-section', 'Logs', form, list),
    load,
    // After an invoke from the form: look for its lines now rather than
    // at the next tick.
    catchUp: () => load().catch(() => {}),
  };
}

function versionsAndAliases(page, path, refresh) {
  const note = h('p', { class: 'notice', hidden: true });
  const versions = h('div', { id: 'versions' });
  const aliases = h('div', { id: 'aliases' });
  const load = async () => {
    const [v, a] = await Promise.all([api('GET', path('/versions')), api('GET', path('/aliases'))]);
    if (!page.alive) return;
    const latest = a.aliases.find((x) => x.name === 'latest');
    fill(aliases, table(['Alias', 'Routes to', 'Weights', 'Updated'], a.aliases.map((x) =>
      h('tr', { dataset: { alias: x.name } },
        h('td', {}, x.name),
        h('td', { class: 'alias-target' }, aliasText(x)),
        h('td', {}, x.split ? weightBar(x.split.percent) : '100 %'),
        h('td', {}, when(x.updated_ms))))));
    fill(versions, table(['Version', 'Deployed', 'By', 'Cause', 'Aliases', ''], v.versions.map((x) =>
      h('tr', { dataset: { version: String(x.number) } },
        h('td', {}, `v${x.number}`),
        h('td', {}, when(x.created_ms)),
        h('td', {}, x.deployed_by),
        h('td', {}, x.cause),
        h('td', {}, x.aliases.join(', ')),
        h('td', {}, page.can.change && latest && latest.version !== x.number
          ? change(`Roll back to v${x.number}`, note,
            async () => {
              const moved = await api('POST', path('/rollback'), { to: x.number });
              return `latest now routes to v${moved.version}`;
            }, refresh, { dataset: { changes: '', rollbackTo: String(x.number) } })
          : null)))));
  };
  const el = section('versions-section', 'Versions and aliases',
    h('h3', {}, 'Aliases'), aliases, h('h3', {}, 'Versions'), versions, note);
  return { el, load };
}

function secrets(page, path, refresh) {
  const note = h('p', { class: 'notice', hidden: true });
  const list = h('div', { id: 'secrets' });
  const load = async () => {
    const s = await api('GET', path('/secrets'));
    if (!page.alive) return;
    if (!s.secrets.length) return fill(list, h('p', { class: 'muted' }, 'No secrets.'));
    fill(list, table(['Name', 'Set', ''], s.secrets.map((x) => h('tr', {},
      h('td', {}, h('code', {}, x.name)),
      h('td', {}, when(x.updated_ms)),
      h('td', {}, page.can.change
        ? change('Delete', note, async () => {
          await api('DELETE', path(`/secrets/${encodeURIComponent(x.name)}`));
          return `${x.name} deleted: a new version serves without it`;
        }, refresh) : null)))));
  };
  let form = null;
  if (page.can.change) {
    const name = h('input', { id: 'secret-name', required: true, pattern: '[A-Za-z_][A-Za-z0-9_]*', placeholder: 'DB_PASSWORD' });
    const value = h('input', { id: 'secret-value', type: 'password', autocomplete: 'off', required: true });
    form = h('form', { class: 'row', id: 'secret-form' },
      h('label', { for: 'secret-name' }, 'Name'), name,
      h('label', { for: 'secret-value' }, 'Value'), value,
      h('button', { type: 'submit', dataset: { changes: '' } }, 'Set secret'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        await api('PUT', path(`/secrets/${encodeURIComponent(name.value.trim())}`), { value: value.value });
        notice(note, `${name.value.trim()} set: a new version serves with it`, true);
        value.value = '';
        await refresh();
      } catch (err) {
        notice(note, `${err.status ?? ''} ${err.code ?? ''}: ${err.message}`);
      }
    });
  }
  const el = section('secrets-section', 'Secrets',
    h('p', { class: 'muted' }, 'Names only: no route ever returns a value.'), list, form, note);
  return { el, load };
}

function schedules(page, path) {
  const note = h('p', { class: 'notice', hidden: true });
  const list = h('div', { id: 'schedules' });
  const load = async () => {
    const s = await api('GET', path('/schedules'));
    if (!page.alive) return;
    if (!s.schedules.length) return fill(list, h('p', { class: 'muted' }, 'No schedules.'));
    fill(list, table(['Name', 'Cron', 'Time zone', 'Alias', 'From', 'Next', 'Last', 'Fired', 'Missed', ''],
      s.schedules.map((x) => h('tr', {},
        h('td', {}, x.name), h('td', {}, h('code', {}, x.cron)), h('td', {}, x.timezone),
        h('td', {}, x.alias), h('td', {}, x.origin), h('td', {}, when(x.next_ms)),
        h('td', {}, when(x.last_tick_ms)), h('td', {}, String(x.fired)), h('td', {}, String(x.missed)),
        h('td', {}, page.can.change && x.origin === 'api'
          ? change('Delete', note, async () => {
            await api('DELETE', path(`/schedules/${encodeURIComponent(x.name)}`));
            return `schedule ${x.name} removed`;
          }, load) : null)))));
  };
  let form = null;
  if (page.can.change) {
    const field = (id, label, props) => [h('label', { for: id }, label), h('input', { id, ...props })];
    form = h('form', { class: 'row', id: 'schedule-form' },
      field('schedule-name', 'Name', { required: true, placeholder: 'nightly' }),
      field('schedule-cron', 'Cron', { required: true, placeholder: '0 3 * * *' }),
      field('schedule-timezone', 'Time zone', { placeholder: 'UTC' }),
      field('schedule-alias', 'Alias', { placeholder: 'latest' }),
      h('button', { type: 'submit', dataset: { changes: '' } }, 'Add schedule'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const value = (id) => form.querySelector(`#${id}`).value.trim() || undefined;
      const body = {
        name: value('schedule-name'), cron: value('schedule-cron'),
        timezone: value('schedule-timezone'), alias: value('schedule-alias'),
      };
      try {
        await api('POST', path('/schedules'), body);
        notice(note, `schedule ${body.name} added`, true);
        await load();
      } catch (err) {
        notice(note, `${err.status ?? ''} ${err.code ?? ''}: ${err.message}`);
      }
    });
  }
  return { el: section('schedules-section', 'Schedules', list, form, note), load };
}

function deadLetters(page, path) {
  const note = h('p', { class: 'notice', hidden: true });
  const list = h('div', { id: 'dead-letters' });
  const actions = h('div', { class: 'row' });
  const count = (r) => `${r.count} call${r.count === 1 ? '' : 's'} ${r.action}`;
  const load = async () => {
    const d = await api('GET', path('/invocations?state=dead&limit=100'));
    if (!page.alive) return;
    fill(actions, page.can.change && d.calls.length ? [
      change('Replay all', note, async () => count(await api('POST', path('/dlq/replay'))), load),
      change('Purge all', note, async () => count(await api('POST', path('/dlq/purge'))), load),
    ] : null);
    if (!d.calls.length) return fill(list, h('p', { class: 'muted' }, 'No dead letters.'));
    fill(list, table(['Call', 'Created', 'Origin', 'Attempts', 'Error', ''], d.calls.map((c) => h('tr', {},
      h('td', {}, h('code', {}, c.id)), h('td', {}, when(c.created_ms)), h('td', {}, c.origin),
      h('td', {}, `${c.attempts} / ${c.max_attempts}`), h('td', { class: 'error-text' }, c.error ?? ''),
      h('td', {}, page.can.change ? [
        change('Replay', note, async () => count(await api('POST', path('/dlq/replay'), { ids: [c.id] })), load),
        change('Purge', note, async () => count(await api('POST', path('/dlq/purge'), { ids: [c.id] })), load),
      ] : null)))));
  };
  return { el: section('dead-section', 'Dead letters', actions, list, note), load };
}

export async function functionPage(page, main) {
  const { ns, name } = page.route;
  // `{F}` and what follows; `qualifier` targets an alias or version.
  const path = (rest = '', qualifier = '') => fnPath(ns, qualifier ? `${name}@${qualifier}` : name, rest);
  const title = h('div', { class: 'title' }, h('h1', {}, name), h('span', { class: 'muted' }, `namespace ${ns}`));
  if (!page.can.read) {
    fill(main, title, invokeForm(page, path, { catchUp: () => {} }));
    return;
  }
  const parts = {};
  const refresh = async () => {
    await Promise.all([parts.overview.load(), parts.versions.load(), parts.secrets.load()]);
  };
  parts.overview = overview(page, path);
  parts.logs = liveLogs(page, path);
  parts.versions = versionsAndAliases(page, path, refresh);
  parts.secrets = secrets(page, path, refresh);
  parts.schedules = schedules(page, path);
  parts.dead = deadLetters(page, path);
  fill(main, title, parts.overview.el,
    h('div', { class: page.can.invoke ? 'pair' : '' },
      page.can.invoke ? invokeForm(page, path, parts.logs) : null, parts.logs.el),
    parts.versions.el, parts.secrets.el, parts.schedules.el, parts.dead.el);
  const sections = Object.values(parts);
  const results = await Promise.allSettled(sections.map((s) => s.load()));
  results.forEach((r, i) => {
    if (r.status === 'rejected' && page.alive) sections[i].el.append(failure(r.reason));
  });
  page.every(OVERVIEW_MS, () => parts.overview.load().catch(() => {}));
  page.every(LOGS_MS, () => parts.logs.load().catch(() => {}));
  page.every(DEAD_MS, () => parts.dead.load().catch(() => {}));
}
