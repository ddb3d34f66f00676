// Drives Debian's chromium through thaw's dashboard for
// crates/thaw-cli/tests/dashboard.rs, which starts thaw, prepares
// namespaces, keys and functions, and reads this script's last line:
// a JSON summary of what it saw. Any failed check throws (exit 1).
//
// Environment: THAW_SERVER, THAW_BIN, DEPLOY_KEY, READ_KEY and INVOKE_KEY
// (namespace team-a), ADMIN_TOKEN, FRESH_DIR (a function to deploy from the CLI),
// XSS (the markup the function logs), SCREENSHOTS (a folder).

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const server = need('THAW_SERVER');
const shots = need('SCREENSHOTS');
const xss = need('XSS');
const keys = {
  deploy: need('DEPLOY_KEY'), read: need('READ_KEY'), invoke: need('INVOKE_KEY'), admin: need('ADMIN_TOKEN'),
};
const WAIT = { timeout: 30_000 };

fs.mkdirSync(shots, { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'thaw-dashboard-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1200, height: 860 },
});

// What the page asked for and said, watched the whole time.
const elsewhere = [];
const probes = [];
const complaints = [];
const page = browser.pages()[0] ?? await browser.newPage();
page.on('request', (r) => {
  const url = r.url();
  if (!url.startsWith(server) && !url.startsWith('data:')) elsewhere.push(url);
  const { pathname } = new URL(url);
  if (pathname === '/pwned' || pathname.endsWith('/x')) probes.push(url);
});
page.on('console', (m) => {
  if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) complaints.push(m.text());
});
page.on('pageerror', (e) => complaints.push(`page error: ${e.message}`));

const seen = {};
const shot = async (name) => {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: false });
  seen.screenshots = [...(seen.screenshots ?? []), `${name}.png`];
};

async function signIn(key) {
  await page.goto(`${server}/ui/`);
  await page.locator('#key').waitFor(WAIT);
  await page.fill('#key', key);
  await page.click('#sign-in button[type=submit]');
  await page.locator('#sign-out').waitFor(WAIT);
}

async function signOut() {
  await page.click('#sign-out');
  await page.locator('#key').waitFor(WAIT);
}

const textOf = (selector) => page.locator(selector).allTextContents();

try {
  // Sign-in, then a namespace key sees its namespace only.
  await page.goto(`${server}/ui/`);
  await page.locator('#key').waitFor(WAIT);
  await shot('sign-in');
  await signIn(keys.deploy);
  await page.locator('#functions [data-function="hello"]').waitFor(WAIT);
  assert.equal(await page.locator('[data-function="other"]').count(), 0, "team-b's function is shown");
  assert.equal(await page.locator('#namespace').count(), 0, 'a key is offered other namespaces');
  assert.match(await page.textContent('#who'), /namespace team-a/);

  // A deploy from the CLI shows up without a reload.
  execFileSync(need('THAW_BIN'), ['deploy', need('FRESH_DIR'), '--name', 'fresh'], {
    env: { ...process.env, THAW_SERVER: server, THAW_TOKEN: keys.deploy },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await page.locator('#functions [data-function="fresh"]').waitFor(WAIT);
  seen.functions = await page.locator('#functions [data-function]').evaluateAll(
    (cards) => cards.map((c) => c.dataset.function));
  await page.locator('[data-function="hello"] svg rect.calls').first().waitFor(WAIT);
  await shot('functions');

  // One function: invoke from the form, and its line arrives in the live logs.
  await page.click('[data-function="hello"] h2 a');
  await page.locator('#versions tr[data-version="2"]').waitFor(WAIT);
  const who = `browser-${Date.now()}`;
  await page.fill('#invoke-event', JSON.stringify({ who }));
  await page.click('#invoke');
  await page.locator('#invoke-status', { hasText: 'status 200' }).waitFor(WAIT);
  await page.locator('#logs .line', { hasText: `greeting ${who}` }).waitFor(WAIT);
  seen.invoke_status = await page.textContent('#invoke-status');

  // The function's markup is shown as text, and runs nothing.
  await page.locator('#logs .line', { hasText: xss }).first().waitFor(WAIT);
  const lines = await textOf('#logs .line');
  assert.ok(lines.includes(xss), 'the markup is not shown verbatim in the logs');
  // The event's answer is the handler's whole result, as JSON text.
  assert.ok((await page.textContent('#invoke-body')).includes('<img src=x onerror='),
    'the body is not shown as text');
  const ran = await page.evaluate(() => ({
    images: document.querySelectorAll('main img, main script').length,
    pwned: window.thawPwned ?? null,
  }));
  assert.deepEqual(ran, { images: 0, pwned: null }, 'the markup ran');
  await shot('function');

  // Roll back: latest moves to v1.
  assert.match(await page.textContent('#aliases tr[data-alias="latest"] .alias-target'), /latest → v2/);
  await page.click('[data-rollback-to="1"]');
  await page.locator('#aliases tr[data-alias="latest"] .alias-target', { hasText: 'latest → v1' }).waitFor(WAIT);
  await page.locator('#overview .version', { hasText: 'v1' }).waitFor(WAIT);

  // A secret is set by name; its value is never on the page again.
  await page.fill('#secret-name', 'API_TOKEN');
  await page.fill('#secret-value', 'value-never-shown-1234');
  await page.click('#secret-form button');
  await page.locator('#secrets code', { hasText: 'API_TOKEN' }).waitFor(WAIT);
  assert.ok(!(await page.content()).includes('value-never-shown-1234'), 'the secret value is on the page');
  assert.equal(await page.inputValue('#secret-value'), '');

  // A schedule is added, then removed.
  await page.fill('#schedule-name', 'nightly');
  await page.fill('#schedule-cron', '0 3 * * *');
  await page.fill('#schedule-timezone', 'Europe/Paris');
  await page.click('#schedule-form button');
  await page.locator('#schedules td', { hasText: 'Europe/Paris' }).waitFor(WAIT);
  await page.click('#schedules button:text("Delete")');
  await page.locator('#schedules', { hasText: 'No schedules.' }).waitFor(WAIT);

  // A dead letter is replayed.
  await page.goto(`${server}/ui/#/ns/team-a/fn/failing`);
  await page.locator('#dead-letters code').first().waitFor(WAIT);
  await shot('dead-letters');
  await page.click('#dead-letters button:text("Replay")');
  await page.locator('#dead-section .notice.ok', { hasText: '1 call replayed' }).waitFor(WAIT);

  // A read key: the same pages, no button that would change anything,
  // and the API refuses such a call made with it anyway.
  await signOut();
  await signIn(keys.read);
  await page.goto(`${server}/ui/#/ns/team-a/fn/hello`);
  await page.locator('#versions tr[data-version="1"]').waitFor(WAIT);
  await page.locator('#secrets code', { hasText: 'API_TOKEN' }).waitFor(WAIT);
  await page.locator('#dead-section').waitFor(WAIT);
  const changing = await page.locator('[data-changes]').count();
  assert.equal(changing, 0, 'a read key is shown buttons that change state');
  for (const form of ['#invoke-form', '#secret-form', '#schedule-form']) {
    assert.equal(await page.locator(form).count(), 0, `a read key is shown ${form}`);
  }
  const buttons = await page.locator('button').evaluateAll((all) => all
    .filter((b) => !(b.id === 'sign-out' || b.closest('#log-filter') || b.closest('#logs')))
    .map((b) => b.textContent));
  assert.deepEqual(buttons, [], 'a read key is shown buttons');
  await shot('read-key');
  seen.read_key_refused = await page.evaluate(async () => {
    const auth = { Authorization: `Bearer ${sessionStorage.getItem('thaw.key')}` };
    const f = '/v1/namespaces/team-a/functions/hello';
    const rollback = await fetch(`${f}/rollback`, { method: 'POST', headers: auth });
    const secret = await fetch(`${f}/secrets/API_TOKEN`, { method: 'DELETE', headers: auth });
    return {
      rollback: rollback.status,
      code: (await rollback.json()).error.code,
      secret: secret.status,
      cookies: document.cookie,
      local: localStorage.length,
    };
  });
  assert.deepEqual(seen.read_key_refused,
    { rollback: 403, code: 'forbidden', secret: 403, cookies: '', local: 0 });

  // An invoke key reads nothing: it names a function and calls it.
  await signOut();
  await signIn(keys.invoke);
  await page.fill('#function-name', 'hello');
  await page.click('main form button[type=submit]');
  await page.fill('#invoke-event', '{"who":"caller"}');
  await page.click('#invoke');
  await page.locator('#invoke-status', { hasText: 'status 200' }).waitFor(WAIT);
  for (const part of ['#logs', '#versions', '#secrets', '#dead-letters']) {
    assert.equal(await page.locator(part).count(), 0, `an invoke key is shown ${part}`);
  }

  // The admin: every namespace, and the platform.
  await signOut();
  await signIn(keys.admin);
  await page.goto(`${server}/ui/#/ns/team-b`);
  await page.locator('#functions [data-function="other"]').waitFor(WAIT);
  await page.locator('#namespace').waitFor(WAIT);
  await page.goto(`${server}/ui/#/platform`);
  await page.locator('#namespaces tr[data-namespace="team-a"]').waitFor(WAIT);
  seen.platform = await page.textContent('#one-host');
  assert.match(seen.platform, /one host today/);
  seen.namespaces = await page.locator('#namespaces tr[data-namespace]').evaluateAll(
    (rows) => rows.map((r) => r.dataset.namespace));
  await shot('platform');

  assert.deepEqual(elsewhere, [], 'the dashboard reached outside thaw');
  assert.deepEqual(probes, [], "the function's markup made the browser fetch");
  assert.deepEqual(complaints, [], 'the page logged errors (a CSP violation is one)');
  seen.ok = true;
} catch (e) {
  await page.screenshot({ path: path.join(shots, 'failure.png') }).catch(() => {});
  console.error(`dashboard check failed on ${page.url()}: ${e.stack ?? e}`);
  console.error(`requests elsewhere: ${JSON.stringify(elsewhere)}; probes: ${JSON.stringify(probes)}; console: ${JSON.stringify(complaints)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(seen));
