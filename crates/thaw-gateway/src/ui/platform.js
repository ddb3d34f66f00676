// The platform, for the admin token: the host thaw runs on, its budget
// and pools of pre-started runtimes, and every namespace with its usage
// against its limits.

import { h, fill, failure, to, when, mib } from './dom.js';
import { api } from './api.js';
import { meter } from './charts.js';

const REFRESH_MS = 5000;

function host(p) {
  return h('section', { class: 'card', id: 'host' },
    h('h2', {}, 'Host'),
    p.worker
      ? h('p', { class: 'notice info', id: 'one-host' },
        `${p.hosts} workers share this registry; the figures below are those of worker ${p.worker}, which answered.`)
      : h('p', { class: 'notice info', id: 'one-host' },
        'thaw runs on one host today: every figure on this page is that host\'s.'),
    h('dl', { class: 'facts' },
      h('dt', {}, 'thaw'), h('dd', {}, p.version),
      h('dt', {}, 'Driver'), h('dd', { id: 'driver' }, p.driver),
      h('dt', {}, 'Jail'), h('dd', {}, p.jailed ? 'every runtime is jailed' : 'runtimes are NOT jailed'),
      h('dt', {}, 'Instances'), h('dd', {}, meter(p.in_use.instances, p.budget.instances, 'instances')),
      h('dt', {}, 'Memory'), h('dd', {}, meter(p.in_use.memory_mb, p.budget.memory_mb, 'MiB')),
      h('dt', {}, 'Deployed'), h('dd', {}, `${p.functions} functions in ${p.namespaces} namespaces`)));
}

function pools(p) {
  const rows = p.pools.map((x) => {
    const takes = x.hits + x.misses;
    return h('tr', {},
      h('td', {}, `${x.driver} · ${x.runtime}`),
      h('td', {}, `${x.idle} waiting, ${x.starting} starting (target ${x.target})`),
      h('td', {}, takes ? `${((100 * x.hits) / takes).toFixed(1)} % of ${takes}` : '—'),
      h('td', {}, `${x.started} started, ${x.failed} failed`),
      h('td', {}, x.runtime_bytes ? mib(x.runtime_bytes) : '—'));
  });
  return h('section', { class: 'card', id: 'pools' },
    h('h2', {}, 'Pools of pre-started runtimes'),
    h('table', {},
      h('thead', {}, h('tr', {}, ['Driver · Node', 'Runtimes', 'Cold starts from the pool', 'Starts', 'One runtime (PSS)']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, rows)));
}

// The workers sharing the registry, as their leases say (docs/cluster.md).
function workers(p) {
  if (!p.workers || p.workers.length === 0) return null;
  const rows = p.workers.map((w) => h('tr', { dataset: { worker: w.id } },
    h('td', {}, w.id === p.worker ? `${w.id} (this one)` : w.id),
    h('td', {}, w.address),
    h('td', {}, meter(w.busy, w.capacity, 'instances busy')),
    h('td', {}, when(w.started_ms)),
    h('td', {}, when(w.lease_until_ms))));
  return h('section', { class: 'card', id: 'workers' },
    h('h2', {}, 'Workers'),
    h('table', {},
      h('thead', {}, h('tr', {}, ['Worker', 'Address', 'Busy', 'Started', 'Lease until']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, rows)));
}

function namespaces(list) {
  const rows = list.map((n) => h('tr', { dataset: { namespace: n.name } },
    h('td', {}, h('a', { href: to.functions(n.name) }, n.name)),
    h('td', {}, meter(n.functions, n.limits.max_functions, '')),
    h('td', {}, meter(n.instances, n.limits.max_instances, '')),
    h('td', {}, meter(n.memory_mb, n.limits.max_memory_mb, 'MiB')),
    h('td', {}, mib(n.limits.max_deploy_bytes)),
    h('td', {}, String(n.limits.max_queued)),
    h('td', {}, when(n.created_ms))));
  return h('section', { class: 'card', id: 'namespaces' },
    h('h2', {}, 'Namespaces'),
    h('table', {},
      h('thead', {}, h('tr', {}, ['Namespace', 'Functions', 'Instances', 'Memory', 'Largest deploy', 'Queued calls at most', 'Created']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, rows)));
}

function bench(report) {
  const section = h('section', { class: 'card', id: 'bench' }, h('h2', {}, 'Benchmarks'));
  if (!report) {
    section.append(h('p', { class: 'muted' }, 'No `thaw bench` report on this host yet: run `thaw bench` where this data directory is, and its figures appear here.'));
    return section;
  }
  section.append(
    h('p', { class: 'muted' }, `The last \`thaw bench\` run on this host, written ${when(report.written_ms)}:`),
    h('pre', { class: 'output report' }, report.markdown));
  return section;
}

export async function platformPage(page, main) {
  if (!page.can.admin) {
    fill(main, h('p', { class: 'notice error' }, 'The platform page needs the admin token.'));
    return;
  }
  const body = h('div', {});
  fill(main, h('h1', {}, 'Platform'), body);
  const load = async () => {
    try {
      const [p, ns] = await Promise.all([api('GET', '/v1/platform'), api('GET', '/v1/namespaces')]);
      if (page.alive) fill(body, host(p), workers(p), pools(p), namespaces(ns.namespaces), bench(p.bench));
    } catch (e) {
      if (page.alive) fill(body, failure(e));
    }
  };
  await load();
  page.every(REFRESH_MS, load);
}
