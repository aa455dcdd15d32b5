import http from 'node:http';

/**
 * Server-sent events, both ends.
 *
 * Server side: each client gets an SseStream that never lets a slow reader hold anything up. Node's
 * res.write() never blocks, it buffers; so before each message the stream looks at how much is
 * still buffered for this client and, above a limit, drops the message and counts it. When the
 * client catches up it is told how many it missed (an `event: dropped`). A client that disconnects
 * mid-stream just closes its stream; the router carries on.
 *
 * Client side: sseConnect reads a stream from HOST:PORT or unix:PATH and calls back per event.
 */
export const SSE_BUFFER_LIMIT = 256 * 1024;
const HEARTBEAT_MS = 15_000;

export class SseStream {
  /** Messages not sent because the client was behind. */
  dropped = 0;
  private missed = 0;
  private closedFlag = false;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly closeHandlers: (() => void)[] = [];

  constructor(
    private readonly res: http.ServerResponse,
    private readonly limit = SSE_BUFFER_LIMIT,
  ) {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.flushHeaders();
    // A comment line first: proxies and EventSource see the stream open at once.
    res.write(': tunnat\n\n');
    const onGone = () => this.markClosed();
    res.on('close', onGone);
    res.on('error', onGone);
    res.socket?.on('error', onGone);
    this.heartbeat = setInterval(() => {
      if (!this.closedFlag && res.writableLength <= this.limit) res.write(': keep-alive\n\n');
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Register a callback for when the client goes away (or close() is called). */
  onClose(fn: () => void): void {
    if (this.closedFlag) fn();
    else this.closeHandlers.push(fn);
  }

  private markClosed(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    clearInterval(this.heartbeat);
    for (const fn of this.closeHandlers.splice(0)) fn();
  }

  /** Whether a message would be sent now (the client is connected and not too far behind). */
  get ready(): boolean {
    return !this.closedFlag && this.res.writableLength <= this.limit;
  }

  /** Send one event; returns false (and counts it) when the client is too far behind or gone. */
  send(event: string, data: unknown): boolean {
    if (this.closedFlag) return false;
    if (this.res.writableLength > this.limit) {
      this.dropped++;
      if (this.missed++ === 0) this.res.once('drain', () => this.flushMissed());
      return false;
    }
    this.flushMissed();
    this.res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    return true;
  }

  /** Tell the client how many messages it missed (as soon as it has caught up). */
  private flushMissed(): void {
    if (this.missed === 0 || this.closedFlag) return;
    this.res.write(`event: dropped\ndata: {"count":${this.missed}}\n\n`);
    this.missed = 0;
  }

  close(): void {
    if (!this.closedFlag) this.res.end();
    this.markClosed();
  }
}

// ---------------------------------------------------------------------------------------------
// Client

export interface SseConnection {
  /** Stop reading and disconnect. */
  close(): void;
  /** Resolves when the stream ends (the router stopped, or close() was called). */
  readonly done: Promise<void>;
}

/** Request options for `HOST:PORT` or `unix:PATH`; throws a clear error for anything else. */
export function targetOptions(target: string): http.RequestOptions {
  if (target.startsWith('unix:')) return { socketPath: target.slice(5) };
  const i = target.lastIndexOf(':');
  const port = Number(target.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`--http: expected HOST:PORT or unix:PATH, got ${JSON.stringify(target)}`);
  }
  return { host: target.slice(0, i), port };
}

export function unreachable(target: string, err: Error): Error {
  return new Error(`no tunnat router reachable at ${target} (${err.message}); is \`tunnat run\` running with --http ${target}?`);
}

/**
 * Open `path` on the router as an event stream. Rejects (before any event) when the router cannot be
 * reached or answers with an error (its message is passed on, e.g. a bad filter).
 */
export function sseConnect(
  target: string,
  path: string,
  onEvent: (event: string, data: string) => void,
  opts: { connectTimeoutMs?: number } = {},
): Promise<SseConnection> {
  let reqOpts: http.RequestOptions;
  try {
    reqOpts = { ...targetOptions(target), path, method: 'GET', headers: { accept: 'text/event-stream' } };
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise((resolve, reject) => {
    let settled = false;
    const req = http.request(reqOpts, (res) => {
      if (res.statusCode !== 200) {
        clearTimeout(timer);
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          settled = true;
          // 501/503: the router explains why this engine cannot serve the stream; its words suffice.
          const explained = res.statusCode === 501 || res.statusCode === 503;
          reject(new Error(explained ? body.trim() : `${target}${path.split('?')[0]} answered ${res.statusCode}: ${body.trim()}`));
        });
        return;
      }
      clearTimeout(timer);
      settled = true;
      let buf = '';
      let finish!: () => void;
      const done = new Promise<void>((r) => (finish = r));
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'event') event = value;
            else if (field === 'data') data.push(value);
          }
          if (data.length > 0) onEvent(event, data.join('\n'));
        }
      });
      res.on('end', finish);
      res.on('close', finish);
      res.on('error', finish);
      resolve({
        close: () => {
          req.destroy();
          finish();
        },
        done,
      });
    });
    const timer = setTimeout(() => req.destroy(new Error('timed out')), opts.connectTimeoutMs ?? 5000);
    req.on('error', (err) => {
      clearTimeout(timer);
      if (!settled) {
        settled = true;
        reject(unreachable(target, err));
      }
    });
    req.end();
  });
}
