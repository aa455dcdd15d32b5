import http from 'node:http';
import type { Server as NetServer } from 'node:net';
import { rmSync } from 'node:fs';
import type { Registry } from 'prom-client';
import type { Endpoint } from '../config/config.js';
import { listenOn } from '../util/listen.js';
import { FilterError, flowFilterFromQuery, flowMatches, type FilterableFlow } from './filter.js';

/**
 * The router's HTTP endpoint: /metrics (Prometheus text) and /conntrack (JSON flow list, optionally
 * filtered: ?proto=&src=&dst=&state=), plus whatever `handlers` add (the live page, event streams).
 * It is bound to loopback by default; a unix socket can be added so a router inside a namespace is
 * reachable from the host.
 */
export type RouteHandler = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => void | Promise<void>;

export interface HttpRoutes {
  registry: Registry;
  conntrack: () => unknown;
  /** More GET routes by path (e.g. "/" for the live page, "/events"). */
  handlers?: Record<string, RouteHandler>;
}

function isFlowList(v: unknown): v is FilterableFlow[] {
  return Array.isArray(v);
}

export async function startHttp(
  routes: HttpRoutes,
  listen: { tcp: Endpoint | null; unixPath: string | null; handles?: NetServer[] },
): Promise<() => Promise<void>> {
  const handler: http.RequestListener = (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    // A client that vanishes mid-answer must not surface as an unhandled 'error'.
    res.on('error', () => {});
    void (async () => {
      try {
        const extra = routes.handlers?.[url.pathname];
        if (req.method !== 'GET') {
          res.writeHead(405, { allow: 'GET' }).end('only GET\n');
        } else if (url.pathname === '/metrics') {
          const body = await routes.registry.metrics();
          res.writeHead(200, { 'content-type': routes.registry.contentType }).end(body);
        } else if (url.pathname === '/conntrack') {
          let flows = routes.conntrack();
          if ([...url.searchParams.keys()].length > 0 && isFlowList(flows)) {
            const filter = flowFilterFromQuery(url.searchParams);
            flows = flows.filter((f) => flowMatches(filter, f));
          }
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(flows));
        } else if (extra) {
          await extra(req, res, url);
        } else if (url.pathname === '/') {
          res.writeHead(200, { 'content-type': 'text/plain' }).end('tunnat: see /metrics and /conntrack\n');
        } else {
          res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        }
      } catch (err) {
        if (res.headersSent) {
          res.destroy();
          return;
        }
        const status = err instanceof FilterError ? 400 : 500;
        res.writeHead(status, { 'content-type': 'text/plain' }).end(`${status === 400 ? '' : 'error: '}${(err as Error).message}\n`);
      }
    })();
  };
  const servers: http.Server[] = [];
  // Listening sockets a privileged parent bound and passed down (privilege separation): they already
  // listen, so their connections are fed to an HTTP server that never binds anything itself.
  const passed = listen.handles ?? [];
  if (passed.length > 0) {
    const s = http.createServer(handler);
    for (const h of passed) h.on('connection', (sock) => s.emit('connection', sock));
    servers.push(s);
  }
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
    passed.forEach((h) => (typeof h.close === "function" ? h.close() : undefined));
    const closed = servers.map((s) => new Promise<void>((r) => (s.listening ? s.close(() => r()) : r())));
    servers.forEach((s) => s.closeAllConnections());
    await Promise.all(closed);
    if (listen.unixPath) rmSync(listen.unixPath, { force: true });
  };
}
