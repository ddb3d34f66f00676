// The dashboard's only way to the server: the same /v1 API the CLI uses,
// with the key the user signed in with as a bearer token. The key is
// kept in sessionStorage (this tab, until it closes) and sent nowhere
// else; no cookie is ever set or sent.

const KEY = 'thaw.key';

export const session = {
  key: () => sessionStorage.getItem(KEY),
  keep: (key) => sessionStorage.setItem(KEY, key),
  forget: () => sessionStorage.removeItem(KEY),
};

// An answer other than 2xx: thaw's {"error": {"code", "message", ...}}.
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? `http_${status}`;
    this.details = error;
  }
}

// Called when the server refuses the key (401): the app signs out.
let onRefused = () => {};
export function whenRefused(f) {
  onRefused = f;
}

// `body`: a value sent as JSON, or a string sent as it is (JSON text).
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.key() ?? ''}` };
  const init = { method, headers, credentials: 'omit', cache: 'no-store', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: { message: text } };
  }
  if (!response.ok) {
    if (response.status === 401) onRefused();
    throw new ApiError(response.status, data?.error ?? {});
  }
  return data;
}

const part = encodeURIComponent;

// `/v1/namespaces/{ns}/functions/{name}{rest}`.
export function fnPath(ns, name, rest = '') {
  return `/v1/namespaces/${part(ns)}/functions/${part(name)}${rest}`;
}

export function nsPath(ns, rest = '') {
  return `/v1/namespaces/${part(ns)}${rest}`;
}
