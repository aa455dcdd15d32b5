import { ConfigError, type RouterConfig } from '../config/config.js';
import { cidrToString, parseCidr, type Cidr } from '../wire/addr.js';
import { mustRun } from './commands.js';
import { linkInfo, parseJsonArray, str } from './ip-json.js';

/**
 * What a start checks on the host before it changes anything (both engines, `run --dry-run` and
 * `kernel plan|apply`): that --external exists, and that no --internal prefix overlaps a subnet the
 * gateway is connected to in a way the rules would break. Mistakes here are configuration errors
 * (exit 2), found while there is still nothing to undo.
 */

/** A subnet the host reaches directly on a link: a `scope link` route of the main table. */
export interface ConnectedRoute {
  prefix: Cidr;
  dev: string;
}

export async function listConnectedRoutes(): Promise<ConnectedRoute[]> {
  const argv = ['ip', '-j', '-4', 'route', 'show', 'table', 'main', 'scope', 'link'];
  const rows = parseJsonArray((await mustRun(argv)).stdout, argv.join(' '));
  return rows.flatMap((row) => {
    const dst = str(row['dst']);
    const dev = str(row['dev']);
    const prefix = dst !== undefined && dst !== 'default' ? parseCidr(dst.includes('/') ? dst : `${dst}/32`) : null;
    return prefix && dev !== undefined ? [{ prefix, dev }] : [];
  });
}

const overlaps = (a: Cidr, b: Cidr): boolean => {
  const wider = a.prefixLength <= b.prefixLength ? a : b;
  const narrower = wider === a ? b : a;
  return ((narrower.network & wider.mask) >>> 0) === wider.network;
};

/**
 * The first conflict between --internal and the connected subnets, worded for the operator, or null.
 *
 * - Any overlap with a subnet of --external: the WAN-side rules drop what comes from or goes to an
 *   internal address, so the gateway would lose those WAN neighbours (its upstream router among them)
 *   for as long as tunnat runs.
 * - A prefix that covers only part of a subnet connected elsewhere: half a link translated and half
 *   routed as it is is never what was meant. A subnet inside --internal is a LAN, as intended.
 * The TUN's own routes are tunnat's and never count.
 */
export function internalConflict(cfg: Pick<RouterConfig, 'internal' | 'external' | 'tun'>, routes: readonly ConnectedRoute[]): string | null {
  for (const c of cfg.internal) {
    for (const r of routes) {
      if (r.dev === cfg.tun || !overlaps(c, r.prefix)) continue;
      const ours = cidrToString(c);
      const theirs = cidrToString(r.prefix);
      if (r.dev === cfg.external) {
        return `--internal ${ours} overlaps ${theirs}, the subnet of ${r.dev} (--external): its hosts would be cut off from the gateway while tunnat runs; choose --internal prefixes outside the WAN`;
      }
      if (r.prefix.prefixLength < c.prefixLength) {
        return `--internal ${ours} covers only part of ${theirs}, connected on ${r.dev}: the rest of that subnet would be routed untranslated; give the whole of ${theirs} or none of it`;
      }
    }
  }
  return null;
}

/**
 * Check the host for this config; throws a ConfigError for what a start must refuse. With `forAnotherHost`
 * (a dry run, a plan: maybe read on another machine than the gateway) a missing --external, or a host
 * whose routes cannot be read, is only a warning; the warnings are returned for the caller to show.
 */
export async function preflight(cfg: RouterConfig, opts: { forAnotherHost?: boolean } = {}): Promise<string[]> {
  const warnings: string[] = [];
  let routes: ConnectedRoute[];
  try {
    if ((await linkInfo(cfg.external)) === null) {
      const e = new ConfigError('external', `no interface ${JSON.stringify(cfg.external)} in this network namespace (\`ip link\` lists them)`);
      if (!opts.forAnotherHost) throw e;
      warnings.push(`${e.message}; a start here would refuse it`);
    }
    routes = await listConnectedRoutes();
  } catch (err) {
    if (err instanceof ConfigError || !opts.forAnotherHost) throw err;
    warnings.push(`this host's interfaces and routes could not be checked: ${(err as Error).message}`);
    return warnings;
  }
  const conflict = internalConflict(cfg, routes);
  if (conflict !== null) throw new ConfigError('internal', conflict);
  return warnings;
}
