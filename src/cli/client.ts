import http from 'node:http';

/** A router's answer: the HTTP status and the body. */
export interface HttpAnswer {
  status: number;
  body: string;
}

/**
 * GET a path from a running router: `HOST:PORT` over TCP or `unix:/path` over a unix socket. Resolves with
 * whatever status it answers; rejects, saying plainly that the router is not reachable, when none does.
 */
export function httpRequest(target: string, path: string, timeoutMs = 5000): Promise<HttpAnswer> {
  const opts: http.RequestOptions = { path, method: 'GET', timeout: timeoutMs };
  if (target.startsWith('unix:')) opts.socketPath = target.slice(5);
  else {
    const i = target.lastIndexOf(':');
    opts.host = target.slice(0, i);
    opts.port = Number(target.slice(i + 1));
    if (i <= 0 || !Number.isInteger(opts.port)) return Promise.reject(new Error(`--http: expected HOST:PORT or unix:PATH, got ${target}`));
  }
  return new Promise((resolve, reject) => {
    const req = http.request(opts, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) =>
      reject(new Error(`no tunnat router reachable at ${target} (${(err as Error).message}); is \`tunnat run\` running with --http ${target}?`)),
    );
    req.end();
  });
}

/** GET a path that must answer 200: its body; any other status is an error naming it. */
export async function httpGet(target: string, path: string, timeoutMs = 5000): Promise<string> {
  const r = await httpRequest(target, path, timeoutMs);
  if (r.status !== 200) throw new Error(`${target}${path} answered ${r.status}: ${r.body.trim()}`);
  return r.body;
}
