import http from 'node:http';
import { createServer, type Server as NetServer } from 'node:net';
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
  conntrack: () => unknown | Promise<unknown>;
  /** More GET routes by path (e.g. "/" for the live page, "/events"). */
  handlers?: Record<string, RouteHandler>;
}

function isFlowList(v: unknown): v is FilterableFlow[] {
  return Array.isArray(v);
}

/** An --http or --http-socket listener that could not be made; the CLI exits 1 with its message. */
export class HttpListenError extends Error {
  readonly code = 'HTTP_UNAVAILABLE';
  constructor(message: string) {
    super(message);
    this.name = 'HttpListenError';
  }
}

/**
 * Bind the listeners --http and --http-socket ask for, and nothing else yet: engines call this before
 * they change the host, so a port that is taken ends the start with nothing to undo. The sockets are
 * then served by startHttp({ handles }). `pauseOnConnect` is for a parent that hands each connection
 * to another process and must not read from it.
 */
export async function bindHttpListeners(
  listen: { tcp: Endpoint | null; unixPath: string | null },
  opts: { pauseOnConnect?: boolean } = {},
): Promise<NetServer[]> {
  const bound: NetServer[] = [];
  const wanted: [string, Endpoint | string][] = [];
  if (listen.tcp) wanted.push([`--http ${listen.tcp.host}:${listen.tcp.port}`, listen.tcp]);
  if (listen.unixPath) wanted.push([`--http-socket ${listen.unixPath}`, listen.unixPath]);
  for (const [flag, where] of wanted) {
    const s = createServer({ pauseOnConnect: opts.pauseOnConnect ?? false });
    try {
      if (typeof where === 'string') rmSync(where, { force: true });
      await listenOn(s, where);
    } catch (err) {
      bound.forEach((b) => b.close());
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'EADDRINUSE' ? 'the address is already in use (another tunnat, or another program?)' : e.message;
      const instead = typeof where === 'string' ? 'another path' : 'another HOST:PORT, or --http off';
      throw new HttpListenError(`cannot listen on ${flag}: ${why}; nothing was changed (choose ${instead})`);
    }
    bound.push(s);
  }
  return bound;
}

/** Close listeners from bindHttpListeners; resolves once their sockets are released (a fallback engine may bind the same address next). */
export function closeListeners(servers: readonly NetServer[]): Promise<void> {
  return Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))).then(() => {});
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
          let flows = await routes.conntrack();
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
