import type { Server } from 'node:net';

/** Listen on HOST:PORT or a unix socket path; rejects with the bind error (address in use, …). */
export function listenOn(server: Server, arg: { host: string; port: number } | string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (typeof arg === 'string') server.listen(arg, done);
    else server.listen(arg.port, arg.host, done);
  });
}
