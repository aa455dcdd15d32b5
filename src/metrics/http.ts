import http from 'node:http';
import { rmSync } from 'node:fs';
import type { Registry } from 'prom-client';
import type { Endpoint } from '../cli/config.js';

/**
 * The router's HTTP endpoint: /metrics (Prometheus text) and /conntrack (JSON flow list). It is bound to
 * loopback by default; a unix socket can be added so a router inside a namespace is reachable from the host.
 */
export interface HttpRoutes {
  registry: Registry;
  conntrack: () => unknown;
}

export async function startHttp(routes: HttpRoutes, listen: { tcp: Endpoint | null; unixPath: string | null }): Promise<() => Promise<void>> {
  const handler: http.RequestListener = (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    void (async () => {
      try {
        if (req.method !== 'GET') {
          res.writeHead(405, { allow: 'GET' }).end('only GET\n');
        } else if (url.pathname === '/metrics') {
          const body = await routes.registry.metrics();
          res.writeHead(200, { 'content-type': routes.registry.contentType }).end(body);
        } else if (url.pathname === '/conntrack') {
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(routes.conntrack()));
        } else if (url.pathname === '/') {
          res.writeHead(200, { 'content-type': 'text/plain' }).end('tunnat: see /metrics and /conntrack\n');
        } else {
          res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        }
      } catch (err) {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`error: ${(err as Error).message}\n`);
      }
    })();
  };
  const servers: http.Server[] = [];
  const listenOn = (s: http.Server, arg: { host: string; port: number } | string) =>
    new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      const done = () => {
        s.off('error', reject);
        resolve();
      };
      if (typeof arg === 'string') s.listen(arg, done);
      else s.listen(arg.port, arg.host, done);
    });
  if (listen.tcp) {
    const s = http.createServer(handler);
    await listenOn(s, listen.tcp);
    servers.push(s);
  }
  if (listen.unixPath) {
    rmSync(listen.unixPath, { force: true });
    const s = http.createServer(handler);
    await listenOn(s, listen.unixPath);
    servers.push(s);
  }
  return async () => {
    const closed = servers.map((s) => new Promise<void>((r) => s.close(() => r())));
    servers.forEach((s) => s.closeAllConnections());
    await Promise.all(closed);
    if (listen.unixPath) rmSync(listen.unixPath, { force: true });
  };
}
