// Tests for the runtime shim: each test starts `node shim.mjs` with fd 3 as
// the frame stream, plays the host's side of docs/protocol.md and checks the
// frames that come back.
//
// Run from the repository root with: node --test runtime/shim/

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const SHIM = path.join(path.dirname(fileURLToPath(import.meta.url)), 'shim.mjs');
const FRAME_TIMEOUT_MS = 5000;

// ---------------------------------------------------------------------------
// Host side of the protocol.

const KIND = { message: 1, data: 2, end: 3, abort: 4, credit: 5 };
const KIND_NAME = Object.fromEntries(Object.entries(KIND).map(([name, kind]) => [kind, name]));
const STREAM_REQUEST = 0;
const STREAM_RESPONSE = 1;

function encodeFrame(message) {
  const json = Buffer.from(JSON.stringify(message));
  const header = Buffer.alloc(5);
  header.writeUInt32BE(json.length + 1, 0);
  header[4] = KIND.message;
  return Buffer.concat([header, json]);
}

// A frame about one stream of a call: data, end, abort or credit.
function encodeStreamFrame(kind, id, stream, rest = Buffer.alloc(0)) {
  const header = Buffer.alloc(14);
  header.writeUInt32BE(10 + rest.length, 0);
  header[4] = KIND[kind];
  header.writeBigUInt64BE(BigInt(id), 5);
  header[13] = stream;
  return Buffer.concat([header, rest]);
}

function creditBytes(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

// Feeds bytes in: onFrame gets every message, onStream every other frame
// as { kind, id, stream, bytes }.
function frameDecoder(onFrame, onStream) {
  let buffered = Buffer.alloc(0);
  return (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 5) {
      const length = buffered.readUInt32BE(0);
      if (buffered.length < 4 + length) break;
      const kind = buffered[4];
      if (kind === KIND.message) onFrame(JSON.parse(buffered.toString('utf8', 5, 4 + length)));
      else onStream({ kind: KIND_NAME[kind], id: Number(buffered.readBigUInt64BE(5)), stream: buffered[13], bytes: Buffer.from(buffered.subarray(14, 4 + length)) });
      buffered = buffered.subarray(4 + length);
    }
  };
}

// Shims still running. A test that fails before its stop() leaves one
// behind; without the kill below it would keep the test process alive.
const liveShims = new Set();
after(() => {
  for (const shim of liveShims) shim.child.kill();
});

class Shim {
  constructor() {
    this.child = spawn(process.execPath, [SHIM], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    liveShims.add(this);
    this.child.on('exit', () => liveShims.delete(this));
    this.stream = this.child.stdio[3];
    this.frames = []; // every frame received, in order
    this.unclaimed = []; // frames no waiter has taken yet
    this.waiters = [];
    this.stdout = '';
    this.stderr = '';
    this.child.stdout.on('data', (d) => (this.stdout += d));
    this.child.stderr.on('data', (d) => (this.stderr += d));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    this.bodyFrames = []; // every data, end, abort and credit frame, in order
    this.bodyWaiters = [];
    this.requestCredit = new Map(); // call id → credit left for its request body
    this.creditWake = null;
    this.grantCredit = true;
    this.stream.on('data', frameDecoder((frame) => this.#deliver(frame), (frame) => this.#deliverBody(frame)));
    this.stream.on('error', () => {});
    this.nextId = 1;
  }

  #deliverBody(frame) {
    this.bodyFrames.push(frame);
    // As a host whose client reads at once: every byte taken is credit
    // given back.
    if (frame.kind === 'data' && frame.stream === STREAM_RESPONSE && this.grantCredit) {
      this.stream.write(encodeStreamFrame('credit', frame.id, STREAM_RESPONSE, creditBytes(frame.bytes.length)));
    }
    if (frame.kind === 'credit' && frame.stream === STREAM_REQUEST) {
      this.requestCredit.set(frame.id, (this.requestCredit.get(frame.id) ?? 0) + frame.bytes.readUInt32BE(0));
      this.creditWake?.();
    }
    for (const waiter of [...this.bodyWaiters]) {
      if (waiter.match(frame)) {
        this.bodyWaiters.splice(this.bodyWaiters.indexOf(waiter), 1);
        clearTimeout(waiter.timer);
        waiter.resolve(frame);
      }
    }
  }

  // The first body frame (already received or still to come) that matches.
  bodyFrame(match, what = 'body frame') {
    const seen = this.bodyFrames.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve };
      waiter.timer = setTimeout(() => {
        this.bodyWaiters.splice(this.bodyWaiters.indexOf(waiter), 1);
        reject(new Error(`timed out waiting for ${what}; stderr: ${this.stderr}`));
      }, FRAME_TIMEOUT_MS);
      this.bodyWaiters.push(waiter);
    });
  }

  // The response body of call `id`, once it ended (null if aborted).
  async responseBody(id) {
    const last = await this.bodyFrame((f) => f.id === id && f.stream === STREAM_RESPONSE && (f.kind === 'end' || f.kind === 'abort'), `the end of the body of ${id}`);
    if (last.kind === 'abort') return null;
    return Buffer.concat(this.bodyFrames.filter((f) => f.id === id && f.stream === STREAM_RESPONSE && f.kind === 'data').map((f) => f.bytes));
  }

  // Sends a request body within the credit the shim grants (1 MiB to
  // begin with), then its end.
  async sendBody(id, body) {
    if (!this.requestCredit.has(id)) this.requestCredit.set(id, 1024 * 1024);
    for (let offset = 0; offset < body.length; ) {
      while (this.requestCredit.get(id) === 0) await new Promise((resolve) => (this.creditWake = resolve));
      const n = Math.min(body.length - offset, 256 * 1024, this.requestCredit.get(id));
      this.stream.write(encodeStreamFrame('data', id, STREAM_REQUEST, body.subarray(offset, offset + n)));
      this.requestCredit.set(id, this.requestCredit.get(id) - n);
      offset += n;
    }
    this.stream.write(encodeStreamFrame('end', id, STREAM_REQUEST));
  }

  #deliver(frame) {
    this.frames.push(frame);
    const index = this.waiters.findIndex((w) => w.match(frame));
    if (index === -1) {
      this.unclaimed.push(frame);
      return;
    }
    const [waiter] = this.waiters.splice(index, 1);
    clearTimeout(waiter.timer);
    waiter.resolve(frame);
  }

  // The next frame (already received or still to come) that matches.
  frame(match, what = 'frame') {
    const index = this.unclaimed.findIndex(match);
    if (index !== -1) return Promise.resolve(this.unclaimed.splice(index, 1)[0]);
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve };
      waiter.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out waiting for ${what}; frames so far: ${JSON.stringify(this.frames).slice(0, 2000)}; stderr: ${this.stderr}`));
      }, FRAME_TIMEOUT_MS);
      this.waiters.push(waiter);
    });
  }

  send(message) {
    this.stream.write(encodeFrame(message));
  }

  ready() {
    return this.frame((f) => f.type === 'ready', 'ready');
  }

  async init(codeDir, entry, extra = {}) {
    await this.ready();
    this.send({ type: 'init', function: 'demo', version: '7', code_dir: codeDir, entry, env: {}, timeout_ms: 30_000, memory_mb: 256, ...extra });
    return this.frame((f) => f.type === 'init_ok' || f.type === 'init_error', 'init reply');
  }

  async initOk(codeDir, entry, extra) {
    const reply = await this.init(codeDir, entry, extra);
    assert.equal(reply.type, 'init_ok', JSON.stringify(reply));
    return reply;
  }

  // Sends one invoke and resolves with its result/error frame plus the log
  // frames carrying its id.
  // A request's body follows its invoke.
  async invoke(payload, id = this.nextId++, requestBody = null) {
    this.send({ type: 'invoke', id, deadline_ms: Date.now() + 10_000, ...payload });
    if (payload.request) this.sendBody(id, requestBody ?? Buffer.alloc(0));
    const reply = await this.frame((f) => (f.type === 'result' || f.type === 'error') && f.id === id, `reply to ${id}`);
    const body = reply.type === 'result' ? await this.responseBody(id) : null;
    const logs = this.frames.filter((f) => f.type === 'log' && f.id === id);
    return { reply, logs, body };
  }

  request(request, id) {
    return this.invoke({ request: httpRequest(request) }, id, Buffer.from(request.body ?? ''));
  }

  event(event, id) {
    return this.invoke({ event }, id);
  }

  scheduled(fields, id) {
    return this.invoke({ scheduled: scheduledPayload(fields) }, id);
  }

  async stop() {
    this.stream.end();
    const exit = await this.exited;
    assert.equal(exit.code, 0, `shim exit: ${JSON.stringify(exit)} stderr: ${this.stderr}`);
    // User output must only travel as log frames, never on the real fds.
    assert.equal(this.stdout, '');
    assert.equal(this.stderr, '');
  }
}

function httpRequest({ method = 'GET', path: p = '/', query = '', headers = [], host = 'demo.thaw.test', sourceIp = '203.0.113.7' } = {}) {
  return { method, path: p, query, headers, source_ip: sourceIp, host };
}

// 2026-12-03T08:00:00.456Z: the milliseconds show whether a style keeps them.
const SCHEDULED_TIME_MS = Date.UTC(2026, 11, 3, 8, 0, 0, 456);

// An invoke's `scheduled` field as the host sends it when a schedule fires.
function scheduledPayload(fields = {}) {
  return { schedule: 'nightly', cron: '*/5 * * * *', timezone: 'UTC', scheduled_time_ms: SCHEDULED_TIME_MS, invocation: 'a1b2c3d4e5f6a7b8c9d0e1f2', ...fields };
}

function header(reply, name) {
  return reply.headers.filter(([n]) => n === name).map(([, v]) => v);
}

function json(result) {
  return JSON.parse(result.body.toString('utf8'));
}

// ---------------------------------------------------------------------------
// Fixture modules, written to a temp dir once.

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'thaw-shim-test-'));

function fixture(name, files) {
  const dir = path.join(root, name);
  for (const [file, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    fs.writeFileSync(path.join(dir, file), text);
  }
  return dir;
}

const fixtures = {
  lambdaEsm: fixture('lambda-esm', {
    'index.mjs': `
      export async function handler(event, context) {
        switch (event.rawPath) {
          case '/echo':
            return { statusCode: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ event, context: { ...context, remaining: context.getRemainingTimeInMillis() } }) };
          case '/binary': {
            const bytes = Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8').reverse();
            return { statusCode: 201, headers: { 'Content-Type': 'application/octet-stream', 'X-Custom': 'yes' }, multiValueHeaders: { 'x-multi': ['a', 'b'] }, cookies: ['a=1; Path=/', 'b=2'], body: bytes.toString('base64'), isBase64Encoded: true };
          }
          case '/plain':
            return { hello: 'world' };
          case '/nothing':
            return undefined;
          case '/throw':
            throw new TypeError('bad thing');
          case '/logs':
            console.log('first %s', 'line', { a: 1 });
            console.error('oops\\nsecond');
            process.stdout.write('partial ');
            process.stdout.write('done\\n');
            process.stderr.write(Buffer.from('bytes\\n'));
            console.info('info');
            console.warn('warn');
            console.debug('debug');
            console.trace('tracing');
            return 'logged';
          default:
            return { statusCode: 404, body: 'no route' };
        }
      }
    `,
  }),
  lambdaCjs: fixture('lambda-cjs', {
    'index.cjs': `exports.handler = async (event, context) => ({ style: 'cjs', event, fn: context.functionName });`,
  }),
  lambdaJs: fixture('lambda-js', {
    'package.json': '{}',
    'handler.js': `
      // A callback-style handler in a .js CommonJS file.
      exports.handler = function (event, context, callback) {
        setTimeout(() => event.fail ? callback(new Error('callback failure')) : callback(null, { viaCallback: true, event }), 5);
      };
    `,
  }),
  lambdaDynamicExports: fixture('lambda-dynamic', {
    // Exports the lexer cannot see, so the handler is only on the default object.
    'index.cjs': `const name = ['hand', 'ler'].join(''); module.exports = { [name]: async () => 'dynamic' };`,
  }),
  fetch: fixture('fetch', {
    'index.mjs': `
      export default {
        async fetch(request, env, ctx) {
          const url = new URL(request.url);
          ctx.waitUntil(Promise.resolve());
          if (url.pathname === '/binary') {
            const bytes = new Uint8Array(await request.arrayBuffer()).reverse();
            return new Response(bytes, { status: 202, headers: { 'content-type': 'application/octet-stream' } });
          }
          if (url.pathname === '/cookies') {
            const headers = new Headers({ 'x-one': '1' });
            headers.append('set-cookie', 'a=1');
            headers.append('set-cookie', 'b=2; Path=/');
            return new Response(null, { status: 204, headers });
          }
          if (url.pathname === '/not-response') return { status: 200 };
          if (url.pathname === '/throw') throw new RangeError('fetch failed here');
          return Response.json({
            method: request.method,
            url: request.url,
            headers: Object.fromEntries(request.headers),
            body: request.body ? await request.text() : null,
            envValue: env.FIXTURE_VALUE ?? null,
            envNotString: env.NOT_A_STRING ?? null,
            cwd: process.cwd(),
          });
        },
      };
    `,
  }),
  openwhisk: fixture('openwhisk', {
    'index.mjs': `
      export function main(params) {
        if (params.__ow_path === '/web') return { statusCode: 201, headers: { 'x-ow': 'yes' }, body: 'web body' };
        if (params.__ow_path === '/object') return { body: { nested: true } };
        if (params.__ow_path === '/image') return { headers: { 'content-type': 'image/png' }, body: Buffer.from([1, 2, 3]).toString('base64') };
        if (params.__ow_path === '/throw') throw new Error('whisk failure');
        return { params };
      }
    `,
  }),
  classes: fixture('classes', {
    'index.mjs': `
      export class Counter {
        constructor() { this.count = 0; this.own = () => 'own'; }
        add(a, b) { return a + b; }
        increment() { return ++this.count; }
        echo(params) { return params; }
        nothing() {}
        async slow(ms) { await new Promise((r) => setTimeout(r, ms)); return ms; }
        async fail() { throw new Error('method exploded'); }
        _hidden() { return 'hidden'; }
        get getter() { return () => 'getter'; }
      }
      class Base { inherited() { return 'from base'; } }
      export class Child extends Base {}
      export const notAClass = 42;
      export function helper() {}
    `,
  }),
  classesCjs: fixture('classes-cjs', {
    'index.cjs': `
      class Greeter { greet(name) { return 'hello ' + name; } }
      module.exports = { Greeter, version: 1 };
    `,
  }),
  logs: fixture('logs', {
    'index.mjs': `
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      console.log('loading module');
      export async function handler(event) {
        console.log('start', event.name);
        await sleep(event.firstDelay);
        console.log('middle', event.name);
        await sleep(event.secondDelay);
        setTimeout(() => {}, 0);
        console.error('end', event.name);
        return event.name;
      }
    `,
  }),
  syntaxError: fixture('syntax-error', {
    'index.mjs': `export function handler() {\n  return 1;\n}\nlet broken = ;\n`,
  }),
  nestedSyntaxError: fixture('nested-syntax-error', {
    'index.mjs': `import { value } from './lib/util.mjs';\nexport const handler = () => value;\n`,
    'lib/util.mjs': `export const value = 1;\n\nexport const other = {\n  a: 1,,\n};\n`,
  }),
  cjsSyntaxError: fixture('cjs-syntax-error', {
    'index.cjs': `exports.handler = () => 1;\nfunction (\n`,
  }),
  throwsAtTop: fixture('throws-at-top', {
    'index.mjs': `throw new Error('top level failure');\n`,
  }),
  noHandler: fixture('no-handler', {
    'index.mjs': `export const answer = 42;\nexport function helper() {}\nexport default { name: 'x' };\n`,
  }),
  uncaught: fixture('uncaught', {
    'index.mjs': `export async function handler() { setTimeout(() => { throw new Error('escaped the handler'); }, 1); return 'ok'; }\n`,
  }),
  lambdaContext: fixture('lambda-context', {
    'package.json': '{}',
    // `result` is serialised when the call answers, so whether a timer that
    // changes it ran first shows whether the answer waited for it.
    'index.js': `
      const fs = require('fs');
      let hold = null;
      exports.handler = function (event, context, callback) {
        const result = { late: false };
        const later = (ms = 20) => setTimeout(() => { result.late = true; }, ms);
        switch (event.case) {
          case 'succeed': later(); context.succeed(result); break;
          case 'done': context.done(null, { via: 'done' }); context.succeed('ignored'); break;
          case 'done-error': context.done(new Error('done failed')); break;
          case 'fail': context.fail(new Error('failed here')); break;
          case 'fail-empty': context.fail(); break;
          case 'fail-string': context.fail('plain string'); break;
          case 'wait': callback(null, result); later(); break;
          case 'wait-chain':
            callback(null, result);
            setTimeout(() => setImmediate(() => fs.stat(__filename, () => { result.late = true; })), 5);
            break;
          case 'no-wait': context.callbackWaitsForEmptyEventLoop = false; callback(null, result); later(); break;
          case 'unref': callback(null, result); later(60000).unref(); break;
          case 'later-callback': setTimeout(() => callback(null, { called: 'later' }), 5); break;
          case 'callback-error': later(); callback(new Error('callback failed')); break;
          case 'first-wins': callback(null, 'first'); context.succeed('second'); context.fail(new Error('third')); break;
          case 'returns-value': callback(null, 'from callback'); return 'ignored return value';
          case 'hold': {
            const interval = setInterval(() => {}, 1000);
            hold = () => clearInterval(interval);
            callback(null, 'held');
            break;
          }
          case 'release': hold(); callback(null, 'released'); break;
          default: callback(new Error('unknown case ' + event.case));
        }
      };
    `,
  }),
  lambdaPlainSync: fixture('lambda-plain-sync', {
    'package.json': '{}',
    'index.js': `
      exports.handler = function (event, context) {
        if (event.case === 'later') { setTimeout(() => context.succeed({ later: true }), 5); return; }
        if (event.case === 'work') {
          setTimeout(() => console.log('work finished'), 5);
          return;
        }
        if (event.case === 'nothing') return;
        return { returned: true };
      };
    `,
  }),
  lambdaAsyncContext: fixture('lambda-async-context', {
    'index.mjs': `
      export const handler = async (event, context) => {
        if (event.case === 'fail') { context.fail(new Error('async fail')); return 'ignored'; }
        if (event.case === 'succeed') { context.succeed('succeeded'); return 'ignored'; }
        setTimeout(() => {}, 50);
        return { waits: context.callbackWaitsForEmptyEventLoop };
      };
    `,
  }),
  fetchBackground: fixture('fetch-background', {
    'index.mjs': `
      let release;
      const gate = new Promise((resolve) => { release = resolve; });
      const state = { done: false };
      export default {
        async fetch(request, env, ctx) {
          const url = new URL(request.url);
          if (url.pathname === '/start') {
            ctx.passThroughOnException();
            ctx.waitUntil(gate.then(() => {
              ctx.waitUntil(Promise.resolve().then(() => console.log('nested work')));
              state.done = true;
              console.log('background finished');
            }));
            return new Response('started');
          }
          if (url.pathname === '/release') { release(); return new Response('released'); }
          if (url.pathname === '/fail') {
            ctx.waitUntil(Promise.reject(new Error('background failed')));
            return new Response('answered');
          }
          return Response.json(state);
        },
      };
    `,
  }),
  genezio: fixture('genezio', {
    'index.mjs': `
      // The shape of @genezio/types' GenezioError.
      class GenezioError extends Error {
        constructor(message, code = undefined, info = undefined) {
          super(message);
          this.name = 'GenezioError';
          this.code = code;
          this.info = info;
        }
      }
      class Coded extends Error {
        constructor(message) { super(message); this.code = 403; this.info = { why: 'shape' }; }
      }
      export class Svc {
        denied() { throw new GenezioError('not allowed', 401, { reason: 'token', retry: false }); }
        async missing() { throw new GenezioError('no such item', 404); }
        noCode() { throw new GenezioError('no code'); }
        shaped() { throw new Coded('by shape'); }
        plain() { const e = new Error('plain failure'); e.code = 'ENOENT'; throw e; }
        cyclic() { const info = {}; info.self = info; throw new GenezioError('cyclic info', 500, info); }
      }
    `,
  }),
  owContract: fixture('ow-contract', {
    'index.mjs': `
      const OW = ['__OW_ACTIVATION_ID', '__OW_ACTION_NAME', '__OW_DEADLINE', '__OW_NAMESPACE', '__OW_API_HOST'];
      export function main(params) {
        switch (params.case ?? params.__ow_path) {
          case 'nothing': case '/nothing': return;
          case 'null': return null;
          case 'async-nothing': case '/async-nothing': return Promise.resolve();
          case 'string': case '/string': return 'just a string';
          case 'number': return 42;
          case '/html': return { body: '<p>hi</p>' };
          case '/typed': return { headers: { 'content-type': 'text/plain' }, body: 'plain' };
          case 'array': return [1, 2];
          default: return { path: params.__ow_path, env: Object.fromEntries(OW.map((k) => [k, process.env[k] ?? null])) };
        }
      }
    `,
  }),
  owScript: fixture('ow-script', {
    'package.json': '{}',
    'action.js': `
      console.log('script loaded');
      function main(params) {
        return { script: true, name: params.name ?? null };
      }
    `,
  }),
  owBundle: fixture('ow-bundle', {
    'package.json': '{}',
    'bundle.js': `
      (function () {
        function actionMain(params) { return { bundle: true, n: params.n ?? null }; }
        global.main = actionMain;
      })();
    `,
  }),
  lambdaScheduled: fixture('lambda-scheduled', {
    'package.json': '{}',
    'index.js': `
      exports.handler = function (event, context, callback) {
        switch (event.detail.case) {
          case 'throw': throw new Error('scheduled lambda failed');
          case 'callback-error': setTimeout(() => callback(new Error('callback failed')), 1); return;
          case 'succeed': context.succeed({ via: 'succeed' }); return;
          case 'nothing': callback(); return;
          default: setTimeout(() => callback(null, { event, functionName: context.functionName }), 1);
        }
      };
    `,
  }),
  fetchScheduled: fixture('fetch-scheduled', {
    // Cloudflare gives scheduled() no payload, so the cron string picks the case.
    'index.mjs': `
      export default {
        async fetch() { return new Response('fetched'); },
        async scheduled(controller, env, ctx) {
          switch (controller.cron) {
            case '0 1 * * *': throw new RangeError('scheduled fetch failed');
            case '0 2 * * *': controller.noRetry(); throw new Error('do not retry me');
            case '0 3 * * *': controller.noRetry(); return 'fine after all';
            case '0 4 * * *':
              ctx.waitUntil(new Promise((resolve) => setTimeout(resolve, 30)).then(() => console.log('scheduled work done')));
              return;
            default:
              return {
                controller: { ...controller, noRetry: typeof controller.noRetry },
                envValue: env.FIXTURE_VALUE ?? null,
                ctx: Object.keys(ctx).sort(),
              };
          }
        },
      };
    `,
  }),
  cronOnly: fixture('cron-only', {
    'index.mjs': `
      export default {
        async scheduled(controller) { return { ran: controller.cron }; },
      };
    `,
  }),
  classScheduled: fixture('class-scheduled', {
    'index.mjs': `
      class GenezioError extends Error {
        constructor(message, code, info) { super(message); this.name = 'GenezioError'; this.code = code; this.info = info; }
      }
      export class Jobs {
        constructor() { this.runs = 0; }
        nightly(...args) { this.runs += 1; return { args, runs: this.runs }; }
        quiet() {}
        denied() { throw new GenezioError('not now', 403, { why: 'window' }); }
        async broken() { throw new Error('job broke'); }
        _hidden() { return 'hidden'; }
      }
      export class Reports { weekly() { return 'weekly'; } }
    `,
  }),
  owScheduled: fixture('ow-scheduled', {
    'index.mjs': `
      export function main(params) {
        if (params.fail) throw new Error('alarm action failed');
        if (params.nothing) return;
        if (params.string) return 'not a dictionary';
        const env = (k) => process.env[k] ?? null;
        return { params, activation: env('__OW_ACTIVATION_ID'), action: env('__OW_ACTION_NAME'), apiHost: env('__OW_API_HOST') };
      }
    `,
  }),
};

after(() => fs.rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------

test('sends a ready frame on start and exits when the host closes the stream', async () => {
  const shim = new Shim();
  const ready = await shim.ready();
  assert.equal(ready.protocol, 2);
  assert.match(ready.runtime, /^thaw-shim\/\d+\.\d+\.\d+$/);
  assert.equal(ready.node, process.version);
  assert.equal(ready.pid, shim.child.pid);
  await shim.stop();
});

test('answers an invoke that arrives before init with an error frame', async () => {
  const shim = new Shim();
  await shim.ready();
  const { reply } = await shim.event({});
  assert.equal(reply.type, 'error');
  assert.match(reply.message, /before init/);
  await shim.stop();
});

describe('lambda style', () => {
  let shim;
  before(async () => {
    shim = new Shim();
    const reply = await shim.initOk(fixtures.lambdaEsm, 'index.mjs');
    assert.equal(reply.style, 'lambda');
  });
  after(() => shim.stop());

  test('builds a function URL 2.0 event with query, headers and cookies', async () => {
    const result = await shim.request(
      {
        method: 'POST',
        path: '/echo',
        query: 'a=1&b=two%20words&a=3',
        headers: [
          ['content-type', 'application/json'],
          ['user-agent', 'test-agent'],
          ['x-repeat', 'one'],
          ['x-repeat', 'two'],
          ['cookie', 'c1=v1; c2=v2'],
        ],
        body: '{"hello":"wörld"}',
      },
      41,
    );
    assert.equal(result.reply.type, 'result', JSON.stringify(result.reply));
    assert.equal(result.reply.status, 200);
    const { event, context } = json(result);
    assert.equal(event.version, '2.0');
    assert.equal(event.routeKey, '$default');
    assert.equal(event.rawPath, '/echo');
    assert.equal(event.rawQueryString, 'a=1&b=two%20words&a=3');
    assert.deepEqual(event.queryStringParameters, { a: '1,3', b: 'two words' });
    assert.deepEqual(event.cookies, ['c1=v1', 'c2=v2']);
    assert.deepEqual(event.headers, { 'content-type': 'application/json', 'user-agent': 'test-agent', 'x-repeat': 'one,two' });
    assert.equal(event.body, '{"hello":"wörld"}');
    assert.equal(event.isBase64Encoded, false);
    const rc = event.requestContext;
    assert.equal(rc.accountId, 'anonymous');
    assert.equal(rc.apiId, 'demo');
    assert.equal(rc.domainName, 'demo.thaw.test');
    assert.equal(rc.domainPrefix, 'demo');
    assert.deepEqual(rc.http, { method: 'POST', path: '/echo', protocol: 'HTTP/1.1', sourceIp: '203.0.113.7', userAgent: 'test-agent' });
    assert.equal(rc.requestId, '41');
    assert.equal(rc.stage, '$default');
    assert.match(rc.time, /^\d{2}\/[A-Z][a-z]{2}\/\d{4}:\d{2}:\d{2}:\d{2} \+0000$/);
    assert.ok(Math.abs(rc.timeEpoch - Date.now()) < 5000);
    assert.equal(context.functionName, 'demo');
    assert.equal(context.functionVersion, '7');
    assert.equal(context.awsRequestId, '41');
    assert.equal(context.memoryLimitInMB, '256');
    assert.ok(context.remaining > 5000 && context.remaining <= 10_000, `remaining ${context.remaining}`);
  });

  test('omits query parameters, cookies and body when there are none', async () => {
    const { event } = json(await shim.request({ path: '/echo' }));
    assert.equal(event.queryStringParameters, undefined);
    assert.equal(event.cookies, undefined);
    assert.equal(event.body, undefined);
    assert.equal(event.isBase64Encoded, false);
  });

  test('round-trips binary request and response bodies', async () => {
    const bytes = Buffer.from([0, 255, 1, 254, 0x80, 0xc3, 10]);
    const result = await shim.request({ method: 'PUT', path: '/binary', headers: [['content-type', 'application/octet-stream']], body: bytes });
    assert.equal(result.reply.status, 201);
    assert.deepEqual(result.body, Buffer.from(bytes).reverse());
    assert.deepEqual(header(result.reply, 'content-type'), ['application/octet-stream']);
    assert.deepEqual(header(result.reply, 'x-custom'), ['yes']);
    assert.deepEqual(header(result.reply, 'x-multi'), ['a', 'b']);
    assert.deepEqual(header(result.reply, 'set-cookie'), ['a=1; Path=/', 'b=2']);

    // Large enough to arrive in many reads and leave in many writes.
    const large = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < large.length; i++) large[i] = (i * 7919) % 256;
    const big = await shim.request({ method: 'POST', path: '/binary', headers: [['content-type', 'image/png']], body: large });
    assert.ok(big.body.equals(Buffer.from(large).reverse()));
  });

  test('keeps request-chosen names such as __proto__ as plain keys', async () => {
    const { event } = json(await shim.request({ path: '/echo', query: '__proto__=q&constructor=c', headers: [['__proto__', 'h']] }));
    assert.equal(Object.getPrototypeOf(event.queryStringParameters), Object.prototype);
    assert.ok(Object.hasOwn(event.queryStringParameters, '__proto__'));
    assert.equal(event.queryStringParameters.constructor, 'c');
    assert.ok(Object.hasOwn(event.headers, '__proto__'));
  });

  test('base64-encodes a textual content type whose body is not UTF-8', async () => {
    const bytes = Buffer.from([0xff, 0xfe, 0x41]);
    const { event } = json(await shim.request({ method: 'POST', path: '/echo', headers: [['content-type', 'text/plain']], body: bytes }));
    assert.equal(event.isBase64Encoded, true);
    assert.equal(event.body, bytes.toString('base64'));
  });

  test('turns a plain return value into a 200 JSON response', async () => {
    const result = await shim.request({ path: '/plain' });
    assert.equal(result.reply.status, 200);
    assert.deepEqual(header(result.reply, 'content-type'), ['application/json']);
    assert.deepEqual(json(result), { hello: 'world' });
    const empty = await shim.request({ path: '/nothing' });
    assert.equal(empty.reply.status, 200);
    assert.equal(empty.body.length, 0);
  });

  test('passes an event through and answers with its JSON value', async () => {
    const result = await shim.event({ rawPath: '/plain' });
    assert.equal(result.reply.status, 200);
    assert.deepEqual(json(result), { hello: 'world' });
    const nothing = await shim.event({ rawPath: '/nothing' });
    assert.equal(nothing.body.toString(), 'null');
  });

  test('reports a handler exception as an error frame and keeps serving', async () => {
    const { reply } = await shim.request({ path: '/throw' });
    assert.equal(reply.type, 'error');
    assert.equal(reply.name, 'TypeError');
    assert.equal(reply.message, 'bad thing');
    assert.match(reply.stack, /index\.mjs/);
    const after = await shim.request({ path: '/plain' });
    assert.equal(after.reply.status, 200);
  });

  test('captures console and stream output as log frames of the invocation', async () => {
    const { reply, logs } = await shim.request({ path: '/logs' }, 77);
    assert.equal(reply.type, 'result');
    const lines = logs.map((l) => [l.stream, l.line]);
    assert.deepEqual(lines.slice(0, 8), [
      ['stdout', 'first line { a: 1 }'],
      ['stderr', 'oops'],
      ['stderr', 'second'],
      ['stdout', 'partial done'],
      ['stderr', 'bytes'],
      ['stdout', 'info'],
      ['stderr', 'warn'],
      ['stdout', 'debug'],
    ]);
    assert.deepEqual(lines[8], ['stderr', 'Trace: tracing']);
    assert.match(lines[9][1], /^\s+at handler \(file:.*index\.mjs/);
    // No log frame of this invocation may arrive after its result.
    const resultIndex = shim.frames.indexOf(reply);
    assert.ok(shim.frames.every((f, i) => !(f.type === 'log' && f.id === 77) || i < resultIndex));
  });

  test('refuses a second init', async () => {
    shim.send({ type: 'init', function: 'other', code_dir: fixtures.fetch, entry: 'index.mjs', env: {} });
    const reply = await shim.frame((f) => f.type === 'init_error', 'init_error');
    assert.match(reply.message, /already bound to function "demo"/);
    const still = await shim.request({ path: '/plain' });
    assert.equal(still.reply.status, 200);
  });
});

describe('lambda style from CommonJS', () => {
  test('exports.handler in a .cjs file', async () => {
    const shim = new Shim();
    assert.equal((await shim.initOk(fixtures.lambdaCjs, 'index.cjs')).style, 'lambda');
    const result = await shim.event({ n: 1 });
    assert.deepEqual(json(result), { style: 'cjs', event: { n: 1 }, fn: 'demo' });
    const http = await shim.request({ path: '/x' });
    assert.equal(json(http).event.rawPath, '/x');
    await shim.stop();
  });

  test('callback-style exports.handler in a .js file without type:module', async () => {
    const shim = new Shim();
    assert.equal((await shim.initOk(fixtures.lambdaJs, 'handler.js')).style, 'lambda');
    const result = await shim.event({ n: 2 });
    assert.deepEqual(json(result), { viaCallback: true, event: { n: 2 } });
    const failed = await shim.event({ fail: true });
    assert.equal(failed.reply.type, 'error');
    assert.equal(failed.reply.message, 'callback failure');
    await shim.stop();
  });

  test('a handler only reachable through module.exports', async () => {
    const shim = new Shim();
    assert.equal((await shim.initOk(fixtures.lambdaDynamicExports, 'index.cjs')).style, 'lambda');
    assert.equal(json(await shim.event(null)), 'dynamic');
    await shim.stop();
  });
});

describe('fetch style', () => {
  let shim;
  before(async () => {
    shim = new Shim();
    assert.equal((await shim.initOk(fixtures.fetch, 'index.mjs', { env: { FIXTURE_VALUE: 'from-env', NOT_A_STRING: 5 } })).style, 'fetch');
  });
  after(() => shim.stop());

  test('builds a Request from the HTTP request', async () => {
    const result = await shim.request({
      method: 'POST',
      path: '/echo/path',
      query: 'x=1&y=2',
      headers: [['host', 'demo.thaw.test'], ['content-type', 'text/plain'], ['content-length', '10'], ['x-test', 'a']],
      body: 'hello body',
    });
    assert.equal(result.reply.status, 200);
    const seen = json(result);
    assert.equal(seen.method, 'POST');
    assert.equal(seen.url, 'http://demo.thaw.test/echo/path?x=1&y=2');
    assert.equal(seen.headers['x-test'], 'a');
    assert.equal(seen.body, 'hello body');
    assert.equal(seen.envValue, 'from-env');
    assert.equal(seen.envNotString, null);
    assert.equal(seen.cwd, fs.realpathSync(fixtures.fetch));
  });

  test('sends no body for GET', async () => {
    const seen = json(await shim.request({ path: '/' }));
    assert.equal(seen.method, 'GET');
    assert.equal(seen.body, null);
  });

  test('round-trips binary bodies', async () => {
    const bytes = Buffer.from([0, 1, 2, 250, 251, 252, 0xc0]);
    const result = await shim.request({ method: 'POST', path: '/binary', body: bytes });
    assert.equal(result.reply.status, 202);
    assert.deepEqual(result.body, Buffer.from(bytes).reverse());
    assert.deepEqual(header(result.reply, 'content-type'), ['application/octet-stream']);
  });

  test('keeps several set-cookie headers apart', async () => {
    const result = await shim.request({ path: '/cookies' });
    assert.equal(result.reply.status, 204);
    assert.deepEqual(header(result.reply, 'set-cookie'), ['a=1', 'b=2; Path=/']);
    assert.deepEqual(header(result.reply, 'x-one'), ['1']);
  });

  test('delivers an event as POST / with a JSON body', async () => {
    const seen = json(await shim.event({ kind: 'event' }));
    assert.equal(seen.method, 'POST');
    assert.equal(new URL(seen.url).pathname, '/');
    assert.equal(seen.headers['content-type'], 'application/json');
    assert.deepEqual(JSON.parse(seen.body), { kind: 'event' });
  });

  test('rejects a return value that is not a Response', async () => {
    const { reply } = await shim.request({ path: '/not-response' });
    assert.equal(reply.type, 'error');
    assert.match(reply.message, /must return a Response/);
  });

  test('reports an exception as an error frame', async () => {
    const { reply } = await shim.request({ path: '/throw' });
    assert.equal(reply.type, 'error');
    assert.equal(reply.name, 'RangeError');
    assert.equal(reply.message, 'fetch failed here');
  });
});

describe('openwhisk style', () => {
  let shim;
  before(async () => {
    shim = new Shim();
    assert.equal((await shim.initOk(fixtures.openwhisk, 'index.mjs')).style, 'openwhisk');
  });
  after(() => shim.stop());

  test('merges query and JSON body into params with the __ow_ fields', async () => {
    const result = await shim.request({
      method: 'POST',
      path: '/params',
      query: 'q=1&shared=query',
      headers: [['content-type', 'application/json'], ['x-a', 'b']],
      body: '{"shared":"body","n":2}',
    });
    assert.equal(result.reply.status, 200);
    assert.deepEqual(header(result.reply, 'content-type'), ['application/json']);
    const { params } = json(result);
    assert.equal(params.q, '1');
    assert.equal(params.n, 2);
    assert.equal(params.shared, 'body');
    assert.equal(params.__ow_method, 'post');
    assert.equal(params.__ow_path, '/params');
    assert.deepEqual(params.__ow_headers, { 'content-type': 'application/json', 'x-a': 'b' });
    assert.equal(params.__ow_query, 'q=1&shared=query');
    assert.equal(params.__ow_body, '{"shared":"body","n":2}');
  });

  test('passes a binary body as base64', async () => {
    const bytes = Buffer.from([0xff, 0x00, 0x10]);
    const { params } = json(await shim.request({ method: 'POST', path: '/p', headers: [['content-type', 'application/octet-stream']], body: bytes }));
    assert.equal(params.__ow_body, bytes.toString('base64'));
  });

  test('treats a statusCode/headers/body result as a web response', async () => {
    const web = await shim.request({ path: '/web' });
    assert.equal(web.reply.status, 201);
    assert.deepEqual(header(web.reply, 'x-ow'), ['yes']);
    assert.equal(web.body.toString(), 'web body');
    const object = await shim.request({ path: '/object' });
    assert.equal(object.reply.status, 200);
    assert.deepEqual(header(object.reply, 'content-type'), ['application/json']);
    assert.deepEqual(json(object), { nested: true });
    const image = await shim.request({ path: '/image' });
    assert.deepEqual(image.body, Buffer.from([1, 2, 3]));
  });

  test('calls main with the event itself', async () => {
    assert.deepEqual(json(await shim.event({ a: 1 })), { params: { a: 1 } });
  });

  test('reports an exception as an error frame', async () => {
    const { reply } = await shim.request({ path: '/throw' });
    assert.equal(reply.type, 'error');
    assert.equal(reply.message, 'whisk failure');
  });
});

describe('class style (JSON-RPC)', () => {
  let shim;
  const rpc = (body, method = 'POST') =>
    shim.request({ method, path: '/', headers: [['content-type', 'application/json']], body: typeof body === 'string' ? body : JSON.stringify(body) });

  before(async () => {
    shim = new Shim();
    const reply = await shim.initOk(fixtures.classes, 'index.mjs');
    assert.equal(reply.style, 'class');
    assert.deepEqual(reply.services.sort(), ['Child', 'Counter']);
  });
  after(() => shim.stop());

  test('calls a method with positional and named params', async () => {
    const result = await rpc({ jsonrpc: '2.0', method: 'Counter.add', params: [2, 3], id: 1 });
    assert.equal(result.reply.status, 200);
    assert.deepEqual(header(result.reply, 'content-type'), ['application/json']);
    assert.deepEqual(json(result), { jsonrpc: '2.0', result: 5, id: 1 });
    const named = await rpc({ jsonrpc: '2.0', method: 'Counter.echo', params: { a: 1 }, id: 'x' });
    assert.deepEqual(json(named), { jsonrpc: '2.0', result: { a: 1 }, id: 'x' });
    const nothing = await rpc({ jsonrpc: '2.0', method: 'Counter.nothing', id: 2 });
    assert.deepEqual(json(nothing), { jsonrpc: '2.0', result: null, id: 2 });
    const inherited = await rpc({ jsonrpc: '2.0', method: 'Child.inherited', id: 3 });
    assert.deepEqual(json(inherited), { jsonrpc: '2.0', result: 'from base', id: 3 });
  });

  test('keeps one instance per class', async () => {
    const first = json(await rpc({ jsonrpc: '2.0', method: 'Counter.increment', id: 1 })).result;
    const second = json(await rpc({ jsonrpc: '2.0', method: 'Counter.increment', id: 2 })).result;
    assert.equal(second, first + 1);
  });

  test('answers a parse error with 400', async () => {
    const result = await rpc('{"jsonrpc": "2.0", "method"');
    assert.equal(result.reply.status, 400);
    const body = json(result);
    assert.equal(body.error.code, -32700);
    assert.equal(body.id, null);
  });

  test('answers an invalid request with 400', async () => {
    for (const bad of [{ method: 'Counter.add', id: 1 }, { jsonrpc: '2.0', method: 5, id: 1 }, '"just a string"', [], { jsonrpc: '2.0', method: 'Counter.add', id: {} }]) {
      const result = await rpc(bad);
      assert.equal(result.reply.status, 400, JSON.stringify(bad));
      assert.equal(json(result).error.code, -32600, JSON.stringify(bad));
    }
    const params = await rpc({ jsonrpc: '2.0', method: 'Counter.add', params: 'nope', id: 9 });
    assert.equal(params.reply.status, 400);
    assert.deepEqual(json(params).error.code, -32602);
    assert.equal(json(params).id, 9);
  });

  test('answers unknown and unsafe methods with 404', async () => {
    const names = [
      'Counter.missing',
      'Counter.__proto__',
      'Counter.constructor',
      'Counter.toString',
      'Counter.hasOwnProperty',
      'Counter.valueOf',
      'Counter._hidden',
      'Counter.#private',
      'Counter.getter',
      'Counter.own',
      'Counter.count',
      'Nope.add',
      'notAClass.toFixed',
      'helper.call',
      'toString.call',
      '__proto__.constructor',
      'constructor.name',
      'Counter',
      '.add',
    ];
    for (const method of names) {
      const result = await rpc({ jsonrpc: '2.0', method, id: 1 });
      assert.equal(result.reply.status, 404, method);
      const body = json(result);
      assert.equal(body.error.code, -32601, method);
      assert.equal(body.id, 1);
    }
  });

  test('answers a thrown error with 500 and logs its stack', async () => {
    const result = await rpc({ jsonrpc: '2.0', method: 'Counter.fail', id: 4 });
    assert.equal(result.reply.status, 500);
    const body = json(result);
    assert.equal(body.error.code, -32000);
    assert.equal(body.error.message, 'method exploded');
    assert.equal(body.id, 4);
    const stderr = result.logs.filter((l) => l.stream === 'stderr').map((l) => l.line);
    assert.equal(stderr[0], 'Error: method exploded');
    assert.match(stderr[1], /at Counter\.fail/);
  });

  test('answers a batch, leaving out notifications', async () => {
    const result = await rpc([
      { jsonrpc: '2.0', method: 'Counter.add', params: [1, 1], id: 'a' },
      { jsonrpc: '2.0', method: 'Counter.increment' },
      { jsonrpc: '2.0', method: 'Counter.missing', id: 'b' },
      { jsonrpc: '2.0', method: 'Counter.slow', params: [5], id: 'c' },
      7,
    ]);
    assert.equal(result.reply.status, 200);
    const answers = json(result);
    assert.equal(answers.length, 4);
    assert.deepEqual(answers[0], { jsonrpc: '2.0', result: 2, id: 'a' });
    assert.equal(answers[1].error.code, -32601);
    assert.deepEqual(answers[2], { jsonrpc: '2.0', result: 5, id: 'c' });
    assert.equal(answers[3].error.code, -32600);
  });

  test('answers notifications with 204 and no body', async () => {
    const single = await rpc({ jsonrpc: '2.0', method: 'Counter.increment' });
    assert.equal(single.reply.status, 204);
    assert.equal(single.body.length, 0);
    const batch = await rpc([{ jsonrpc: '2.0', method: 'Counter.increment' }, { jsonrpc: '2.0', method: 'Counter.missing' }]);
    assert.equal(batch.reply.status, 204);
    assert.equal(batch.body.length, 0);
  });

  test('answers other HTTP methods with 405', async () => {
    const result = await rpc('', 'GET');
    assert.equal(result.reply.status, 405);
    assert.deepEqual(header(result.reply, 'allow'), ['POST']);
    assert.equal(json(result).jsonrpc, '2.0');
    assert.ok(json(result).error);
  });

  test('takes an event as the JSON-RPC request', async () => {
    const result = await shim.event({ jsonrpc: '2.0', method: 'Counter.add', params: [10, 20], id: 5 });
    assert.equal(result.reply.status, 200);
    assert.deepEqual(json(result), { jsonrpc: '2.0', result: 30, id: 5 });
    const missing = await shim.event({ jsonrpc: '2.0', method: 'Counter.nope', id: 6 });
    assert.equal(missing.reply.status, 404);
  });

  test('finds classes on a CommonJS module.exports object', async () => {
    const cjs = new Shim();
    const reply = await cjs.initOk(fixtures.classesCjs, 'index.cjs');
    assert.deepEqual(reply.services, ['Greeter']);
    const result = await cjs.event({ jsonrpc: '2.0', method: 'Greeter.greet', params: ['thaw'], id: 1 });
    assert.deepEqual(json(result), { jsonrpc: '2.0', result: 'hello thaw', id: 1 });
    await cjs.stop();
  });
});

describe('console capture', () => {
  test('tags output with the invocation that printed it, across concurrent invocations', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.logs, 'index.mjs');
    const loading = shim.frames.find((f) => f.type === 'log' && f.line === 'loading module');
    assert.equal(loading.id, null);

    // a: start, (b: start), a: middle, (b: middle), a: end, (b: end) with the
    // delays chosen so the two invocations' lines alternate.
    const a = shim.event({ name: 'a', firstDelay: 20, secondDelay: 60 }, 100);
    const b = shim.event({ name: 'b', firstDelay: 40, secondDelay: 60 }, 200);
    const [ra, rb] = await Promise.all([a, b]);
    assert.equal(json(ra), 'a');
    assert.equal(json(rb), 'b');
    assert.deepEqual(ra.logs.map((l) => [l.stream, l.line]), [['stdout', 'start a'], ['stdout', 'middle a'], ['stderr', 'end a']]);
    assert.deepEqual(rb.logs.map((l) => [l.stream, l.line]), [['stdout', 'start b'], ['stdout', 'middle b'], ['stderr', 'end b']]);
    const order = shim.frames.filter((f) => f.type === 'log' && f.id !== null).map((f) => f.line);
    assert.deepEqual(order, ['start a', 'start b', 'middle a', 'middle b', 'end a', 'end b']);
    await shim.stop();
  });
});

describe('init errors', () => {
  async function initError(dir, entry) {
    const shim = new Shim();
    const reply = await shim.init(dir, entry);
    assert.equal(reply.type, 'init_error', JSON.stringify(reply));
    return { shim, reply };
  }

  test('a syntax error in the entry names the file and line', async () => {
    const { shim, reply } = await initError(fixtures.syntaxError, 'index.mjs');
    const file = path.join(fixtures.syntaxError, 'index.mjs');
    assert.ok(reply.message.includes(`${file}:4`), reply.message);
    assert.match(reply.message, /SyntaxError/);
    assert.ok(reply.stack.includes('let broken = ;'), reply.stack);
    // Invocations on a runtime whose init failed are refused.
    const { reply: refused } = await shim.event({});
    assert.equal(refused.type, 'error');
    await shim.stop();
  });

  test('a syntax error in an imported module names that module', async () => {
    const { shim, reply } = await initError(fixtures.nestedSyntaxError, 'index.mjs');
    const file = path.join(fixtures.nestedSyntaxError, 'lib', 'util.mjs');
    assert.ok(reply.message.includes(`${file}:4`), reply.message);
    await shim.stop();
  });

  test('a syntax error in CommonJS names the file and line', async () => {
    const { shim, reply } = await initError(fixtures.cjsSyntaxError, 'index.cjs');
    assert.ok(reply.message.includes(`${path.join(fixtures.cjsSyntaxError, 'index.cjs')}:2`), reply.message);
    await shim.stop();
  });

  test('an exception at module top level', async () => {
    const { shim, reply } = await initError(fixtures.throwsAtTop, 'index.mjs');
    assert.match(reply.message, /top level failure/);
    assert.match(reply.stack, /index\.mjs:1/);
    await shim.stop();
  });

  test('a missing entry file', async () => {
    const { shim, reply } = await initError(fixtures.noHandler, 'missing.mjs');
    assert.match(reply.message, /missing\.mjs/);
    await shim.stop();
  });

  test('no recognised handler lists the exports and what was expected', async () => {
    const { shim, reply } = await initError(fixtures.noHandler, 'index.mjs');
    assert.match(reply.message, /answer \(number\)/);
    assert.match(reply.message, /helper \(function\)/);
    assert.match(reply.message, /default \(object with name \(string\)\)/);
    assert.match(reply.message, /"handler" function/);
    assert.match(reply.message, /"fetch" or "scheduled" method/);
    assert.match(reply.message, /"main" function/);
    assert.match(reply.message, /classes/);
    await shim.stop();
  });
});

describe('lambda context API and the event-loop rule', () => {
  let shim;
  const run = (c) => shim.event({ case: c });
  before(async () => {
    shim = new Shim();
    assert.equal((await shim.initOk(fixtures.lambdaContext, 'index.js')).style, 'lambda');
  });
  after(() => shim.stop());

  test('context.succeed and context.done answer at once, without waiting', async () => {
    assert.deepEqual(json(await run('succeed')), { late: false });
    assert.deepEqual(json(await run('done')), { via: 'done' });
  });

  test('context.fail and context.done(err) fail the call', async () => {
    const failed = await run('fail');
    assert.equal(failed.reply.type, 'error');
    assert.equal(failed.reply.message, 'failed here');
    assert.equal((await run('done-error')).reply.message, 'done failed');
    assert.equal((await run('fail-empty')).reply.message, 'handled');
    assert.equal((await run('fail-string')).reply.message, 'plain string');
  });

  test('callback(null, result) answers once the invocation has no timers or I/O left', async () => {
    assert.deepEqual(json(await run('wait')), { late: true });
    assert.deepEqual(json(await run('wait-chain')), { late: true });
    assert.deepEqual(json(await run('later-callback')), { called: 'later' });
  });

  test('callbackWaitsForEmptyEventLoop = false answers at the callback', async () => {
    assert.deepEqual(json(await run('no-wait')), { late: false });
  });

  test('an unref()-ed timer does not hold the answer', async () => {
    assert.deepEqual(json(await run('unref')), { late: false });
  });

  test('callback(err) fails at once; the first report wins', async () => {
    const failed = await run('callback-error');
    assert.equal(failed.reply.type, 'error');
    assert.equal(failed.reply.message, 'callback failed');
    assert.equal(json(await run('first-wins')), 'first');
    assert.equal(json(await run('returns-value')), 'from callback');
  });

  test('only what an invocation started holds its answer', async () => {
    // A leaves an interval running and reports: it waits. B, meanwhile,
    // answers as soon as its own timer is done. C clears A's interval.
    const a = shim.event({ case: 'hold' }, 501);
    const b = await shim.event({ case: 'wait' }, 502);
    assert.deepEqual(json(b), { late: true });
    const sentRelease = shim.frames.length;
    const c = shim.event({ case: 'release' }, 503);
    const [ra, rc] = await Promise.all([a, c]);
    assert.equal(json(rc), 'released');
    assert.equal(json(ra), 'held');
    assert.ok(shim.frames.indexOf(ra.reply) >= sentRelease, 'A answered before its interval was cleared');
  });
});

describe('lambda plain functions and async handlers with the context API', () => {
  test('a plain function may answer later through context.succeed, or with nothing once its work is done', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.lambdaPlainSync, 'index.js');
    assert.deepEqual(json(await shim.event({ case: 'later' })), { later: true });
    assert.deepEqual(json(await shim.event({ case: 'returns' })), { returned: true });
    assert.equal((await shim.event({ case: 'nothing' })).body.toString(), 'null');
    const worked = await shim.event({ case: 'work' });
    assert.equal(worked.body.toString(), 'null');
    assert.deepEqual(worked.logs.map((l) => l.line), ['work finished']);
    const http = await shim.request({ path: '/' });
    assert.equal(http.reply.status, 200);
    await shim.stop();
  });

  test('an async handler answers with its promise, and context.succeed/fail still report first', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.lambdaAsyncContext, 'index.mjs');
    assert.deepEqual(json(await shim.event({})), { waits: true });
    assert.equal(json(await shim.event({ case: 'succeed' })), 'succeeded');
    const failed = await shim.event({ case: 'fail' });
    assert.equal(failed.reply.type, 'error');
    assert.equal(failed.reply.message, 'async fail');
    await shim.stop();
  });
});

describe('fetch style: work after the response', () => {
  test('waitUntil work runs after the answer; a host that knows background_done hears when it ends', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.fetchBackground, 'index.mjs', { features: ['background_done'] });
    const started = await shim.request({ path: '/start' }, 11);
    assert.equal(started.body.toString(), 'started');
    assert.equal(started.reply.background, true);
    // The work waits for /release, so the answer above came before it.
    assert.equal(shim.frames.some((f) => f.type === 'background_done'), false);
    const released = await shim.request({ path: '/release' }, 12);
    assert.equal(released.body.toString(), 'released');
    assert.equal(released.reply.background, undefined);
    const doneFrame = await shim.frame((f) => f.type === 'background_done' && f.id === 11, 'background_done');
    assert.equal(doneFrame.timed_out, false);
    // Its lines belong to the invocation and come before background_done.
    const doneIndex = shim.frames.indexOf(doneFrame);
    const lines = shim.frames.filter((f, i) => f.type === 'log' && f.id === 11 && i < doneIndex).map((f) => f.line);
    assert.deepEqual(lines, ['background finished', 'nested work']);
    assert.deepEqual(json(await shim.request({ path: '/state' })), { done: true });
    assert.equal(shim.frames.filter((f) => f.type === 'background_done').length, 1);
    await shim.stop();
  });

  test('without the feature the work still runs, and no new frame type reaches the host', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.fetchBackground, 'index.mjs');
    const started = await shim.request({ path: '/start' }, 21);
    assert.equal(started.reply.background, true);
    await shim.request({ path: '/release' }, 22);
    await shim.frame((f) => f.type === 'log' && f.id === 21 && f.line === 'background finished', 'background line');
    assert.deepEqual(json(await shim.request({ path: '/state' })), { done: true });
    const failed = await shim.request({ path: '/fail' }, 23);
    assert.equal(failed.body.toString(), 'answered');
    await shim.frame((f) => f.type === 'log' && f.id === 23 && f.line === 'Error: background failed', 'background failure');
    assert.deepEqual([...new Set(shim.frames.map((f) => f.type))].sort(), ['init_ok', 'log', 'ready', 'result']);
    await shim.stop();
  });
});

describe('class style: Genezio errors', () => {
  let shim;
  const rpc = (method, id = 1) =>
    shim.request({ method: 'POST', path: '/', headers: [['content-type', 'application/json']], body: JSON.stringify({ jsonrpc: '2.0', method, params: [], id }) });
  before(async () => {
    shim = new Shim();
    await shim.initOk(fixtures.genezio, 'index.mjs');
  });
  after(() => shim.stop());

  test('a GenezioError reaches the caller with its message, code and info', async () => {
    const result = await rpc('Svc.denied', 7);
    assert.equal(result.reply.status, 200);
    const info = { reason: 'token', retry: false };
    assert.deepEqual(json(result), { jsonrpc: '2.0', error: { code: 401, message: 'not allowed', data: info, info }, id: 7 });
    assert.match(result.logs.map((l) => l.line).join('\n'), /GenezioError: not allowed/);
  });

  test('without info, without a code, with an info that is not JSON', async () => {
    assert.deepEqual(json(await rpc('Svc.missing', 'm')), { jsonrpc: '2.0', error: { code: 404, message: 'no such item' }, id: 'm' });
    assert.deepEqual(json(await rpc('Svc.noCode')).error, { code: -32000, message: 'no code' });
    assert.deepEqual(json(await rpc('Svc.cyclic')).error, { code: 500, message: 'cyclic info' });
  });

  test('an Error with a numeric code and info counts; other errors keep their shape', async () => {
    assert.deepEqual(json(await rpc('Svc.shaped')).error, { code: 403, message: 'by shape', data: { why: 'shape' }, info: { why: 'shape' } });
    const plain = await rpc('Svc.plain', 9);
    assert.equal(plain.reply.status, 500);
    assert.deepEqual(json(plain), { jsonrpc: '2.0', error: { code: -32000, message: 'plain failure', data: { name: 'Error' } }, id: 9 });
  });

  test('in a batch and as a notification', async () => {
    const batch = await shim.request({
      method: 'POST',
      path: '/',
      body: JSON.stringify([{ jsonrpc: '2.0', method: 'Svc.denied', id: 1 }, { jsonrpc: '2.0', method: 'Svc.denied' }]),
    });
    assert.equal(batch.reply.status, 200);
    assert.deepEqual(json(batch).map((a) => [a.id, a.error.code]), [[1, 401]]);
    const note = await shim.event({ jsonrpc: '2.0', method: 'Svc.denied' });
    assert.equal(note.reply.status, 204);
  });
});

describe('openwhisk contract', () => {
  let shim;
  before(async () => {
    shim = new Shim();
    await shim.initOk(fixtures.owContract, 'index.mjs');
  });
  after(() => shim.stop());

  test('main returning nothing answers {}', async () => {
    for (const c of ['nothing', 'null', 'async-nothing']) assert.deepEqual(json(await shim.event({ case: c })), {}, c);
    const web = await shim.request({ path: '/nothing' });
    assert.equal(web.reply.status, 200);
    assert.deepEqual(json(web), {});
    assert.deepEqual(json(await shim.request({ path: '/async-nothing' })), {});
    assert.deepEqual(json(await shim.event({ case: 'array' })), [1, 2]);
  });

  test('a result that is not a dictionary is an error', async () => {
    for (const c of ['string', 'number']) {
      const { reply } = await shim.event({ case: c });
      assert.equal(reply.type, 'error', c);
      assert.equal(reply.message, 'The action did not return a dictionary.');
    }
    const { reply } = await shim.request({ path: '/string' });
    assert.equal(reply.type, 'error');
    assert.equal(reply.message, 'The action did not return a dictionary.');
  });

  test('__OW_ variables are set for each call', async () => {
    const deadline = Date.now() + 12_345;
    const { reply, body } = await shim.invoke({ request: httpRequest({ path: '/env', headers: [['host', 'api.thaw.test:8080']] }), deadline_ms: deadline }, 61);
    assert.equal(reply.status, 200);
    const { env, path: owPath } = JSON.parse(body);
    assert.equal(owPath, '/env');
    assert.deepEqual(env, {
      __OW_ACTIVATION_ID: '61',
      __OW_ACTION_NAME: '/default/demo',
      __OW_DEADLINE: String(deadline),
      __OW_NAMESPACE: 'default',
      __OW_API_HOST: 'http://api.thaw.test:8080',
    });
    const forwarded = json(await shim.request({ path: '/env', headers: [['x-forwarded-proto', 'https']] }, 62)).env;
    assert.equal(forwarded.__OW_API_HOST, 'https://demo.thaw.test');
    assert.equal(forwarded.__OW_ACTIVATION_ID, '62');
    const event = json(await shim.event({ case: 'env' }, 63)).env;
    assert.equal(event.__OW_ACTIVATION_ID, '63');
    assert.equal(event.__OW_API_HOST, null);
  });

  test('__ow_path is "" when nothing follows the function URL', async () => {
    assert.equal(json(await shim.request({ path: '/' })).path, '');
    assert.equal(json(await shim.request({ path: '/a/b' })).path, '/a/b');
  });

  test('a string body without a content type is text/html', async () => {
    const html = await shim.request({ path: '/html' });
    assert.deepEqual(header(html.reply, 'content-type'), ['text/html']);
    assert.equal(html.body.toString(), '<p>hi</p>');
    const typed = await shim.request({ path: '/typed' });
    assert.deepEqual(header(typed.reply, 'content-type'), ['text/plain']);
  });

  test('the namespace comes from init when the host sends one', async () => {
    const other = new Shim();
    await other.initOk(fixtures.owContract, 'index.mjs', { namespace: 'team-a' });
    const { env } = json(await other.event({ case: 'env' }));
    assert.equal(env.__OW_NAMESPACE, 'team-a');
    assert.equal(env.__OW_ACTION_NAME, '/team-a/demo');
    await other.stop();
  });

  test('a script that declares main without exporting it runs, once', async () => {
    const script = new Shim();
    assert.equal((await script.initOk(fixtures.owScript, 'action.js')).style, 'openwhisk');
    assert.equal(script.frames.filter((f) => f.type === 'log' && f.line === 'script loaded').length, 1);
    assert.deepEqual(json(await script.event({ name: 'x' })), { script: true, name: 'x' });
    assert.deepEqual(json(await script.request({ path: '/', query: 'name=q' })), { script: true, name: 'q' });
    await script.stop();
  });

  test('a bundle that sets global.main runs', async () => {
    const bundle = new Shim();
    assert.equal((await bundle.initOk(fixtures.owBundle, 'bundle.js')).style, 'openwhisk');
    assert.deepEqual(json(await bundle.event({ n: 3 })), { bundle: true, n: 3 });
    await bundle.stop();
  });
});

// A scheduled call answers like an event: 200, JSON, the handler's value.
function assertScheduledResult(result, value) {
  assert.equal(result.reply.type, 'result', JSON.stringify(result.reply));
  assert.equal(result.reply.status, 200);
  assert.deepEqual(header(result.reply, 'content-type'), ['application/json']);
  assert.deepEqual(json(result), value);
}

describe('scheduled calls: lambda style', () => {
  let shim;
  before(async () => {
    shim = new Shim();
    await shim.initOk(fixtures.lambdaScheduled, 'index.js', { namespace: 'team-a' });
  });
  after(() => shim.stop());

  test('gets an EventBridge scheduled event with the payload as detail', async () => {
    const result = await shim.scheduled({ payload: { case: 'event', n: 1 } });
    assertScheduledResult(result, {
      event: {
        version: '0',
        id: 'a1b2c3d4e5f6a7b8c9d0e1f2',
        'detail-type': 'Scheduled Event',
        source: 'aws.events',
        account: 'team-a',
        time: '2026-12-03T08:00:00Z',
        region: 'thaw',
        resources: ['thaw:schedule/team-a/demo/nightly'],
        detail: { case: 'event', n: 1 },
      },
      functionName: 'demo',
    });
  });

  test('detail is {} without a payload; callback, context.succeed and nothing answer as for events', async () => {
    for (const fields of [{}, { payload: null, method: null }]) {
      assert.deepEqual(json(await shim.scheduled(fields)).event.detail, {});
    }
    assertScheduledResult(await shim.scheduled({ payload: { case: 'succeed' } }), { via: 'succeed' });
    assertScheduledResult(await shim.scheduled({ payload: { case: 'nothing' } }), null);
  });

  test('a throw or callback(err) is an error frame, and the runtime keeps serving', async () => {
    const thrown = await shim.scheduled({ payload: { case: 'throw' } });
    assert.equal(thrown.reply.type, 'error');
    assert.equal(thrown.reply.message, 'scheduled lambda failed');
    assert.equal(thrown.reply.no_retry, undefined);
    const called = await shim.scheduled({ payload: { case: 'callback-error' } });
    assert.equal(called.reply.type, 'error');
    assert.equal(called.reply.message, 'callback failed');
    assert.equal(json(await shim.event({ detail: { case: 'succeed' } })).via, 'succeed');
  });
});

describe('scheduled calls: fetch style', () => {
  test('scheduled(controller, env, ctx) gets Cloudflare\'s controller, the environment and an execution context', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.fetchScheduled, 'index.mjs', { env: { FIXTURE_VALUE: 'from-env' } });
    assertScheduledResult(await shim.scheduled(), {
      controller: { scheduledTime: SCHEDULED_TIME_MS, cron: '*/5 * * * *', type: 'scheduled', noRetry: 'function' },
      envValue: 'from-env',
      ctx: ['passThroughOnException', 'waitUntil'],
    });
    // The payload and the method are not part of Cloudflare's contract.
    assert.equal(json(await shim.scheduled({ payload: { ignored: true }, method: 'X.y' })).controller.cron, '*/5 * * * *');
    assert.equal((await shim.request({ path: '/' })).body.toString(), 'fetched');
    await shim.stop();
  });

  test('a failure is an error frame; after noRetry() it carries no_retry: true', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.fetchScheduled, 'index.mjs');
    const failed = await shim.scheduled({ cron: '0 1 * * *' });
    assert.equal(failed.reply.type, 'error');
    assert.equal(failed.reply.name, 'RangeError');
    assert.equal(failed.reply.message, 'scheduled fetch failed');
    assert.equal(failed.reply.no_retry, undefined);
    const noRetry = await shim.scheduled({ cron: '0 2 * * *' });
    assert.equal(noRetry.reply.type, 'error');
    assert.equal(noRetry.reply.message, 'do not retry me');
    assert.equal(noRetry.reply.no_retry, true);
    // noRetry() only speaks about failures, and only of its own call.
    const succeeded = await shim.scheduled({ cron: '0 3 * * *' });
    assertScheduledResult(succeeded, 'fine after all');
    assert.equal(succeeded.reply.no_retry, undefined);
    assert.equal((await shim.scheduled({ cron: '0 1 * * *' })).reply.no_retry, undefined);
    await shim.stop();
  });

  test('waitUntil keeps the call\'s work going after the answer, as for fetch', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.fetchScheduled, 'index.mjs', { features: ['background_done'] });
    const result = await shim.scheduled({ cron: '0 4 * * *' }, 31);
    assertScheduledResult(result, null);
    assert.equal(result.reply.background, true);
    const doneFrame = await shim.frame((f) => f.type === 'background_done' && f.id === 31, 'background_done');
    assert.equal(doneFrame.timed_out, false);
    const doneIndex = shim.frames.indexOf(doneFrame);
    assert.ok(shim.frames.some((f, i) => f.type === 'log' && f.id === 31 && f.line === 'scheduled work done' && i < doneIndex));
    await shim.stop();
  });

  test('a module with only scheduled() is fetch style and refuses requests clearly', async () => {
    const shim = new Shim();
    const init = await shim.initOk(fixtures.cronOnly, 'index.mjs');
    assert.equal(init.style, 'fetch');
    assertScheduledResult(await shim.scheduled({ cron: '*/5 * * * *' }), { ran: '*/5 * * * *' });
    const { reply } = await shim.request({ method: 'GET', path: '/' });
    assert.equal(reply.type, 'error');
    assert.match(reply.message, /exports no fetch\(\) handler, only scheduled\(\)/);
    await shim.stop();
  });

  test('a module without scheduled() fails the call and says what to add', async () => {
    const shim = new Shim();
    await shim.initOk(fixtures.fetch, 'index.mjs');
    const { reply } = await shim.scheduled({ schedule: 'hourly' });
    assert.equal(reply.type, 'error');
    assert.equal(reply.message, 'this module exports no scheduled() handler: add one to receive schedule "hourly"');
    await shim.stop();
  });
});

describe('scheduled calls: class style', () => {
  let shim;
  before(async () => {
    shim = new Shim();
    await shim.initOk(fixtures.classScheduled, 'index.mjs');
  });
  after(() => shim.stop());

  test('calls the named method: no arguments, the payload array as arguments, or the payload as one', async () => {
    assertScheduledResult(await shim.scheduled({ method: 'Jobs.nightly' }), { args: [], runs: 1 });
    assertScheduledResult(await shim.scheduled({ method: 'Jobs.nightly', payload: null }), { args: [], runs: 2 });
    assert.deepEqual(json(await shim.scheduled({ method: 'Jobs.nightly', payload: [1, 'two', { three: 3 }] })).args, [1, 'two', { three: 3 }]);
    assert.deepEqual(json(await shim.scheduled({ method: 'Jobs.nightly', payload: { since: 'yesterday' } })).args, [{ since: 'yesterday' }]);
    assert.deepEqual(json(await shim.scheduled({ method: 'Jobs.nightly', payload: 'text' })).args, ['text']);
    assert.deepEqual(json(await shim.scheduled({ method: 'Jobs.nightly', payload: false })).args, [false]);
    assertScheduledResult(await shim.scheduled({ method: 'Jobs.quiet' }), null);
    assertScheduledResult(await shim.scheduled({ method: 'Reports.weekly' }), 'weekly');
    // The same instance as JSON-RPC calls use.
    const rpc = await shim.event({ jsonrpc: '2.0', method: 'Jobs.nightly', params: [], id: 1 });
    assert.equal(json(rpc).result.runs, 7);
  });

  test('a thrown error, GenezioError included, fails the call with an error frame', async () => {
    const denied = await shim.scheduled({ method: 'Jobs.denied' });
    assert.equal(denied.reply.type, 'error');
    assert.equal(denied.reply.name, 'GenezioError');
    assert.equal(denied.reply.message, 'not now');
    const broken = await shim.scheduled({ method: 'Jobs.broken' });
    assert.equal(broken.reply.type, 'error');
    assert.equal(broken.reply.message, 'job broke');
    assert.match(broken.reply.stack, /index\.mjs/);
  });

  test('a missing or unknown method is an error that names the services', async () => {
    const missing = await shim.scheduled({});
    assert.equal(missing.reply.type, 'error');
    assert.equal(missing.reply.message, 'schedule "nightly" names no method: a class service\'s schedule needs a "Class.method" of one of its services (Jobs, Reports)');
    for (const method of ['Jobs.monthly', 'Nope.nightly', 'Jobs._hidden', 'Jobs.constructor', 'nightly']) {
      const { reply } = await shim.scheduled({ method });
      assert.equal(reply.type, 'error', method);
      assert.equal(reply.message, `schedule "nightly" names "${method}", which is not a method of this function: a class service's schedule needs a "Class.method" of one of its services (Jobs, Reports)`);
    }
  });
});

describe('scheduled calls: openwhisk style', () => {
  let shim;
  before(async () => {
    shim = new Shim();
    await shim.initOk(fixtures.owScheduled, 'index.mjs');
  });
  after(() => shim.stop());

  test('main gets the payload as params, with the __OW_ variables set', async () => {
    const result = await shim.scheduled({ payload: { table: 'events', days: 30 } }, 41);
    assertScheduledResult(result, { params: { table: 'events', days: 30 }, activation: '41', action: '/default/demo', apiHost: null });
    assert.deepEqual(json(await shim.scheduled({})).params, {});
    assert.deepEqual(json(await shim.scheduled({ payload: null })).params, {});
  });

  test('a payload that is not a dictionary arrives as { payload }', async () => {
    assert.deepEqual(json(await shim.scheduled({ payload: 'text' })).params, { payload: 'text' });
    assert.deepEqual(json(await shim.scheduled({ payload: [1, 2] })).params, { payload: [1, 2] });
    assert.deepEqual(json(await shim.scheduled({ payload: 0 })).params, { payload: 0 });
  });

  test('the dictionary rule applies, and a throw is an error frame', async () => {
    assertScheduledResult(await shim.scheduled({ payload: { nothing: true } }), {});
    const notDictionary = await shim.scheduled({ payload: { string: true } });
    assert.equal(notDictionary.reply.type, 'error');
    assert.equal(notDictionary.reply.message, 'The action did not return a dictionary.');
    const failed = await shim.scheduled({ payload: { fail: true } });
    assert.equal(failed.reply.type, 'error');
    assert.equal(failed.reply.message, 'alarm action failed');
  });
});

test('an invoke without request, event or scheduled, or with a malformed scheduled, is a clear error', async () => {
  const shim = new Shim();
  await shim.initOk(fixtures.lambdaCjs, 'index.cjs');
  const neither = await shim.invoke({});
  assert.equal(neither.reply.type, 'error');
  assert.equal(neither.reply.message, 'invoke needs a "request", an "event" or a "scheduled" field');
  for (const scheduled of ['nightly', { schedule: 'nightly' }, { schedule: 'nightly', scheduled_time_ms: 'soon' }, { scheduled_time_ms: 1 }]) {
    const { reply } = await shim.invoke({ scheduled });
    assert.equal(reply.type, 'error', JSON.stringify(scheduled));
    assert.equal(reply.message, 'an invoke\'s "scheduled" field must be an object with a string "schedule" and a number "scheduled_time_ms"');
  }
  await shim.stop();
});

test('an uncaught exception is logged and ends the process with status 1', async () => {
  const shim = new Shim();
  await shim.initOk(fixtures.uncaught, 'index.mjs');
  await shim.event({});
  const exit = await shim.exited;
  assert.equal(exit.code, 1);
  const lines = shim.frames.filter((f) => f.type === 'log' && f.stream === 'stderr').map((f) => f.line);
  assert.ok(lines.includes('Error: escaped the handler'), JSON.stringify(lines));
  assert.match(shim.stderr, /escaped the handler/);
});

test('handles frames split across reads and several frames in one read', async () => {
  const shim = new Shim();
  await shim.ready();
  const frames = Buffer.concat([
    encodeFrame({ type: 'init', function: 'demo', code_dir: fixtures.lambdaCjs, entry: 'index.cjs', env: {} }),
    encodeFrame({ type: 'invoke', id: 1, deadline_ms: Date.now() + 5000, event: { big: 'x'.repeat(200_000) } }),
    encodeFrame({ type: 'invoke', id: 2, deadline_ms: Date.now() + 5000, event: 'small' }),
  ]);
  // One byte, then a piece ending mid-header, then the rest at once.
  shim.stream.write(frames.subarray(0, 1));
  await new Promise((r) => setTimeout(r, 10));
  shim.stream.write(frames.subarray(1, 3));
  await new Promise((r) => setTimeout(r, 10));
  shim.stream.write(frames.subarray(3));
  const first = await shim.frame((f) => f.type === 'result' && f.id === 1);
  const second = await shim.frame((f) => f.type === 'result' && f.id === 2);
  assert.equal(JSON.parse(await shim.responseBody(first.id)).event.big.length, 200_000);
  assert.equal(JSON.parse(await shim.responseBody(second.id)).event, 'small');
  await shim.stop();
});

test('exits with an error on a frame longer than 64 MiB', async () => {
  const shim = new Shim();
  await shim.ready();
  const header = Buffer.alloc(5);
  header.writeUInt32BE(64 * 1024 * 1024 + 2, 0);
  header[4] = KIND.message;
  shim.stream.write(header);
  const exit = await shim.exited;
  assert.equal(exit.code, 1);
  assert.match(shim.stderr, /64 MiB/);
});

// ---------------------------------------------------------------------------
// Streamed bodies and their flow control.

const streamingFixture = fixture('streaming', {
  'index.mjs': `
    import { createHash } from 'node:crypto';
    const MIB = 1024 * 1024;
    export default {
      async fetch(request) {
        const url = new URL(request.url);
        if (url.pathname === '/three-mib') {
          let i = 0;
          const body = new ReadableStream({
            pull(controller) {
              if (i === 48) return controller.close();
              controller.enqueue(new Uint8Array(64 * 1024).fill(i++));
            },
          });
          return new Response(body, { headers: { 'content-type': 'application/octet-stream' } });
        }
        if (url.pathname === '/endless') {
          let cancelled = false;
          const body = new ReadableStream({
            pull: (controller) => new Promise((r) => setTimeout(() => { if (!cancelled) controller.enqueue(new TextEncoder().encode('tick\\n')); r(); }, 5)),
            cancel: (reason) => { cancelled = true; console.log('cancelled: ' + reason); },
          });
          return new Response(body);
        }
        if (url.pathname === '/hash') {
          const hash = createHash('sha256');
          let bytes = 0;
          for await (const chunk of request.body) {
            hash.update(chunk);
            bytes += chunk.length;
          }
          return Response.json({ bytes, sha256: hash.digest('hex') });
        }
        return new Response('no route', { status: 404 });
      },
    };
  `,
});

const lambdaStreamingFixture = fixture('lambda-streaming', {
  'index.mjs': `
    export const handler = awslambda.streamifyResponse(async (event, responseStream) => {
      if (event.rawPath === '/bare') {
        responseStream.setContentType('text/plain');
        responseStream.write('no prelude');
        responseStream.end();
        return;
      }
      const stream = awslambda.HttpResponseStream.from(responseStream, {
        statusCode: 207,
        headers: { 'content-type': 'text/event-stream', 'x-streamed': 'yes' },
        cookies: ['a=1'],
      });
      stream.write('data: one\\n\\n');
      await new Promise((r) => setTimeout(r, 5));
      stream.write(Buffer.from('data: two\\n\\n'));
      stream.end();
    });
  `,
});

describe('streamed bodies', () => {
  test("a ReadableStream body leaves within the host's credit, and the rest once more is granted", async () => {
    const shim = new Shim();
    await shim.initOk(streamingFixture, 'index.mjs');
    shim.grantCredit = false;
    const id = 1;
    shim.send({ type: 'invoke', id, deadline_ms: Date.now() + 10_000, request: httpRequest({ path: '/three-mib' }) });
    shim.sendBody(id, Buffer.alloc(0));
    const head = await shim.frame((f) => f.type === 'result' && f.id === id, 'the head');
    assert.equal(head.status, 200);
    const sent = () => shim.bodyFrames.filter((f) => f.id === id && f.kind === 'data').reduce((n, f) => n + f.bytes.length, 0);
    // The first window arrives; then nothing more until credit is granted.
    while (sent() < 1024 * 1024) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(sent(), 1024 * 1024, 'no byte past the first window without credit');
    assert.ok(!shim.bodyFrames.some((f) => f.id === id && f.kind === 'end'));
    shim.stream.write(encodeStreamFrame('credit', id, STREAM_RESPONSE, creditBytes(2 * 1024 * 1024)));
    const body = await shim.responseBody(id);
    assert.equal(body.length, 3 * 1024 * 1024);
    for (let i = 0; i < 48; i++) assert.equal(body[i * 64 * 1024], i, `chunk ${i} in its place`);
    await shim.stop();
  });

  test("the host's abort cancels the function's stream", async () => {
    const shim = new Shim();
    await shim.initOk(streamingFixture, 'index.mjs');
    const id = 1;
    shim.send({ type: 'invoke', id, deadline_ms: Date.now() + 10_000, request: httpRequest({ path: '/endless' }) });
    shim.sendBody(id, Buffer.alloc(0));
    await shim.bodyFrame((f) => f.id === id && f.kind === 'data', 'a first chunk');
    shim.stream.write(encodeStreamFrame('abort', id, STREAM_RESPONSE, Buffer.from('the client went away')));
    const line = await shim.frame((f) => f.type === 'log' && f.id === id && f.line.startsWith('cancelled'), 'the cancel');
    assert.equal(line.line, 'cancelled: the client went away');
    assert.ok(!shim.bodyFrames.some((f) => f.id === id && (f.kind === 'end' || f.kind === 'abort')), 'nothing ends a body the host stopped');
    await shim.stop();
  });

  test('a fetch handler reads a request body larger than the window as it arrives', async () => {
    const shim = new Shim();
    await shim.initOk(streamingFixture, 'index.mjs');
    const body = Buffer.alloc(5 * 1024 * 1024 + 3);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7) % 256;
    const result = await shim.request({ method: 'POST', path: '/hash', body });
    const answer = json(result);
    assert.equal(answer.bytes, body.length);
    assert.equal(answer.sha256, crypto.createHash('sha256').update(body).digest('hex'));
    // It could only have come whole through credit the shim granted.
    const granted = shim.bodyFrames.filter((f) => f.id === result.reply.id && f.kind === 'credit' && f.stream === STREAM_REQUEST);
    assert.ok(granted.length > 0, 'credit was granted as the body was read');
    await shim.stop();
  });

  test('Lambda streamifyResponse: the prelude is the head, what follows the body', async () => {
    const shim = new Shim();
    assert.equal((await shim.initOk(lambdaStreamingFixture, 'index.mjs')).style, 'lambda');
    const result = await shim.request({ path: '/sse' });
    assert.equal(result.reply.status, 207);
    assert.deepEqual(header(result.reply, 'content-type'), ['text/event-stream']);
    assert.deepEqual(header(result.reply, 'x-streamed'), ['yes']);
    assert.deepEqual(header(result.reply, 'set-cookie'), ['a=1']);
    assert.equal(result.body.toString('utf8'), 'data: one\n\ndata: two\n\n');
    const bare = await shim.request({ path: '/bare' });
    assert.equal(bare.reply.status, 200);
    assert.deepEqual(header(bare.reply, 'content-type'), ['text/plain']);
    assert.equal(bare.body.toString('utf8'), 'no prelude');
    await shim.stop();
  });
});
