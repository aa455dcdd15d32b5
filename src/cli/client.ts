import http from 'node:http';

/**
 * GET a path from a running router: `HOST:PORT` over TCP or `unix:/path` over a unix socket.
 * Errors say plainly that the router is not reachable.
 */
export function httpGet(target: string, path: string, timeoutMs = 5000): Promise<string> {
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
      res.on('end', () => {
        if (res.statusCode === 200) resolve(body);
        else reject(new Error(`${target}${path} answered ${res.statusCode}: ${body.trim()}`));
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) =>
      reject(new Error(`no tunnat router reachable at ${target} (${(err as Error).message}); is \`tunnat run\` running with --http ${target}?`)),
    );
    req.end();
  });
}
