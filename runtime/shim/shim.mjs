// thaw runtime shim: the Node.js side of the host ⇄ runtime protocol.
//
// The host starts this file with plain `node` inside an instance. It speaks
// length-prefixed JSON frames (docs/protocol.md) over the byte stream on file
// descriptor THAW_FD (default 3), imports the user's module on `init`, and
// answers `invoke` messages by calling the user's handler in one of four
// styles: lambda, fetch, openwhisk or class (JSON-RPC).
//
// This file sits on the cold-start path, so module top level only sets up the
// socket, console capture and crash handlers. Everything else (Request,
// Response, URLSearchParams work, ...) is touched lazily, on first use.

import { AsyncLocalStorage, createHook } from 'node:async_hooks';
import { Buffer, isUtf8 } from 'node:buffer';
import { Console } from 'node:console';
import { realpathSync, writeSync } from 'node:fs';
import Module from 'node:module';
import net from 'node:net';
import { Writable } from 'node:stream';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const PROTOCOL_VERSION = 2;
const RUNTIME_NAME = 'thaw-shim/0.2.0';
// docs/protocol.md: a message holds at most 64 MiB of JSON; a data frame at
// most 256 KiB of body; a stream starts with 1 MiB of credit.
const MAX_FRAME_BYTES = 64 * 1024 * 1024;
const MAX_CHUNK = 256 * 1024;
const WINDOW = 1024 * 1024;
const MAX_CREDIT = 64 * 1024 * 1024;
const MAX_ABORT_REASON = 4096;
// A single console line could otherwise exceed the frame limit; longer lines
// are cut into several `log` frames.
const MAX_LOG_LINE_CHARS = 256 * 1024;

// ---------------------------------------------------------------------------
// Fatal errors of the shim itself go to the real stderr (fd 2): the host only
// reads fds 1 and 2 to explain a crash, and the frame stream may be the thing
// that broke.

function die(message, exitCode = 1) {
  try {
    writeSync(2, `thaw-shim: ${message}\n`);
  } catch {
    // Nothing left to report to.
  }
  process.exit(exitCode);
}

// ---------------------------------------------------------------------------
// Framing (docs/protocol.md): a 4-byte big-endian length, a kind byte, then
// JSON for a message, or a call id (u64), a stream number and the rest for
// the frames that carry bodies. Bodies never pass through JSON.

const KIND_MESSAGE = 0x01;
const KIND_DATA = 0x02;
const KIND_END = 0x03;
const KIND_ABORT = 0x04;
const KIND_CREDIT = 0x05;
// Stream numbers: the request's body flows host → runtime, the response's
// runtime → host.
const STREAM_REQUEST = 0;
const STREAM_RESPONSE = 1;
// Kind, call id and stream.
const STREAM_HEADER = 10;
// Body chunks this small are copied into one buffer with their header;
// larger ones are written beside it, uncopied.
const COPY_BELOW = 16 * 1024;

const fd = Number(process.env.THAW_FD ?? 3);
if (!Number.isInteger(fd) || fd < 0) die(`THAW_FD must be a file descriptor number, got ${JSON.stringify(process.env.THAW_FD)}`);

const channel = new net.Socket({ fd, readable: true, writable: true });

class FrameTooLargeError extends Error {}

// One message frame for an already-serialised JSON object.
function messageFrame(json) {
  const size = Buffer.byteLength(json);
  if (size > MAX_FRAME_BYTES) throw new FrameTooLargeError(`frame of ${size} bytes exceeds the 64 MiB limit`);
  const frame = Buffer.allocUnsafe(5 + size);
  frame.writeUInt32BE(size + 1, 0);
  frame[4] = KIND_MESSAGE;
  frame.write(json, 5, 'utf8');
  return frame;
}

function sendJson(json) {
  channel.write(messageFrame(json));
}

function send(message) {
  sendJson(JSON.stringify(message));
}

// The header of a frame about one stream of call `id`, with room for
// `extra` bytes after it in the same buffer.
function streamFrame(kind, id, stream, bodyLength, extra = 0) {
  const frame = Buffer.allocUnsafe(4 + STREAM_HEADER + extra);
  frame.writeUInt32BE(STREAM_HEADER + bodyLength, 0);
  frame[4] = kind;
  frame.writeUInt32BE(Math.floor(id / 0x1_0000_0000), 5);
  frame.writeUInt32BE(id % 0x1_0000_0000, 9);
  frame[13] = stream;
  return frame;
}

// Data frames for `bytes` (at most MAX_CHUNK), as buffers to write in order.
function dataFrames(id, bytes) {
  if (bytes.length < COPY_BELOW) {
    const frame = streamFrame(KIND_DATA, id, STREAM_RESPONSE, bytes.length, bytes.length);
    bytes.copy(frame, 4 + STREAM_HEADER);
    return [frame];
  }
  return [streamFrame(KIND_DATA, id, STREAM_RESPONSE, bytes.length), bytes];
}

function endFrame(id, stream) {
  return streamFrame(KIND_END, id, stream, 0);
}

function abortFrame(id, stream, reason) {
  let bytes = Buffer.from(String(reason));
  if (bytes.length > MAX_ABORT_REASON) bytes = Buffer.from(bytes.subarray(0, MAX_ABORT_REASON).toString('utf8').replace(/\uFFFD$/, ''));
  const frame = streamFrame(KIND_ABORT, id, stream, bytes.length, bytes.length);
  bytes.copy(frame, 4 + STREAM_HEADER);
  return frame;
}

function creditFrame(id, stream, bytes) {
  const frame = streamFrame(KIND_CREDIT, id, stream, 4, 4);
  frame.writeUInt32BE(bytes, 4 + STREAM_HEADER);
  return frame;
}

// Several frames in one write to the socket.
function sendFrames(frames) {
  if (frames.length === 1) {
    channel.write(frames[0]);
    return;
  }
  channel.cork();
  for (const frame of frames) channel.write(frame);
  channel.uncork();
}

// The bounds of each kind's length, checked before its bytes are awaited:
// the host is the only peer, but a stream that went wrong must end, not
// make the shim wait for gigabytes.
function checkLength(kind, length) {
  const bounds = {
    [KIND_MESSAGE]: [1, 1 + MAX_FRAME_BYTES],
    [KIND_DATA]: [STREAM_HEADER + 1, STREAM_HEADER + MAX_CHUNK],
    [KIND_END]: [STREAM_HEADER, STREAM_HEADER],
    [KIND_ABORT]: [STREAM_HEADER, STREAM_HEADER + MAX_ABORT_REASON],
    [KIND_CREDIT]: [STREAM_HEADER + 4, STREAM_HEADER + 4],
  }[kind];
  if (bounds === undefined) die(`the host sent a frame of unknown kind ${kind}; closing`);
  if (kind === KIND_MESSAGE && length > bounds[1]) die(`the host sent a message of ${length - 1} bytes, above the 64 MiB limit; closing`);
  if (length < bounds[0] || length > bounds[1]) die(`the host sent a frame of kind ${kind} and ${length} bytes, outside its bounds; closing`);
}

// Incoming bytes are collected as a list of chunks and only joined once a
// whole frame is present, so a large frame that arrives in many small reads
// is copied once rather than once per read.
let pendingChunks = [];
let pendingBytes = 0;
let bytesNeeded = 5;

function onChannelData(chunk) {
  pendingChunks.push(chunk);
  pendingBytes += chunk.length;
  if (pendingBytes < bytesNeeded) return;

  const data = pendingChunks.length === 1 ? pendingChunks[0] : Buffer.concat(pendingChunks, pendingBytes);
  let offset = 0;
  while (data.length - offset >= 5) {
    const length = data.readUInt32BE(offset);
    const kind = data[offset + 4];
    checkLength(kind, length);
    if (data.length - offset - 4 < length) break;
    const start = offset + 5;
    const end = offset + 4 + length;
    offset = end;
    if (kind === KIND_MESSAGE) {
      let message;
      try {
        message = JSON.parse(data.toString('utf8', start, end));
      } catch (err) {
        die(`the host sent a frame that is not JSON (${err.message}); closing`);
      }
      onMessage(message);
    } else {
      const id = data.readUInt32BE(start) * 0x1_0000_0000 + data.readUInt32BE(start + 4);
      onStreamFrame(kind, id, data[start + 8], data.subarray(start + 9, end));
    }
  }

  const rest = offset === data.length ? null : data.subarray(offset);
  pendingChunks = rest ? [rest] : [];
  pendingBytes = rest ? rest.length : 0;
  if (rest && rest.length >= 5) {
    checkLength(rest[4], rest.readUInt32BE(0));
    bytesNeeded = 4 + rest.readUInt32BE(0);
  } else {
    bytesNeeded = 5;
  }
}

// Body frames. A call's request body arrives on STREAM_REQUEST; credit for
// (and the host's abort of) its response body on STREAM_RESPONSE. Frames for
// a call the shim no longer tracks are late, and dropped.
function onStreamFrame(kind, id, stream, rest) {
  if (stream === STREAM_REQUEST) {
    const body = incomingBodies.get(id);
    if (body === undefined) return;
    if (kind === KIND_DATA) body.push(rest);
    else if (kind === KIND_END) body.finish(null);
    else if (kind === KIND_ABORT) body.finish(new Error(rest.toString('utf8') || 'the request body was cut short'));
    else die(`the host sent credit for the request body of call ${id}, which only the shim grants; closing`);
  } else if (stream === STREAM_RESPONSE) {
    const out = outgoingBodies.get(id);
    if (out === undefined) return;
    if (kind === KIND_CREDIT) out.grant(rest.readUInt32BE(0));
    else if (kind === KIND_ABORT) out.abort(rest.toString('utf8') || 'the host stopped the response');
    else die(`the host sent a body frame for the response of call ${id}, which only the shim sends; closing`);
  } else {
    die(`the host sent a frame for stream ${stream}, which protocol ${PROTOCOL_VERSION} does not have; closing`);
  }
}

// A request body as it arrives: read by the function at its pace, with the
// host granted credit as it is read, so that no more than a window waits
// here whatever the body's size.
class IncomingBody {
  constructor(id) {
    this.id = id;
    this.chunks = [];
    this.received = 0;
    this.granted = WINDOW;
    this.consumed = 0;
    this.ended = false;
    this.error = null;
    this.wake = null;
  }

  push(bytes) {
    if (this.ended) return;
    this.received += bytes.length;
    if (this.received > this.granted) die(`the host sent ${this.received} bytes of the request body of call ${this.id}, past its ${this.granted} bytes of credit; closing`);
    this.chunks.push(bytes);
    this.#wakeUp();
  }

  finish(error) {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    incomingBodies.delete(this.id);
    this.#wakeUp();
  }

  #wakeUp() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  // The next chunk, null at the end; throws when the body was cut short.
  async read() {
    while (this.chunks.length === 0) {
      if (this.ended) {
        if (this.error) throw this.error;
        return null;
      }
      await new Promise((resolve) => (this.wake = resolve));
    }
    const chunk = this.chunks.shift();
    this.consumed += chunk.length;
    const more = this.consumed + WINDOW - this.granted;
    if (!this.ended && more >= WINDOW / 4) {
      this.granted += more;
      channel.write(creditFrame(this.id, STREAM_REQUEST, more));
    }
    return chunk;
  }

  // The whole body when it has all arrived already, undefined otherwise.
  whole() {
    if (!this.ended || this.error !== null) return undefined;
    const chunks = this.chunks;
    this.chunks = [];
    return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
  }

  // All of it (for the styles that hand the handler a whole body).
  async buffer() {
    const chunks = [];
    let size = 0;
    for (let chunk = await this.read(); chunk !== null; chunk = await this.read()) {
      chunks.push(chunk);
      size += chunk.length;
    }
    return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
  }

  // The body as a web ReadableStream: pulled only as the function reads.
  stream() {
    return new ReadableStream(
      {
        pull: async (controller) => {
          const chunk = await this.read();
          if (chunk === null) controller.close();
          else controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length));
        },
        cancel: () => this.abandon('the function cancelled its request body'),
      },
      { highWaterMark: 0 },
    );
  }

  // The function wants no more of it: the host stops sending.
  abandon(reason) {
    if (this.ended) return;
    this.finish(null);
    this.chunks = [];
    channel.write(abortFrame(this.id, STREAM_REQUEST, reason));
  }
}

const incomingBodies = new Map(); // call id → IncomingBody

// A response body on its way out: sent only within the credit the host
// granted, so a slow client holds the function's writes back instead of
// filling memory on either side.
class OutgoingBody {
  constructor(id) {
    this.id = id;
    this.credit = WINDOW;
    this.aborted = null; // the host's reason, once it stopped the body
    this.wake = null;
    this.onAbort = null;
  }

  grant(bytes) {
    this.credit += bytes;
    if (this.credit > MAX_CREDIT) die(`the host granted ${this.credit} bytes of credit for call ${this.id}, past the bound; closing`);
    this.#wakeUp();
  }

  abort(reason) {
    if (this.aborted !== null) return;
    this.aborted = reason;
    outgoingBodies.delete(this.id);
    this.#wakeUp();
    this.onAbort?.(reason);
  }

  #wakeUp() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  // Sends `bytes` as credit allows; false once the host stopped the body.
  async write(bytes) {
    let offset = 0;
    while (offset < bytes.length) {
      while (this.credit === 0 && this.aborted === null) await new Promise((resolve) => (this.wake = resolve));
      if (this.aborted !== null) return false;
      const n = Math.min(bytes.length - offset, MAX_CHUNK, this.credit);
      sendFrames(dataFrames(this.id, bytes.subarray(offset, offset + n)));
      this.credit -= n;
      offset += n;
    }
    return this.aborted === null;
  }

  end() {
    outgoingBodies.delete(this.id);
    if (this.aborted === null) channel.write(endFrame(this.id, STREAM_RESPONSE));
  }

  fail(reason) {
    outgoingBodies.delete(this.id);
    if (this.aborted === null) channel.write(abortFrame(this.id, STREAM_RESPONSE, reason));
  }
}

const outgoingBodies = new Map(); // call id → OutgoingBody

channel.on('data', onChannelData);
// The host closing its end means the instance is being torn down.
channel.on('end', () => process.exit(0));
channel.on('error', (err) => die(`frame stream failed: ${err.message}`));

// ---------------------------------------------------------------------------
// Console capture. Every line the user's code prints becomes a `log` frame
// tagged with the invocation that printed it; nothing reaches the real fds 1
// and 2, which the host reads only when the process crashes.

const invocationScope = new AsyncLocalStorage();

function currentInvocationId() {
  return invocationScope.getStore() ?? null;
}

function sendLogLine(id, stream, line) {
  if (line.endsWith('\r')) line = line.slice(0, -1);
  if (line.length <= MAX_LOG_LINE_CHARS) {
    send({ type: 'log', id, stream, line });
    return;
  }
  for (let start = 0; start < line.length; start += MAX_LOG_LINE_CHARS) {
    send({ type: 'log', id, stream, line: line.slice(start, start + MAX_LOG_LINE_CHARS) });
  }
}

// Text written without a trailing newline is held per stream and invocation
// until the rest of its line arrives or the invocation ends, so that
// `process.stdout.write('a'); process.stdout.write('b\n')` is one line.
// Output with no running invocation behind it (module top level, a timer
// left behind by a finished invocation) has no end to wait for, so it is
// flushed on the next turn of the event loop instead.
const unfinishedLines = { stdout: new Map(), stderr: new Map() };
const runningInvocations = new Set();
const flushScheduled = new Set();

function holdUnfinished(stream, id, text) {
  const unfinished = unfinishedLines[stream];
  const held = (unfinished.get(id) ?? '') + text;
  if (held.length >= MAX_LOG_LINE_CHARS) {
    unfinished.delete(id);
    sendLogLine(id, stream, held);
    return;
  }
  unfinished.set(id, held);
  if (!runningInvocations.has(id) && !flushScheduled.has(id)) {
    flushScheduled.add(id);
    setImmediate(() => {
      flushScheduled.delete(id);
      if (!runningInvocations.has(id)) flushUnfinishedLines(id);
    });
  }
}

function captureText(stream, text) {
  const id = currentInvocationId();
  let newline = text.indexOf('\n');
  if (newline === -1) {
    if (text.length > 0) holdUnfinished(stream, id, text);
    return;
  }
  const unfinished = unfinishedLines[stream];
  let start = 0;
  const head = unfinished.get(id);
  if (head !== undefined) {
    unfinished.delete(id);
    sendLogLine(id, stream, head + text.slice(0, newline));
    start = newline + 1;
    newline = text.indexOf('\n', start);
  }
  while (newline !== -1) {
    sendLogLine(id, stream, text.slice(start, newline));
    start = newline + 1;
    newline = text.indexOf('\n', start);
  }
  if (start < text.length) holdUnfinished(stream, id, text.slice(start));
}

function flushUnfinishedLines(id) {
  for (const stream of ['stdout', 'stderr']) {
    const text = unfinishedLines[stream].get(id);
    if (text !== undefined) {
      unfinishedLines[stream].delete(id);
      sendLogLine(id, stream, text);
    }
  }
}

// Writes a multi-line text (typically an error stack) as log lines of the
// current invocation.
function logText(stream, text) {
  captureText(stream, text.endsWith('\n') ? text : `${text}\n`);
}

function chunkToText(chunk, encoding) {
  if (typeof chunk === 'string') {
    if (!encoding || encoding === 'utf8' || encoding === 'utf-8') return chunk;
    return Buffer.from(chunk, encoding).toString('utf8');
  }
  if (ArrayBuffer.isView(chunk)) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('utf8');
  return String(chunk);
}

function captureStreamWrites(stream, name) {
  stream.write = function write(chunk, encoding, callback) {
    if (typeof encoding === 'function') {
      callback = encoding;
      encoding = undefined;
    }
    captureText(name, chunkToText(chunk, encoding));
    if (typeof callback === 'function') process.nextTick(callback);
    return true;
  };
}

captureStreamWrites(process.stdout, 'stdout');
captureStreamWrites(process.stderr, 'stderr');

// Rather than re-implementing each console method, a Console bound to two
// capturing sinks does the formatting exactly as Node does (util.format for
// log/info/debug, stack for trace, indentation for group, tables, timers,
// counters), without colours. Its bound methods then replace the global ones.
{
  const sink = (name) => ({ write: (text) => (captureText(name, String(text)), true) });
  const capturing = new Console({ stdout: sink('stdout'), stderr: sink('stderr'), colorMode: false, ignoreErrors: false });
  for (const key of Object.keys(capturing)) {
    if (typeof capturing[key] === 'function' && typeof console[key] === 'function') console[key] = capturing[key];
  }
}

// ---------------------------------------------------------------------------
// Crashes. An exception nobody caught leaves the process in an unknown state,
// so the shim reports it and exits; the host treats the exit as a crash.

let crashing = false;

function onFatalError(err) {
  if (crashing) return;
  crashing = true;
  const text = describeThrown(err).stack;
  try {
    writeSync(2, `${text}\n`);
  } catch {
    // Still try the frame stream below.
  }
  // Exit once the log frame has left, or after a second if the stream is stuck.
  setTimeout(() => process.exit(1), 1000);
  try {
    for (const line of text.split('\n')) sendLogLine(null, 'stderr', line);
    channel.write(Buffer.alloc(0), () => process.exit(1));
  } catch {
    process.exit(1);
  }
}

process.on('uncaughtException', onFatalError);
process.on('unhandledRejection', onFatalError);

// ---------------------------------------------------------------------------
// Error values: anything can be thrown, not only Error objects.

function describeThrown(value) {
  if (value instanceof Error || (value !== null && typeof value === 'object' && typeof value.message === 'string')) {
    const name = typeof value.name === 'string' ? value.name : value.constructor?.name ?? 'Error';
    const message = String(value.message);
    const stack = typeof value.stack === 'string' ? value.stack : `${name}: ${message}`;
    return { name, message, stack };
  }
  const message = typeof value === 'string' ? value : safeInspect(value);
  return { name: 'Error', message, stack: `Error: ${message}` };
}

function safeInspect(value) {
  try {
    return typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}

// ---------------------------------------------------------------------------
// Message dispatch.

let initStarted = false;
let initDone = null; // promise: resolves to the style adapter, or rejects
let boundFunction = null;
let functionTimeoutMs = 0; // from init; a fallback deadline when an invoke has none
// Optional behaviours the host says it understands (init's `features`).
const hostFeatures = new Set();

function onMessage(message) {
  if (message === null || typeof message !== 'object') return;
  switch (message.type) {
    case 'init':
      onInit(message);
      break;
    case 'invoke':
      onInvoke(message);
      break;
    default:
      // Unknown message types are ignored so the host can add new ones.
      break;
  }
}

// ---------------------------------------------------------------------------
// init: bind the runtime to one function for the rest of its life.

function onInit(message) {
  if (initStarted) {
    const bound = boundFunction === null ? 'a function' : `function ${JSON.stringify(boundFunction)}`;
    send({ type: 'init_error', message: `this runtime is already bound to ${bound}; a runtime takes exactly one init` });
    return;
  }
  initStarted = true;
  boundFunction = typeof message.function === 'string' ? message.function : null;
  initDone = initialise(message);
  initDone.then(
    (adapter) => {
      flushUnfinishedLines(null);
      const reply = { type: 'init_ok', style: adapter.style };
      if (adapter.services) reply.services = adapter.services;
      send(reply);
    },
    (failure) => {
      flushUnfinishedLines(null);
      send({ type: 'init_error', message: failure.message, stack: failure.stack });
    },
  );
}

class InitFailure extends Error {
  constructor(message, stack) {
    super(message);
    this.stack = stack;
  }
}

async function initialise({ function: functionName, version, namespace, code_dir: codeDir, entry, env, timeout_ms: timeoutMs, memory_mb: memoryMb, features }) {
  if (typeof codeDir !== 'string' || typeof entry !== 'string') {
    throw new InitFailure('init needs string fields code_dir and entry');
  }
  if (Array.isArray(features)) for (const feature of features) if (typeof feature === 'string') hostFeatures.add(feature);
  if (env !== null && typeof env === 'object') {
    for (const [key, value] of Object.entries(env)) {
      if (typeof value === 'string') process.env[key] = value;
    }
  }
  const entryPath = path.resolve(codeDir, entry);
  let mod;
  const stopCapturing = captureScriptMain(entryPath);
  try {
    process.chdir(codeDir);
    mod = await import(pathToFileURL(entryPath).href);
  } catch (err) {
    throw await importFailure(err, entry, entryPath);
  } finally {
    stopCapturing();
  }
  if (Number.isFinite(timeoutMs)) functionTimeoutMs = timeoutMs;
  const fn = {
    name: typeof functionName === 'string' ? functionName : '',
    version: version === undefined || version === null ? '$LATEST' : String(version),
    memoryMb: memoryMb === undefined || memoryMb === null ? '' : String(memoryMb),
    // The host may name the function's namespace; until it does, thaw's
    // own default namespace is the right guess.
    namespace: typeof namespace === 'string' && namespace ? namespace : 'default',
  };
  return detectStyle(mod, entry, fn);
}

// OpenWhisk runs plain scripts: a file that declares `function main` at its
// top level without exporting it. Node runs a CommonJS file inside a module
// wrapper, so such a `main` is invisible from outside; while the entry loads,
// its source gets one line appended that hands a top-level `main` (or a
// global one, as bundles set with `global.main = main`) to the shim. Only
// the entry file is touched, only when Node loads it as CommonJS, and the
// line comes after the user's last line, so line numbers in stack traces do
// not move. Returns the function that undoes the hook.
const SCRIPT_MAIN = Symbol.for('thaw.scriptMain');

function captureScriptMain(entryPath) {
  const proto = Module.prototype;
  const original = proto._compile;
  if (typeof original !== 'function') return () => {};
  // Node names a CommonJS module by its real path.
  let realEntry = entryPath;
  try {
    realEntry = realpathSync(entryPath);
  } catch {
    // A missing entry fails the import with its own error.
  }
  const capturing = function _compile(content, filename, ...rest) {
    if ((filename === realEntry || filename === entryPath) && typeof content === 'string') {
      proto._compile = original;
      content = `${content}\n;try { if (typeof main === 'function') globalThis[Symbol.for('thaw.scriptMain')] = main; } catch {}\n`;
    }
    return original.call(this, content, filename, ...rest);
  };
  proto._compile = capturing;
  return () => {
    if (proto._compile === capturing) proto._compile = original;
  };
}

function takeScriptMain() {
  const main = globalThis[SCRIPT_MAIN];
  delete globalThis[SCRIPT_MAIN];
  return typeof main === 'function' ? main : null;
}

async function importFailure(err, entry, entryPath) {
  const thrown = describeThrown(err);
  const stackLines = thrown.stack.split('\n').slice(0, 12).join('\n');
  if (thrown.name !== 'SyntaxError') {
    return new InitFailure(`importing ${entry} failed: ${thrown.name}: ${thrown.message}`, stackLines);
  }
  // CommonJS syntax errors already start their stack with "file:line", the
  // source line and a caret. ES module syntax errors do not (Node keeps that
  // part hidden until the error is fatal), so it is worked out separately.
  let location = /^(\S[^\n]*:\d+)\n/.exec(thrown.stack) ? thrown.stack.split('\n\n')[0] : null;
  if (location === null && !thrown.message.includes('does not provide an export named')) {
    location = await locateModuleSyntaxError(entryPath);
  }
  if (location === null) {
    return new InitFailure(`${thrown.name} while importing ${entry}: ${thrown.message}`, stackLines);
  }
  const where = location.split('\n')[0].replace(/^file:\/\/\S+?(?=:\d+$)/, (url) => {
    try {
      return fileURLToPath(url);
    } catch {
      return url;
    }
  });
  const stack = stackLines.startsWith(location) ? stackLines : `${location}\n\n${stackLines}`;
  return new InitFailure(`${thrown.name} in ${where}: ${thrown.message}`, stack);
}

// Finds which ES module of the entry's static import graph fails to parse and
// returns Node's "file:line / source line / caret" block for it, or null.
// Runs in a child process because parsing a module without evaluating it needs
// `vm.SourceTextModule` (behind --experimental-vm-modules). Only ever used on
// the init failure path.
async function locateModuleSyntaxError(entryPath) {
  const { spawnSync } = await import('node:child_process');
  const child = spawnSync(
    process.execPath,
    ['--experimental-vm-modules', '--no-warnings', '--input-type=module', '--eval', `await (${findModuleSyntaxError})(${JSON.stringify(entryPath)})`],
    { encoding: 'utf8', timeout: 10_000, env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const block = child.stdout?.trim();
  return block ? block : null;
}

// Evaluated in the child started by locateModuleSyntaxError (passed as source
// text, so it must not use anything from this file's scope).
async function findModuleSyntaxError(entryPath) {
  const fs = await import('node:fs');
  const path = await import('node:path');
  const vm = await import('node:vm');
  const { spawnSync } = await import('node:child_process');
  const { createRequire } = await import('node:module');
  const { fileURLToPath, pathToFileURL } = await import('node:url');

  const packageTypes = new Map();
  function packageType(dir) {
    if (packageTypes.has(dir)) return packageTypes.get(dir);
    let type = null;
    try {
      type = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).type ?? 'commonjs';
    } catch (err) {
      const parent = path.dirname(dir);
      if (err.code === 'ENOENT' && parent !== dir) type = packageType(parent);
    }
    packageTypes.set(dir, type);
    return type;
  }

  // Mirrors how Node picks the module format, closely enough for diagnosis:
  // CommonJS files are skipped because Node reports their syntax errors with
  // a location already.
  function loadsAsModule(file, source) {
    if (file.endsWith('.mjs')) return true;
    if (!file.endsWith('.js')) return false;
    const type = packageType(path.dirname(file));
    if (type === 'module') return true;
    if (type === 'commonjs') return false;
    try {
      vm.compileFunction(source, ['exports', 'require', 'module', '__filename', '__dirname']);
      return false;
    } catch {
      return true;
    }
  }

  const seen = new Set([entryPath]);
  const queue = [entryPath];
  while (queue.length > 0 && seen.size < 2000) {
    const file = queue.shift();
    let source;
    try {
      source = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    if (!loadsAsModule(file, source)) continue;
    let mod;
    try {
      mod = new vm.SourceTextModule(source, { identifier: pathToFileURL(file).href });
    } catch (err) {
      if (!(err instanceof SyntaxError)) continue;
      // `node --check` prints the location; fed through stdin with
      // --input-type=module it parses the text as a module whatever the
      // file is called.
      const check = spawnSync(process.execPath, ['--check', '--input-type=module'], { input: source, encoding: 'utf8' });
      const block = check.status !== 0 ? check.stderr.split('\n\n')[0] : '';
      if (block.startsWith('[stdin]:')) {
        process.stdout.write(file + block.slice('[stdin]'.length));
        return;
      }
      continue;
    }
    const require = createRequire(file);
    for (const specifier of mod.dependencySpecifiers) {
      let resolved = null;
      try {
        if (/^\.{0,2}\//.test(specifier) || specifier.startsWith('file:')) {
          resolved = fileURLToPath(new URL(specifier, pathToFileURL(file)));
        } else if (!specifier.startsWith('node:')) {
          resolved = require.resolve(specifier);
        }
      } catch {
        continue;
      }
      if (resolved && path.isAbsolute(resolved) && !seen.has(resolved)) {
        seen.add(resolved);
        queue.push(resolved);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Handler style detection, in the order docs/protocol.md gives.

function isClass(value) {
  return typeof value === 'function' && /^class[\s{]/.test(Function.prototype.toString.call(value));
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function detectStyle(mod, entry, fn) {
  // A CommonJS module's `module.exports` arrives as the default export; Node
  // only lifts the names it can see statically into named exports, so the
  // default object is searched too.
  const fallback = mod.default !== null && (typeof mod.default === 'object' || typeof mod.default === 'function') ? mod.default : null;
  const scriptMain = takeScriptMain();

  const handler = typeof mod.handler === 'function' ? mod.handler : typeof fallback?.handler === 'function' ? fallback.handler : null;
  if (handler) return lambdaAdapter(handler, fn);

  // A Worker with only `scheduled` (a cron job) is fetch style too.
  if (fallback && (typeof fallback.fetch === 'function' || typeof fallback.scheduled === 'function')) return fetchAdapter(fallback, fn);

  const main = typeof mod.main === 'function' ? mod.main : typeof fallback?.main === 'function' ? fallback.main : null;
  if (main) return openwhiskAdapter(main, fn);

  const classes = new Map();
  for (const key of Object.keys(mod)) {
    if (key !== 'default' && isClass(mod[key])) classes.set(key, mod[key]);
  }
  if (isClass(fallback)) {
    // `export default class Name {}`: served under its own name.
    if (fallback.name && !classes.has(fallback.name)) classes.set(fallback.name, fallback);
  } else if (fallback) {
    for (const key of Object.keys(fallback)) {
      if (!classes.has(key) && isClass(fallback[key])) classes.set(key, fallback[key]);
    }
  }
  if (classes.size > 0) return classAdapter(classes);

  // OpenWhisk scripts and bundles: a `main` declared at the top level of a
  // CommonJS entry that exports nothing (see captureScriptMain), or one the
  // code put on the global object (`global.main = main`).
  const globalMain = scriptMain ?? (typeof globalThis.main === 'function' ? globalThis.main : null);
  if (globalMain) return openwhiskAdapter(globalMain, fn);

  throw new InitFailure(
    `${entry} has no handler thaw recognises: it exports ${describeExports(mod)}; expected one of ` +
      'a "handler" function (Lambda style), a default export with a "fetch" or "scheduled" method (fetch style), ' +
      'a "main" function (OpenWhisk style, exported, declared at the top level of a script, or set as global.main), ' +
      'or one or more exported classes (class style)',
  );
}

function describeExports(mod) {
  const names = Object.keys(mod).map((key) => {
    const value = mod[key];
    if (key === 'default' && value !== null && typeof value === 'object') {
      const inner = Object.keys(value).map((k) => `${k} (${typeof value[k]})`);
      return `default (object with ${inner.length ? inner.join(', ') : 'no properties'})`;
    }
    return `${key} (${isClass(value) ? 'class' : typeof value})`;
  });
  return names.length ? names.join(', ') : 'nothing';
}

// ---------------------------------------------------------------------------
// invoke

function onInvoke(message) {
  const { id } = message;
  // A request's body frames follow its invoke at once: what receives them
  // must exist before this returns.
  const incoming = message.request !== undefined && message.request !== null && Number.isSafeInteger(id) ? new IncomingBody(id) : null;
  if (incoming) incomingBodies.set(id, incoming);
  if (!initStarted) {
    incoming?.abandon('the runtime cannot run the call');
    send({ type: 'error', id, name: 'Error', message: 'invoke received before init; send init first' });
    return;
  }
  // An invoke that arrives while init is still importing waits for it.
  initDone.then(
    (adapter) => invocationScope.run(id, () => runInvocation(adapter, message, incoming)),
    () => {
      incoming?.abandon('the runtime cannot run the call');
      send({ type: 'error', id, name: 'Error', message: 'this runtime failed to initialise and cannot run invocations' });
    },
  );
}

async function runInvocation(adapter, message, incoming) {
  const { id } = message;
  runningInvocations.add(id);
  const invocation = {
    id,
    deadline: Number.isFinite(message.deadline_ms) ? message.deadline_ms : Date.now() + functionTimeoutMs,
    // Promises the call asked to outlive its response (fetch's ctx.waitUntil).
    background: [],
    // The handler asked that a failure of this call not be retried
    // (a scheduled fetch handler's controller.noRetry()).
    noRetry: false,
  };
  let response;
  try {
    if (incoming !== null) {
      const request = normaliseRequest(message.request, incoming);
      // Only the fetch style reads a body as a stream; the others are given
      // it whole, as their platforms do.
      if (adapter.style !== 'fetch') request.body = await incoming.buffer();
      response = await adapter.http(request, invocation);
    } else if (Object.hasOwn(message, 'event')) {
      response = await adapter.event(message.event, invocation);
    } else if (message.scheduled !== undefined && message.scheduled !== null) {
      response = await adapter.scheduled(normaliseSchedule(message.scheduled, id), invocation);
    } else {
      throw new TypeError('invoke needs a "request", an "event" or a "scheduled" field');
    }
    checkStatus(response.status);
  } catch (err) {
    const background = invocation.background.length > 0;
    const { name, message: text, stack } = describeThrown(err);
    endInvocation(id, incoming);
    send({ type: 'error', id, name, message: text, stack, ...(background ? { background } : {}), ...(invocation.noRetry ? { no_retry: true } : {}) });
    if (background) await finishBackground(invocation);
    return;
  }
  // What the call handed to waitUntil by the time its head leaves.
  const background = invocation.background.length > 0;
  await sendResponse(id, response, background, incoming);
  if (background) await finishBackground(invocation);
}

// The call's own lines are flushed before what ends it leaves, so that none
// of them follows its answer; a request body the function left unread is
// refused, so that the host stops sending it.
function endInvocation(id, incoming) {
  runningInvocations.delete(id);
  flushUnfinishedLines(id);
  incoming?.abandon('the function answered without reading all of its request body');
}

function checkStatus(status) {
  if (!Number.isInteger(status) || status < 100 || status > 599) {
    throw new RangeError(`the handler answered with status ${safeInspect(status)}; a status must be an integer from 100 to 599`);
  }
}

// The `result` frame: the head of the response. Built by hand to skip
// JSON.stringify's walk of an object on the hot path.
function resultJson(id, status, headers, background) {
  const pairs = headers.map(([name, value]) => [String(name).toLowerCase(), String(value)]);
  const more = background ? ',"background":true' : '';
  return `{"type":"result","id":${JSON.stringify(id ?? null)},"status":${status},"headers":${JSON.stringify(pairs)}${more}}`;
}

// Sends a response: its head, then its body as data frames within the
// host's credit, then its end. A whole body that fits the first window
// leaves with its head in one write; a streamed one leaves chunk by chunk
// as the function produces it, and a failure mid-way aborts it (the client
// sees the response cut short; the error goes to the function's log).
async function sendResponse(id, { status, headers, body }, background, incoming) {
  let head;
  try {
    head = messageFrame(resultJson(id, status, headers, background));
  } catch (err) {
    if (!(err instanceof FrameTooLargeError)) throw err;
    endInvocation(id, incoming);
    send({ type: 'error', id, name: 'RangeError', message: `the response head is too large to send: ${err.message}` });
    return;
  }
  const out = new OutgoingBody(id);
  outgoingBodies.set(id, out);
  if (Buffer.isBuffer(body) && body.length <= WINDOW) {
    endInvocation(id, incoming);
    const frames = [head];
    for (let offset = 0; offset < body.length; offset += MAX_CHUNK) frames.push(...dataFrames(id, body.subarray(offset, offset + MAX_CHUNK)));
    frames.push(endFrame(id, STREAM_RESPONSE));
    out.credit -= body.length;
    outgoingBodies.delete(id);
    sendFrames(frames);
    return;
  }
  // The head waits for the rest of this turn of the event loop, so that a
  // body that is ready at once (a Response built from a string) leaves in
  // the same write; a stream that takes its time starts with its head.
  channel.cork();
  channel.write(head);
  setImmediate(() => channel.uncork());
  const source = bodySource(body);
  // What the function does when told (a stream's cancel) is its call's.
  out.onAbort = (reason) => invocationScope.run(id, () => source.cancel(reason));
  try {
    for (let chunk = await source.next(); chunk !== null; chunk = await source.next()) {
      if (chunk.length > 0 && !(await out.write(chunk))) break;
    }
    endInvocation(id, incoming);
    out.end();
  } catch (err) {
    const thrown = describeThrown(err);
    if (out.aborted === null) logText('stderr', thrown.stack);
    endInvocation(id, incoming);
    out.fail(`${thrown.name}: ${thrown.message}`);
    source.cancel(thrown.message);
  }
}

// A body to send, as `next()` (a Buffer, or null at its end) and
// `cancel(reason)`: a whole Buffer, a web ReadableStream, or a source that
// already has that shape (Lambda's response stream).
function bodySource(body) {
  if (Buffer.isBuffer(body)) {
    let sent = false;
    return {
      next: async () => (sent ? null : ((sent = true), body)),
      cancel() {},
    };
  }
  if (body instanceof ReadableStream) {
    const reader = body.getReader();
    return {
      async next() {
        const { done, value } = await reader.read();
        return done ? null : chunkBytes(value);
      },
      cancel: (reason) => reader.cancel(reason).catch(() => {}),
    };
  }
  return body;
}

function chunkBytes(value) {
  if (Buffer.isBuffer(value)) return value;
  if (ArrayBuffer.isView(value)) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  if (typeof value === 'string') return Buffer.from(value);
  throw new TypeError(`a response body chunk must be a Uint8Array, an ArrayBuffer or a string, got ${value === null ? 'null' : typeof value}`);
}

// Work after the response. The answer has gone; what the call handed to
// waitUntil keeps running, for at most BACKGROUND_LIMIT_MS after the
// response (Cloudflare's bound), and may itself add more work. The result
// frame said `"background": true`; when the work has ended (or the bound
// has passed) a host that announced the `background_done` feature at init
// gets a frame saying so, and may pause or stop the instance from then on.
// Older hosts ignore the unknown result field and get no new frame (a frame
// type they do not know would break their stream).
const BACKGROUND_LIMIT_MS = 30_000;

async function finishBackground(invocation) {
  let timer;
  const limit = new Promise((resolve) => {
    timer = setTimeout(resolve, BACKGROUND_LIMIT_MS, 'limit');
  });
  let timedOut = false;
  for (let seen = 0; seen < invocation.background.length; ) {
    const batch = invocation.background.slice(seen);
    seen = invocation.background.length;
    if ((await Promise.race([Promise.allSettled(batch), limit])) === 'limit') {
      timedOut = true;
      break;
    }
  }
  clearTimeout(timer);
  if (timedOut) {
    logText('stderr', `thaw: waitUntil work still running ${BACKGROUND_LIMIT_MS / 1000} s after the response; it is no longer waited for`);
  }
  flushUnfinishedLines(invocation.id);
  if (hostFeatures.has('background_done')) send({ type: 'background_done', id: invocation.id, timed_out: timedOut });
}

const EMPTY_BODY = Buffer.alloc(0);

// The furthest a JavaScript Date reaches from 1970, either way.
const MAX_DATE_MS = 8.64e15;

// The `scheduled` payload of an invoke (docs/protocol.md), as the adapters
// read it. The name and the time are what every style needs, so a host
// that leaves them out gets a clear error rather than a made-up value.
function normaliseSchedule(scheduled, id) {
  if (!isPlainObject(scheduled) || typeof scheduled.schedule !== 'string' || !Number.isFinite(scheduled.scheduled_time_ms) || Math.abs(scheduled.scheduled_time_ms) > MAX_DATE_MS) {
    throw new TypeError('an invoke\'s "scheduled" field must be an object with a string "schedule" and a number "scheduled_time_ms"');
  }
  return {
    name: scheduled.schedule,
    cron: typeof scheduled.cron === 'string' ? scheduled.cron : '',
    scheduledTime: scheduled.scheduled_time_ms,
    invocationId: typeof scheduled.invocation === 'string' && scheduled.invocation ? scheduled.invocation : String(id),
    method: typeof scheduled.method === 'string' && scheduled.method ? scheduled.method : null,
    // null and absent are the same: no payload.
    payload: scheduled.payload === null ? undefined : scheduled.payload,
  };
}

// The request's head as the adapters read it; its body is `incoming`, read
// as a stream (fetch) or whole (the other styles, into `body`).
function normaliseRequest(request, incoming) {
  return {
    method: typeof request.method === 'string' ? request.method.toUpperCase() : 'GET',
    path: typeof request.path === 'string' && request.path.startsWith('/') ? request.path : `/${request.path ?? ''}`,
    query: typeof request.query === 'string' ? request.query : '',
    headers: Array.isArray(request.headers) ? request.headers.map(([name, value]) => [String(name).toLowerCase(), String(value)]) : [],
    body: EMPTY_BODY,
    incoming,
    sourceIp: typeof request.source_ip === 'string' ? request.source_ip : '',
    host: typeof request.host === 'string' && request.host ? request.host : 'localhost',
  };
}

function headerValue(request, name) {
  for (const [key, value] of request.headers) if (key === name) return value;
  return undefined;
}

// Content types whose bodies are handed to the handler as text, as AWS does
// for function URLs.
function isTextualContentType(contentType) {
  if (!contentType) return false;
  const type = contentType.split(';', 1)[0].trim().toLowerCase();
  return (
    type.startsWith('text/') ||
    type === 'application/json' ||
    type.endsWith('+json') ||
    type === 'application/xml' ||
    type.endsWith('+xml') ||
    type === 'application/javascript' ||
    type === 'application/x-www-form-urlencoded'
  );
}

function bodyIsText(request) {
  return isTextualContentType(headerValue(request, 'content-type')) && isUtf8(request.body);
}

// Assigns a key that comes from the request (header or parameter name)
// without letting "__proto__" replace the object's prototype.
function setOwn(object, key, value) {
  if (key === '__proto__') Object.defineProperty(object, key, { value, writable: true, enumerable: true, configurable: true });
  else object[key] = value;
}

// Header list → object, repeated names joined with "," as AWS does.
function headersObject(request, skip) {
  const headers = {};
  for (const [name, value] of request.headers) {
    if (name === skip) continue;
    setOwn(headers, name, Object.hasOwn(headers, name) ? `${headers[name]},${value}` : value);
  }
  return headers;
}

function jsonResponse(status, json, extraHeaders = []) {
  return {
    status,
    headers: [['content-type', 'application/json'], ...extraHeaders],
    body: json === undefined ? EMPTY_BODY : Buffer.from(json),
  };
}

// The answer to an event or a scheduled call: what the handler returned, as
// a 200 JSON body (`null` when it returned nothing).
function valueResponse(value) {
  return jsonResponse(200, JSON.stringify(value === undefined ? null : value));
}

// Turns any body value a handler may give into bytes.
function bodyBytes(body, base64) {
  if (body === undefined || body === null) return EMPTY_BODY;
  if (typeof body === 'string') return Buffer.from(body, base64 ? 'base64' : 'utf8');
  if (Buffer.isBuffer(body)) return body;
  if (ArrayBuffer.isView(body)) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  return Buffer.from(JSON.stringify(body) ?? '');
}

// Header object (value or array of values) → [name, value] pairs.
function pushHeaderObject(pairs, headers) {
  if (!isPlainObject(headers)) return;
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || value === null) continue;
    if (Array.isArray(value)) for (const item of value) pairs.push([name, String(item)]);
    else pairs.push([name, String(value)]);
  }
}

function statusNumber(value, fallback) {
  if (value === undefined || value === null) return fallback;
  return typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
}

// ---------------------------------------------------------------------------
// Lambda style: handler(event, context[, callback]).

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

// The API Gateway / function URL time format: "12/Mar/2020:19:03:58 +0000".
function formatRequestTime(date) {
  const two = (n) => String(n).padStart(2, '0');
  return (
    `${two(date.getUTCDate())}/${MONTHS[date.getUTCMonth()]}/${date.getUTCFullYear()}:` +
    `${two(date.getUTCHours())}:${two(date.getUTCMinutes())}:${two(date.getUTCSeconds())} +0000`
  );
}

// "The event loop is empty", for one invocation of a shared runtime. AWS
// waits for the whole process to go idle; here other invocations (and
// timers left by earlier ones) share the loop, so what counts is what this
// invocation started: every timer, immediate, socket, server, child process
// and pending I/O request created inside its AsyncLocalStorage scope, as an
// async hook sees them being created and destroyed. Handles and timers that
// were unref()'d do not count, as they would not keep Node running either
// (an idle keep-alive socket of http.Agent or fetch is unref()'d). Pending
// promises do not count: a promise alone does not keep a process alive.
//
// The hook is enabled only while at least one invocation is tracked (a
// handler not declared `async` is running, or a callback waits), so calls
// that never wait pay nothing for it.
const LOOP_REQUEST_TYPES = new Set([
  'FSREQCALLBACK',
  'FSREQPROMISE',
  'FILEHANDLECLOSEREQ',
  'GETADDRINFOREQWRAP',
  'GETNAMEINFOREQWRAP',
  'QUERYWRAP',
  'TCPCONNECTWRAP',
  'PIPECONNECTWRAP',
  'SHUTDOWNWRAP',
  'WRITEWRAP',
  'UDPSENDWRAP',
]);
// Unref() leaves no trace an async hook sees, so a waiting invocation is
// also looked at on this period.
const LOOP_POLL_MS = 50;
// Connections outlive the call that opened them: an http.Agent or fetch
// keeps its idle sockets (unref()'d) for the next call. A tracked call that
// ends leaves its open sockets here (weakly held); a later call counts one
// of them as its own work while it is ref()'d again, provided it was idle
// when that call started (so a busy one belongs to someone else).
const SHARED_HANDLE_TYPES = new Set(['TCPWRAP', 'PIPEWRAP']);
const MAX_SHARED_HANDLES = 4096;
const sharedHandles = new Set(); // WeakRef of handle

const loopTrackers = new Map(); // invocation id → tracker
const trackedResources = new Map(); // async id → tracker
let loopHook = null;
let loopPoll = null;
let loopCheckScheduled = false;
let shimScheduling = false; // the shim's own timers are nobody's work

function keepsLoopAlive(type, resource) {
  if (typeof resource?.hasRef === 'function') return true;
  // Crypto jobs (PBKDF2REQUEST, ...) are libuv work too; HTTPCLIENTREQUEST
  // is a JavaScript-level resource that only goes away with its object.
  return LOOP_REQUEST_TYPES.has(type) || (type.endsWith('REQUEST') && type !== 'HTTPCLIENTREQUEST');
}

function onResourceInit(asyncId, type, _trigger, resource) {
  if (type === 'PROMISE' || shimScheduling) return;
  const id = invocationScope.getStore();
  if (id === undefined) return;
  const tracker = loopTrackers.get(id);
  if (tracker === undefined || !keepsLoopAlive(type, resource)) return;
  tracker.resources.set(asyncId, resource);
  if (SHARED_HANDLE_TYPES.has(type)) tracker.handles.add(asyncId);
  trackedResources.set(asyncId, tracker);
}

function onResourceDestroy(asyncId) {
  const tracker = trackedResources.get(asyncId);
  if (tracker === undefined) return;
  trackedResources.delete(asyncId);
  tracker.resources.delete(asyncId);
  tracker.handles.delete(asyncId);
  if (tracker.onEmpty !== null) scheduleLoopCheck();
}

function isBusy(tracker) {
  for (const resource of tracker.resources.values()) {
    if (typeof resource.hasRef !== 'function' || resource.hasRef()) return true;
  }
  for (const ref of tracker.idleShared) {
    if (ref.deref()?.hasRef() === true) return true;
  }
  return false;
}

// Checks run from an immediate of their own, after the callback that
// destroyed the last resource (or reported the answer) has returned.
function scheduleLoopCheck() {
  if (loopCheckScheduled) return;
  loopCheckScheduled = true;
  shimScheduling = true;
  try {
    setImmediate(checkLoops);
  } finally {
    shimScheduling = false;
  }
}

function checkLoops() {
  loopCheckScheduled = false;
  for (const tracker of [...loopTrackers.values()]) {
    if (tracker.onEmpty !== null && !isBusy(tracker)) tracker.onEmpty();
  }
}

function startLoopTracking(id) {
  const idleShared = [];
  for (const ref of sharedHandles) {
    const handle = ref.deref();
    if (handle === undefined) sharedHandles.delete(ref);
    else if (!handle.hasRef()) idleShared.push(ref);
  }
  const tracker = {
    resources: new Map(), // async id → resource
    handles: new Set(), // async ids of its sockets
    idleShared,
    onEmpty: null,
    // Runs `then` once nothing this invocation started keeps the loop busy.
    whenEmpty(then) {
      tracker.onEmpty = () => {
        tracker.stop();
        then();
      };
      if (loopPoll === null) {
        shimScheduling = true;
        try {
          loopPoll = setInterval(checkLoops, LOOP_POLL_MS);
        } finally {
          shimScheduling = false;
        }
      }
      scheduleLoopCheck();
    },
    stop() {
      if (loopTrackers.get(id) !== tracker) return;
      loopTrackers.delete(id);
      for (const asyncId of tracker.handles) {
        if (sharedHandles.size < MAX_SHARED_HANDLES) sharedHandles.add(new WeakRef(tracker.resources.get(asyncId)));
      }
      for (const asyncId of tracker.resources.keys()) trackedResources.delete(asyncId);
      tracker.resources.clear();
      tracker.onEmpty = null;
      if (![...loopTrackers.values()].some((t) => t.onEmpty !== null) && loopPoll !== null) {
        clearInterval(loopPoll);
        loopPoll = null;
      }
      if (loopTrackers.size === 0) loopHook.disable();
    },
  };
  loopTrackers.get(id)?.stop();
  loopTrackers.set(id, tracker);
  loopHook ??= createHook({ init: onResourceInit, destroy: onResourceDestroy });
  if (loopTrackers.size === 1) loopHook.enable();
  return tracker;
}

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function';
}

function lambdaAdapter(handler, fn) {
  // A handler declared `async` always answers with its promise, so the
  // event-loop rule below never applies to it and it pays nothing for it.
  const isAsyncFunction = Object.prototype.toString.call(handler) === '[object AsyncFunction]';
  // AWS ignores what a handler that declares the callback returns (unless
  // it is a promise). A plain two-parameter function's return value is its
  // answer, as thaw has always done.
  const declaresCallback = handler.length >= 3;

  function context(invocation) {
    return {
      functionName: fn.name,
      functionVersion: fn.version,
      awsRequestId: String(invocation.id),
      memoryLimitInMB: fn.memoryMb,
      callbackWaitsForEmptyEventLoop: true,
      getRemainingTimeInMillis: () => Math.max(0, invocation.deadline - Date.now()),
    };
  }

  // Settles with the handler's answer, as AWS's Node runtime decides it:
  // - the first of callback, context.succeed/fail/done and the returned
  //   promise to report wins; later reports are ignored;
  // - context.succeed(result), context.done(null, result): answer now;
  //   context.fail(err), context.done(err): fail now (fail() with no error
  //   fails with "handled");
  // - callback(err): fail now; callback(null, result): answer once the
  //   invocation's event loop is empty (see startLoopTracking), or now when
  //   context.callbackWaitsForEmptyEventLoop was false at the call;
  // - a returned promise: answer or fail when it settles, no waiting;
  // - nothing reported when the handler returns: wait for a report; a
  //   handler without the callback parameter also ends, with no value, once
  //   its event loop is empty (thaw's answer for a plain function that
  //   returns nothing).
  // The bound on all waiting is the function's timeout: past it the host
  // ends the call with 504, as AWS reports "Task timed out".
  function call(event, invocation) {
    return new Promise((resolve, reject) => {
      let reported = false;
      let tracker = null;
      const end = (ok, value) => {
        tracker?.stop();
        if (ok) resolve(value);
        else reject(value);
      };
      const done = (err, result) => {
        if (reported) return;
        reported = true;
        if (err !== undefined && err !== null) end(false, err);
        else end(true, result);
      };
      const fail = (err) => done(err === undefined || err === null ? 'handled' : err);
      const callback = (err, result) => {
        if (reported) return;
        if ((err !== undefined && err !== null) || tracker === null || ctx.callbackWaitsForEmptyEventLoop === false) {
          done(err, result);
          return;
        }
        reported = true;
        tracker.whenEmpty(() => end(true, result));
      };
      const ctx = context(invocation);
      ctx.succeed = (result) => done(null, result);
      ctx.fail = fail;
      ctx.done = done;

      if (!isAsyncFunction) tracker = startLoopTracking(invocation.id);
      let returned;
      try {
        returned = handler(event, ctx, callback);
      } catch (err) {
        fail(err);
        return;
      }
      if (isThenable(returned)) {
        if (!reported) {
          tracker?.stop();
          tracker = null;
        }
        Promise.resolve(returned).then((value) => done(null, value), fail);
        return;
      }
      if (reported) return;
      if (!declaresCallback && returned !== undefined) {
        done(null, returned);
        return;
      }
      if (tracker === null) {
        done(null, undefined);
        return;
      }
      // A handler that declares the callback is waited for until it reports
      // (AWS would also answer null once the whole process went idle; a
      // connection shared with an earlier call could make that look true
      // too early here, so only the report, or the timeout, ends it).
      if (declaresCallback) return;
      tracker.whenEmpty(() => {
        if (reported) return;
        reported = true;
        end(true, undefined);
      });
    });
  }

  // Function URL event, payload format 2.0.
  function httpEvent(request, invocation) {
    const cookies = [];
    for (const [name, value] of request.headers) {
      if (name !== 'cookie') continue;
      for (const cookie of value.split(';')) {
        const trimmed = cookie.trim();
        if (trimmed) cookies.push(trimmed);
      }
    }
    const headers = headersObject(request, 'cookie');
    const now = new Date();
    const domainName = request.host;
    const event = {
      version: '2.0',
      routeKey: '$default',
      rawPath: request.path,
      rawQueryString: request.query,
    };
    if (cookies.length > 0) event.cookies = cookies;
    event.headers = headers;
    if (request.query) {
      const parameters = {};
      for (const [key, value] of new URLSearchParams(request.query)) {
        setOwn(parameters, key, Object.hasOwn(parameters, key) ? `${parameters[key]},${value}` : value);
      }
      event.queryStringParameters = parameters;
    }
    event.requestContext = {
      accountId: 'anonymous',
      apiId: fn.name,
      domainName,
      domainPrefix: domainName.split('.', 1)[0].replace(/:\d+$/, ''),
      http: {
        method: request.method,
        path: request.path,
        protocol: 'HTTP/1.1',
        sourceIp: request.sourceIp,
        userAgent: headers['user-agent'] ?? '',
      },
      requestId: String(invocation.id),
      routeKey: '$default',
      stage: '$default',
      time: formatRequestTime(now),
      timeEpoch: now.getTime(),
    };
    if (request.body.length > 0) {
      const text = bodyIsText(request);
      event.body = request.body.toString(text ? 'utf8' : 'base64');
      event.isBase64Encoded = !text;
    } else {
      event.isBase64Encoded = false;
    }
    return event;
  }

  // A `statusCode` result describes the response; anything else is the body.
  function httpResponse(value) {
    if (!isPlainObject(value) || !('statusCode' in value)) {
      return jsonResponse(200, value === undefined ? undefined : JSON.stringify(value));
    }
    const headers = [];
    pushHeaderObject(headers, value.headers);
    pushHeaderObject(headers, value.multiValueHeaders);
    if (Array.isArray(value.cookies)) for (const cookie of value.cookies) headers.push(['set-cookie', String(cookie)]);
    return { status: statusNumber(value.statusCode, 200), headers, body: bodyBytes(value.body, value.isBase64Encoded === true) };
  }

  // What an EventBridge rule on a schedule delivers, with thaw's names
  // where AWS has an account, a region and the rule's ARN.
  function scheduledEvent(schedule) {
    return {
      version: '0',
      id: schedule.invocationId,
      'detail-type': 'Scheduled Event',
      source: 'aws.events',
      account: fn.namespace,
      // EventBridge gives the time to the second.
      time: new Date(schedule.scheduledTime).toISOString().replace(/\.\d+Z$/, 'Z'),
      region: 'thaw',
      resources: [`thaw:schedule/${fn.namespace}/${fn.name}/${schedule.name}`],
      detail: schedule.payload === undefined ? {} : schedule.payload,
    };
  }

  // awslambda.streamifyResponse(handler): called as
  // handler(event, responseStream, context); the answer is what it writes.
  if (handler[HANDLER_STREAMING] === STREAMING_MODE_RESPONSE) {
    const highWaterMark = Number.isSafeInteger(handler[HANDLER_HIGH_WATER_MARK]) ? handler[HANDLER_HIGH_WATER_MARK] : undefined;
    const streamed = (event, invocation) => callStreaming(handler, event, context(invocation), highWaterMark);
    return {
      style: 'lambda',
      http: (request, invocation) => streamed(httpEvent(request, invocation), invocation),
      event: streamed,
      scheduled: (schedule, invocation) => streamed(scheduledEvent(schedule), invocation),
    };
  }

  return {
    style: 'lambda',
    async http(request, invocation) {
      return httpResponse(await call(httpEvent(request, invocation), invocation));
    },
    async event(event, invocation) {
      return valueResponse(await call(event, invocation));
    },
    async scheduled(schedule, invocation) {
      return valueResponse(await call(scheduledEvent(schedule), invocation));
    },
  };
}

// ---------------------------------------------------------------------------
// Lambda response streaming, as AWS's Node runtimes provide it: the global
// `awslambda.streamifyResponse(handler)` marks a handler as streaming, and
// `awslambda.HttpResponseStream.from(stream, {statusCode, headers, cookies})`
// makes what the handler writes start with the HTTP metadata prelude (JSON,
// then 8 NUL bytes) that a function URL turns into the status and headers.
// Without the prelude a streamed answer is a 200 of the content type given
// with setContentType (application/octet-stream by default).

const HANDLER_STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const HANDLER_HIGH_WATER_MARK = Symbol.for('aws.lambda.runtime.handler.streaming.highWaterMark');
const STREAMING_MODE_RESPONSE = 'response';
const PRELUDE_CONTENT_TYPE = 'application/vnd.awslambda.http-integration-response';
const PRELUDE_DELIMITER = Buffer.alloc(8);
// A prelude is a few headers; one this long without its delimiter is a
// mistake, not a prelude.
const MAX_PRELUDE_BYTES = 64 * 1024;

globalThis.awslambda = {
  streamifyResponse(handler, options) {
    if (typeof handler !== 'function') throw new TypeError('awslambda.streamifyResponse takes the handler function');
    handler[HANDLER_STREAMING] = STREAMING_MODE_RESPONSE;
    if (Number.isSafeInteger(options?.highWaterMark)) handler[HANDLER_HIGH_WATER_MARK] = options.highWaterMark;
    return handler;
  },
  HttpResponseStream: class HttpResponseStream {
    static from(stream, prelude) {
      stream.setContentType(PRELUDE_CONTENT_TYPE);
      const json = JSON.stringify(prelude ?? {});
      stream._onBeforeFirstWrite = (write) => {
        write(json);
        write(PRELUDE_DELIMITER);
      };
      return stream;
    }
  },
};

// The head a prelude describes, as AWS's function URLs read it.
function preludeHead(bytes) {
  let prelude;
  try {
    prelude = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new TypeError(`the response stream's HTTP prelude is not JSON: ${err.message}`);
  }
  if (!isPlainObject(prelude)) throw new TypeError('the response stream\'s HTTP prelude must be a JSON object');
  const headers = [];
  pushHeaderObject(headers, prelude.headers);
  pushHeaderObject(headers, prelude.multiValueHeaders);
  if (Array.isArray(prelude.cookies)) for (const cookie of prelude.cookies) headers.push(['set-cookie', String(cookie)]);
  return { status: statusNumber(prelude.statusCode, 200), headers };
}

// Runs a streaming handler. Resolves with the response once its head is
// known (the first bytes after the prelude, or the end), its body a source
// (see bodySource) that takes each write as the host's credit allows: a
// write's callback runs only once its bytes have left, which is the
// backpressure a Node Writable gives its writer.
function callStreaming(handler, event, ctx, highWaterMark) {
  let resolveHead;
  let rejectHead;
  const head = new Promise((resolve, reject) => {
    resolveHead = resolve;
    rejectHead = reject;
  });
  let headSent = false;
  let contentType = 'application/octet-stream';
  let prelude = null; // bytes of a prelude still being read
  const queue = []; // [bytes, callback]
  let ended = false;
  let failure = null;
  let wake = null;
  const wakeUp = () => {
    const w = wake;
    wake = null;
    w?.();
  };

  const source = {
    async next() {
      for (;;) {
        if (failure !== null) throw failure;
        if (queue.length > 0) {
          const [bytes, callback] = queue.shift();
          // The writer may go on once these bytes are on their way.
          process.nextTick(callback);
          return bytes;
        }
        if (ended) return null;
        await new Promise((resolve) => (wake = resolve));
      }
    },
    cancel() {
      // The client went away: the handler's writes fail from now on, as
      // they would on a stream AWS closed.
      stream.destroy();
    },
  };

  const startBody = (status, headers) => {
    headSent = true;
    resolveHead({ status, headers, body: source });
  };

  // Bytes the handler wrote, in order: a prelude first when it asked for
  // one, then the body.
  const take = (bytes, callback) => {
    if (!headSent && contentType === PRELUDE_CONTENT_TYPE) {
      prelude = prelude === null ? bytes : Buffer.concat([prelude, bytes]);
      const at = prelude.indexOf(PRELUDE_DELIMITER);
      if (at === -1) {
        if (prelude.length > MAX_PRELUDE_BYTES) throw new TypeError(`the response stream's HTTP prelude has no end in its first ${MAX_PRELUDE_BYTES} bytes (HttpResponseStream.from writes one)`);
        callback();
        return;
      }
      const { status, headers } = preludeHead(prelude.subarray(0, at));
      const rest = prelude.subarray(at + PRELUDE_DELIMITER.length);
      prelude = null;
      startBody(status, headers);
      if (rest.length === 0) {
        callback();
        return;
      }
      bytes = rest;
    } else if (!headSent) {
      startBody(200, [['content-type', contentType]]);
    }
    queue.push([bytes, callback]);
    wakeUp();
  };

  let started = false;
  const beforeFirstWrite = () => {
    if (started) return;
    started = true;
    if (typeof stream._onBeforeFirstWrite === 'function') {
      stream._onBeforeFirstWrite((chunk) => take(chunkBytes(chunk), () => {}));
    }
  };

  const stream = new Writable({
    highWaterMark,
    write(chunk, encoding, callback) {
      try {
        beforeFirstWrite();
        take(typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunkBytes(chunk), callback);
      } catch (err) {
        callback(err);
      }
    },
    final(callback) {
      try {
        beforeFirstWrite();
        if (!headSent) {
          if (prelude !== null) throw new TypeError('the response stream ended inside its HTTP prelude');
          startBody(200, contentType === PRELUDE_CONTENT_TYPE ? [] : [['content-type', contentType]]);
        }
        ended = true;
        wakeUp();
        callback();
      } catch (err) {
        callback(err);
      }
    },
    destroy(err, callback) {
      if (!ended) {
        failure = err ?? new Error('the response stream was destroyed before its end');
        if (!headSent) rejectHead(failure);
        wakeUp();
      }
      callback(err);
    },
  });
  stream.setContentType = (type) => {
    contentType = String(type);
  };
  // A stream error with no listener of the handler's would otherwise crash
  // the runtime; the call fails with it instead.
  stream.on('error', () => {});

  let returned;
  try {
    returned = handler(event, stream, ctx);
  } catch (err) {
    stream.destroy(err);
    return head;
  }
  Promise.resolve(returned).then(
    // A handler whose promise settles without ending its stream is done
    // writing: the stream ends with it.
    () => {
      if (!stream.writableEnded && !stream.destroyed) stream.end();
    },
    (err) => stream.destroy(err instanceof Error ? err : new Error(describeThrown(err).message)),
  );
  return head;
}

// ---------------------------------------------------------------------------
// fetch style: default.fetch(request, env, ctx) → Response.

function fetchAdapter(target, fn) {
  // Cloudflare's ExecutionContext, one per call. waitUntil's promise
  // outlives the response: the answer goes at once and the work runs on
  // (see finishBackground). Its failure is logged rather than left to crash
  // the runtime as an unhandled rejection. passThroughOnException has no
  // origin to pass through to here, so it does nothing.
  function executionContext(invocation) {
    const background = invocation?.background ?? [];
    return {
      waitUntil(promise) {
        background.push(Promise.resolve(promise).catch((err) => logText('stderr', describeThrown(err).stack)));
      },
      passThroughOnException() {},
    };
  }

  // The request's body for `new Request`: none for GET and HEAD, a Buffer
  // when it is all here already (a small body arrives with its invoke), a
  // stream read as the handler reads it otherwise.
  function requestBody(request) {
    if (request.method === 'GET' || request.method === 'HEAD') return undefined;
    if (request.incoming === undefined || request.incoming === null) return request.body.length > 0 ? request.body : undefined;
    const whole = request.incoming.whole();
    if (whole !== undefined) return whole.length > 0 ? whole : undefined;
    return request.incoming.stream();
  }

  async function respond(request, invocation) {
    const url = `http://${request.host}${request.path}${request.query ? `?${request.query}` : ''}`;
    const req = new Request(url, {
      method: request.method,
      headers: request.headers,
      body: requestBody(request),
      duplex: 'half',
    });
    if (typeof target.fetch !== 'function') {
      throw new TypeError('this module exports no fetch() handler, only scheduled(): it runs on its schedules, not for HTTP requests or events');
    }
    const response = await target.fetch(req, process.env, executionContext(invocation));
    const isResponse =
      response instanceof Response ||
      (response !== null && typeof response === 'object' && typeof response.status === 'number' && typeof response.arrayBuffer === 'function' && response.headers);
    if (!isResponse) {
      throw new TypeError(`fetch must return a Response (or a promise of one), got ${response === null ? 'null' : typeof response}`);
    }
    const headers = [];
    for (const [name, value] of response.headers) if (name !== 'set-cookie') headers.push([name, value]);
    const cookies = typeof response.headers.getSetCookie === 'function' ? response.headers.getSetCookie() : [];
    for (const cookie of cookies) headers.push(['set-cookie', cookie]);
    // A web Response's body streams as the handler produces it (server-sent
    // events, a large download); a look-alike object is read whole.
    if (response.body instanceof ReadableStream) return { status: response.status, headers, body: response.body };
    if (response.body === null) return { status: response.status, headers, body: EMPTY_BODY };
    return { status: response.status, headers, body: Buffer.from(await response.arrayBuffer()) };
  }

  // Cloudflare's ScheduledController. noRetry() marks the call, and only a
  // failure of the call makes use of the mark (see runInvocation).
  async function runScheduled(schedule, invocation) {
    if (typeof target.scheduled !== 'function') {
      throw new TypeError(`this module exports no scheduled() handler: add one to receive schedule ${JSON.stringify(schedule.name)}`);
    }
    const controller = {
      scheduledTime: schedule.scheduledTime,
      cron: schedule.cron,
      type: 'scheduled',
      noRetry() {
        invocation.noRetry = true;
      },
    };
    return valueResponse(await target.scheduled(controller, process.env, executionContext(invocation)));
  }

  return {
    style: 'fetch',
    http: (request, invocation) => respond(request, invocation),
    // An event is delivered as `POST /` with the event as a JSON body.
    event: (event, invocation) =>
      respond(
        {
          method: 'POST',
          path: '/',
          query: '',
          headers: [['content-type', 'application/json']],
          body: Buffer.from(JSON.stringify(event === undefined ? null : event)),
          host: 'localhost',
        },
        invocation,
      ),
    scheduled: runScheduled,
  };
}

// ---------------------------------------------------------------------------
// OpenWhisk style: main(params).

const OW_NOT_A_DICTIONARY = 'The action did not return a dictionary.';

function openwhiskAdapter(main, fn) {
  // OpenWhisk's per-activation variables. They live in process.env, which
  // the whole runtime shares: with `concurrency` above 1, a call sees those
  // of the call that started last (as in OpenWhisk's own Node runtime with
  // concurrent activations).
  const initialApiHost = process.env.__OW_API_HOST;
  function setActivationEnv(invocation, request) {
    process.env.__OW_ACTIVATION_ID = String(invocation.id);
    process.env.__OW_ACTION_NAME = `/${fn.namespace}/${fn.name}`;
    process.env.__OW_NAMESPACE = fn.namespace;
    process.env.__OW_DEADLINE = String(invocation.deadline);
    const host = request === null ? null : headerValue(request, 'host') ?? request.host;
    if (host) {
      const proto = (headerValue(request, 'x-forwarded-proto') ?? 'http').split(',', 1)[0].trim() || 'http';
      process.env.__OW_API_HOST = `${proto}://${host}`;
    } else if (initialApiHost === undefined) {
      delete process.env.__OW_API_HOST;
    } else {
      process.env.__OW_API_HOST = initialApiHost;
    }
  }

  // OpenWhisk's Node runtime: a result of `undefined` (a bare `return;`)
  // is `{}`; anything that is not an object is an error.
  async function activate(value, invocation, request) {
    setActivationEnv(invocation, request);
    let result = await main(value);
    if (result === undefined || result === null) result = {};
    if (typeof result !== 'object') {
      const err = new Error(OW_NOT_A_DICTIONARY);
      err.stack = `Error: ${OW_NOT_A_DICTIONARY} main returned a ${typeof result}: ${safeInspect(result).slice(0, 200)}`;
      throw err;
    }
    return result;
  }

  function params(request) {
    const merged = {};
    if (request.query) for (const [key, value] of new URLSearchParams(request.query)) setOwn(merged, key, value);
    const contentType = (headerValue(request, 'content-type') ?? '').split(';', 1)[0].trim().toLowerCase();
    if (request.body.length > 0 && isUtf8(request.body)) {
      if (contentType === 'application/x-www-form-urlencoded') {
        for (const [key, value] of new URLSearchParams(request.body.toString('utf8'))) setOwn(merged, key, value);
      } else {
        let parsed;
        try {
          parsed = JSON.parse(request.body.toString('utf8'));
        } catch {
          parsed = undefined;
        }
        if (isPlainObject(parsed)) for (const key of Object.keys(parsed)) setOwn(merged, key, parsed[key]);
      }
    }
    merged.__ow_method = request.method.toLowerCase();
    // Nothing after the function's URL is "" in OpenWhisk. The host sends
    // "/" both for /fn/NAME and for /fn/NAME/, so both are "" here.
    merged.__ow_path = request.path === '/' ? '' : request.path;
    merged.__ow_headers = headersObject(request, null);
    merged.__ow_query = request.query;
    merged.__ow_body = request.body.toString(bodyIsText(request) ? 'utf8' : 'base64');
    return merged;
  }

  function webResponse(value) {
    if (!isPlainObject(value) || !('statusCode' in value || 'headers' in value || 'body' in value)) {
      return jsonResponse(200, value === undefined ? undefined : JSON.stringify(value));
    }
    const headers = [];
    pushHeaderObject(headers, value.headers);
    const contentType = headers.find(([name]) => name.toLowerCase() === 'content-type')?.[1];
    let body = value.body;
    if (body !== undefined && body !== null && typeof body !== 'string' && !ArrayBuffer.isView(body) && !(body instanceof ArrayBuffer)) {
      body = JSON.stringify(body);
      if (!contentType) headers.push(['content-type', 'application/json']);
    } else if (typeof body === 'string' && !contentType) {
      // OpenWhisk web actions: a string body with no content type is HTML.
      headers.push(['content-type', 'text/html']);
    }
    // OpenWhisk's rule: a string body with a binary content type is base64.
    const base64 = typeof body === 'string' && contentType !== undefined && !isTextualContentType(contentType);
    return { status: statusNumber(value.statusCode, 200), headers, body: bodyBytes(body, base64) };
  }

  return {
    style: 'openwhisk',
    async http(request, invocation) {
      return webResponse(await activate(params(request), invocation, request));
    },
    async event(event, invocation) {
      return valueResponse(await activate(event, invocation, null));
    },
    // As an alarm trigger fires an action: the trigger's payload is the
    // params. A payload that is not a dictionary is wrapped in one.
    async scheduled(schedule, invocation) {
      const { payload } = schedule;
      const params = payload === undefined ? {} : isPlainObject(payload) ? payload : { payload };
      return valueResponse(await activate(params, invocation, null));
    },
  };
}

// ---------------------------------------------------------------------------
// Class style: JSON-RPC 2.0 over POST, "Class.method" names.

const RPC_PARSE_ERROR = -32700;
const RPC_INVALID_REQUEST = -32600;
const RPC_METHOD_NOT_FOUND = -32601;
const RPC_INVALID_PARAMS = -32602;
const RPC_INTERNAL_ERROR = -32603;
const RPC_SERVER_ERROR = -32000;

const RPC_HTTP_STATUS = new Map([
  [RPC_PARSE_ERROR, 400],
  [RPC_INVALID_REQUEST, 400],
  [RPC_METHOD_NOT_FOUND, 404],
  [RPC_INVALID_PARAMS, 400],
  [RPC_INTERNAL_ERROR, 500],
  [RPC_SERVER_ERROR, 500],
]);

function rpcErrorJson(id, code, message, data) {
  const error = data === undefined ? { code, message } : { code, message, data };
  return JSON.stringify({ jsonrpc: '2.0', error, id });
}

// Genezio's GenezioError(message, code, info) from @genezio/types: an Error
// named "GenezioError" with `code` and `info` properties. The user's code
// imports the class from that package, so it is recognised by its shape:
// the name, or an Error carrying a numeric `code` and an `info` property.
function isGenezioError(err) {
  if (!(err instanceof Error) && !(err !== null && typeof err === 'object' && typeof err.message === 'string')) return false;
  return err.name === 'GenezioError' || (typeof err.code === 'number' && 'info' in err);
}

// The answer Genezio's generated SDKs read: their Remote.call throws an
// Error built from error.message, error.code and error.info. `data` carries
// the info too, where JSON-RPC 2.0 puts extra error details. HTTP 200, as
// Genezio's own runtime answers, because its older browser SDK turns any
// other status into a rejection with the raw body, losing code and info.
function genezioErrorJson(id, err) {
  const code = Number.isInteger(err.code) ? err.code : RPC_SERVER_ERROR;
  const message = String(err.message);
  if (err.info !== undefined) {
    try {
      return JSON.stringify({ jsonrpc: '2.0', error: { code, message, data: err.info, info: err.info }, id });
    } catch {
      // An info that cannot be JSON (a cycle, a BigInt) is left out.
    }
  }
  return JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id });
}

function classAdapter(classes) {
  const instances = new Map();
  // "Class.method" → [instance, function], filled on first successful lookup.
  const resolved = new Map();

  function instanceOf(className) {
    let instance = instances.get(className);
    if (instance === undefined) {
      instance = new (classes.get(className))();
      instances.set(className, instance);
    }
    return instance;
  }

  // Only methods the class itself defines are callable: nothing private by
  // convention ("_x", "#x"), no constructor, and nothing from Object.prototype
  // ("toString", "__proto__", "hasOwnProperty", ...). Own properties are
  // walked with descriptors so getters never run.
  function findMethod(instance, name) {
    if (name === 'constructor' || name.startsWith('_') || name.startsWith('#')) return null;
    for (let proto = Object.getPrototypeOf(instance); proto !== null && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
      const descriptor = Object.getOwnPropertyDescriptor(proto, name);
      if (descriptor) return typeof descriptor.value === 'function' ? descriptor.value : null;
    }
    return null;
  }

  // Returns [instance, fn], null when there is no such method, or throws when
  // the class constructor throws.
  function lookup(methodName) {
    const cached = resolved.get(methodName);
    if (cached) return cached;
    const dot = methodName.indexOf('.');
    if (dot <= 0) return null;
    const className = methodName.slice(0, dot);
    if (!classes.has(className)) return null;
    const instance = instanceOf(className);
    const fn = findMethod(instance, methodName.slice(dot + 1));
    if (fn === null) return null;
    const entry = [instance, fn];
    resolved.set(methodName, entry);
    return entry;
  }

  // Answers one request object: undefined for a notification, otherwise
  // { code (0 on success), json }.
  async function answer(request) {
    const validId = (id) => id === null || typeof id === 'string' || typeof id === 'number';
    if (!isPlainObject(request) || request.jsonrpc !== '2.0' || typeof request.method !== 'string' || (Object.hasOwn(request, 'id') && !validId(request.id))) {
      const id = isPlainObject(request) && validId(request.id) ? request.id : null;
      return { code: RPC_INVALID_REQUEST, json: rpcErrorJson(id, RPC_INVALID_REQUEST, 'Invalid Request: expected {"jsonrpc":"2.0","method":"Class.method","params":[...],"id":...}') };
    }
    const isNotification = !Object.hasOwn(request, 'id');
    const id = isNotification ? null : request.id;
    const fail = (code, message, data) => (isNotification ? undefined : { code, json: rpcErrorJson(id, code, message, data) });

    let args;
    if (!Object.hasOwn(request, 'params')) args = [];
    else if (Array.isArray(request.params)) args = request.params;
    else if (isPlainObject(request.params)) args = [request.params];
    else return fail(RPC_INVALID_PARAMS, 'Invalid params: params must be an array or an object');

    let result;
    try {
      const target = lookup(request.method);
      if (target === null) {
        return fail(RPC_METHOD_NOT_FOUND, `Method not found: ${request.method} (exported classes: ${[...classes.keys()].join(', ')})`);
      }
      result = await target[1].apply(target[0], args);
    } catch (err) {
      const thrown = describeThrown(err);
      logText('stderr', thrown.stack);
      if (isGenezioError(err)) return isNotification ? undefined : { code: RPC_SERVER_ERROR, status: 200, json: genezioErrorJson(id, err) };
      return fail(RPC_SERVER_ERROR, thrown.message, { name: thrown.name });
    }
    if (isNotification) return undefined;
    try {
      return { code: 0, json: JSON.stringify({ jsonrpc: '2.0', result: result === undefined ? null : result, id }) };
    } catch (err) {
      return { code: RPC_INTERNAL_ERROR, json: rpcErrorJson(id, RPC_INTERNAL_ERROR, `the result could not be serialised as JSON: ${err.message}`) };
    }
  }

  async function respond(payload) {
    if (Array.isArray(payload)) {
      if (payload.length === 0) {
        return jsonResponse(400, rpcErrorJson(null, RPC_INVALID_REQUEST, 'Invalid Request: empty batch'));
      }
      const answers = (await Promise.all(payload.map(answer))).filter((a) => a !== undefined);
      if (answers.length === 0) return { status: 204, headers: [], body: EMPTY_BODY };
      // A batch mixes outcomes, so it is always 200; each entry says how it went.
      return jsonResponse(200, `[${answers.map((a) => a.json).join(',')}]`);
    }
    const single = await answer(payload);
    if (single === undefined) return { status: 204, headers: [], body: EMPTY_BODY };
    return jsonResponse(single.status ?? RPC_HTTP_STATUS.get(single.code) ?? 200, single.json);
  }

  return {
    style: 'class',
    services: [...classes.keys()],
    http(request) {
      if (request.method !== 'POST') {
        return jsonResponse(405, rpcErrorJson(null, RPC_INVALID_REQUEST, 'JSON-RPC requests must be sent with POST'), [['allow', 'POST']]);
      }
      let payload;
      try {
        payload = JSON.parse(request.body.toString('utf8'));
      } catch (err) {
        return jsonResponse(400, rpcErrorJson(null, RPC_PARSE_ERROR, `Parse error: ${err.message}`));
      }
      return respond(payload);
    },
    event: (event) => respond(event),
    // A cron method, as Genezio calls one: with no arguments, or the
    // schedule's payload as them. Not JSON-RPC: there is no caller to
    // answer, so whatever the method throws fails the call.
    async scheduled(schedule) {
      const { name, method, payload } = schedule;
      const target = method === null ? null : lookup(method);
      if (target === null) {
        const services = [...classes.keys()].join(', ');
        const asked = method === null ? 'names no method' : `names ${JSON.stringify(method)}, which is not a method of this function`;
        throw new TypeError(`schedule ${JSON.stringify(name)} ${asked}: a class service's schedule needs a "Class.method" of one of its services (${services})`);
      }
      const args = payload === undefined ? [] : Array.isArray(payload) ? payload : [payload];
      return valueResponse(await target[1].apply(target[0], args));
    },
  };
}

// ---------------------------------------------------------------------------

// A pre-started runtime waits in thaw's pool before any function is bound
// to it. Running the paths every cold start takes once now (the module
// loader, the handler adapters, the result encoding) moves their first-run
// cost (lazy loading, compilation) off the first request's path. Nothing
// here touches the disk or the console, and it runs before `ready`.
async function warmUp() {
  const fn = { name: '', version: '', memoryMb: '', namespace: 'default' };
  const invocation = { id: 0, deadline: Date.now() + 1000, background: [], noRetry: false };
  const request = normaliseRequest(
    {
      method: 'POST',
      path: '/',
      query: 'a=1',
      headers: [['host', 'localhost'], ['content-type', 'application/json'], ['cookie', 'a=b']],
      source_ip: '127.0.0.1',
      host: 'localhost',
    },
    null,
  );
  request.body = Buffer.from('{}');
  // What a response's head costs to build, paid here once.
  const head = ({ status, headers }) => {
    checkStatus(status);
    return resultJson(0, status, headers, false);
  };
  try {
    const mod = await import('data:text/javascript,export const handler = async () => ({ statusCode: 200, body: "" }); export class Warm { up() { return 1; } }');
    head(await lambdaAdapter(mod.handler, fn).http(request, invocation));
    head(await lambdaAdapter(mod.handler, fn).event({}, invocation));
    const schedule = normaliseSchedule({ schedule: 'warm', cron: '* * * * *', scheduled_time_ms: Date.now(), method: 'Warm.up' }, 0);
    head(await lambdaAdapter(mod.handler, fn).scheduled(schedule, invocation));
    // The first Request or Response loads Node's fetch implementation,
    // tens of milliseconds: pay it here, not in a fetch handler's cold start.
    const fetchTarget = {
      async fetch(req) {
        await req.text();
        return new Response('{}', { status: 200, headers: { 'content-type': 'application/json' } });
      },
      scheduled() {},
    };
    const fetchStyle = fetchAdapter(fetchTarget, fn);
    head(await fetchStyle.http(request, invocation));
    head(await fetchStyle.scheduled(schedule, invocation));
    const rpc = '{"jsonrpc":"2.0","method":"Warm.up","params":[],"id":1}';
    detectStyle(mod, 'warm', fn);
    const services = classAdapter(new Map([['Warm', mod.Warm]]));
    head(await services.http({ ...request, body: Buffer.from(rpc) }, invocation));
    head(await services.scheduled(schedule, invocation));
  } catch {
    // Warming is an optimisation only; a failure here shows up for real,
    // with a proper error, when the function's own code runs.
  }
}

// Inside an invocation scope, as calls run: the first use of the scope
// turns on Node's async context tracking, which is worth doing now too.
await invocationScope.run(0, warmUp);
send({ type: 'ready', protocol: PROTOCOL_VERSION, runtime: RUNTIME_NAME, node: process.version, pid: process.pid });
