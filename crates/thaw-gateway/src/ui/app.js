// The dashboard: sign-in, the top bar, and the page the URL's fragment
// names. Each page gets a `Page`: who is signed in, what their role lets
// them do, and timers that stop when the user leaves the page.

import { h, fill, failure, to, notice } from './dom.js';
import { api, session, whenRefused } from './api.js';
import { functionsPage } from './functions.js';
import { functionPage } from './function.js';
import { platformPage } from './platform.js';

const top = document.getElementById('top');
const main = document.getElementById('main');

// GET /v1/whoami of the key in this tab: {role, namespace, name}.
let me = null;
let current = null;
// Bumped by each `show`: one that was overtaken while it waited draws nothing.
let turns = 0;

// What a role may do, as the API decides it (docs/api.md): the dashboard
// only leaves out what would be refused.
function rights(role) {
  return {
    admin: role === 'admin',
    read: role !== 'invoke',
    invoke: role !== 'read',
    change: role === 'admin' || role === 'deploy',
  };
}

class Page {
  constructor(route) {
    this.route = route;
    this.me = me;
    this.can = rights(me.role);
    this.alive = true;
    this.timers = [];
  }

  // Runs `f` every `ms` while this page is shown, one run at a time.
  every(ms, f) {
    let running = false;
    const tick = async () => {
      if (running || !this.alive) return;
      running = true;
      try {
        await f();
      } finally {
        running = false;
      }
    };
    this.timers.push(setInterval(tick, ms));
  }

  leave() {
    this.alive = false;
    this.timers.forEach(clearInterval);
  }

  // The namespace to list: a key's own; for the admin, the one asked for.
  namespace() {
    return this.me.namespace ?? this.route.ns ?? sessionStorage.getItem('thaw.ns') ?? 'default';
  }
}

function parseRoute() {
  let parts;
  try {
    parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = [];
  }
  if (parts[0] === 'platform') return { page: 'platform' };
  if (parts[0] === 'ns' && parts[1] && parts[2] === 'fn' && parts[3]) {
    return { page: 'function', ns: parts[1], name: parts[3] };
  }
  if (parts[0] === 'ns' && parts[1]) return { page: 'functions', ns: parts[1] };
  return { page: 'functions' };
}

const pages = { functions: functionsPage, function: functionPage, platform: platformPage };

function brand() {
  return h('a', { class: 'brand', href: '#/' }, 'thaw');
}

function topBar(page) {
  const links = [h('a', { href: to.functions(page.namespace()) }, 'Functions')];
  if (page.can.admin) links.push(h('a', { href: to.platform() }, 'Platform'));
  const who = page.can.admin
    ? ['admin token', 'every namespace']
    : [`key ${me.name}`, me.role, `namespace ${me.namespace}`];
  fill(top,
    brand(),
    h('nav', {}, links),
    h('span', { class: 'who', id: 'who' }, who.join(' · ')),
    h('button', { type: 'button', class: 'quiet', id: 'sign-out', onclick: signOut }, 'Sign out'));
}

function signOut() {
  session.forget();
  me = null;
  history.replaceState(null, '', '#/');
  show();
}

function signIn(message) {
  current?.leave();
  fill(top, brand());
  const key = h('input', {
    type: 'password', id: 'key', name: 'key', autocomplete: 'off', required: true,
    placeholder: 'thawk_… or the admin token', spellcheck: 'false',
  });
  const note = h('p', { class: 'notice error', hidden: !message }, message ?? '');
  const form = h('form', { class: 'signin card', id: 'sign-in' },
    h('h1', {}, 'Sign in'),
    h('label', { for: 'key' }, 'API key'),
    key,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    note,
    h('p', { class: 'muted' },
      'A namespace key (thaw key create) shows its namespace as its role allows; the admin token ' +
      '(DATA_DIR/token) shows every namespace and the platform. The key stays in this tab until it ' +
      'closes and goes only to this server\'s /v1 API.'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    session.keep(key.value.trim());
    try {
      me = await api('GET', '/v1/whoami');
    } catch (e) {
      session.forget();
      notice(note, e.status === 401 ? 'This key was refused: it is wrong, revoked or expired.' : e.message);
      note.hidden = false;
      return;
    }
    history.replaceState(null, '', '#/');
    show();
  });
  fill(main, form);
  key.focus();
}

async function show() {
  const turn = ++turns;
  current?.leave();
  if (!session.key()) return signIn();
  if (!me) {
    try {
      me = await api('GET', '/v1/whoami');
    } catch (e) {
      session.forget();
      return signIn(e.message);
    }
    if (turn !== turns) return;
  }
  const page = new Page(parseRoute());
  current = page;
  topBar(page);
  fill(main);
  try {
    await pages[page.route.page](page, main);
  } catch (e) {
    if (page.alive) fill(main, failure(e));
  }
}

whenRefused(() => {
  if (!me) return;
  session.forget();
  me = null;
  signIn('The server refused the key (revoked or expired?): sign in again.');
});
window.addEventListener('hashchange', show);
show();
