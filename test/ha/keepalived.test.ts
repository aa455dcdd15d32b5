import { describe, expect, it } from 'vitest';
import { keepalivedConf, KeepalivedConfError, type KeepalivedOptions } from '../../src/ha/keepalived.js';
import { confBlock as block } from './helpers.js';

const base: KeepalivedOptions = {
  name: 'gw-a',
  lanIf: 'lan0',
  wanIf: 'wan0',
  lanVip: '192.168.1.1/24',
  wanVip: '203.0.113.1/24',
  vrid: 51,
  priority: 150,
  trackInterface: 'tunnat0',
  checkScript: '/usr/bin/node /opt/tunnat/dist/src/cli/main.js ha check',
};

describe('keepalivedConf', () => {
  it('puts both addresses in one sync group, each instance tracking the TUN and the health check', () => {
    const c = keepalivedConf(base);
    expect(block(c, 'vrrp_sync_group tunnat')).toMatch(/group \{\s+tunnat_lan\s+tunnat_wan\s+\}/);
    const lan = block(c, 'vrrp_instance tunnat_lan');
    const wan = block(c, 'vrrp_instance tunnat_wan');
    expect(lan).toContain('virtual_router_id 51');
    expect(wan).toContain('virtual_router_id 52');
    expect(lan).toContain('192.168.1.1/24 dev lan0');
    expect(wan).toContain('203.0.113.1/24 dev wan0');
    for (const i of [lan, wan]) {
      expect(i).toContain('state BACKUP');
      expect(i).toContain('nopreempt');
      expect(i).toContain('advert_int 0.10');
      expect(i).toMatch(/track_interface \{\s+tunnat0\s+\}/);
      expect(i).toMatch(/track_script \{\s+tunnat_alive\s+\}/);
    }
    expect(block(c, 'vrrp_script tunnat_alive')).toContain(`script "${base.checkScript}"`);
    expect(block(c, 'global_defs')).toContain('vrrp_version 3');
    expect(block(c, 'global_defs')).toContain('dynamic_interfaces');
    // Braces balance: keepalived stops reading at an unbalanced file.
    expect(c.split('{').length).toBe(c.split('}').length);
  });

  it('preempts only when asked, and writes unicast peers and notify scripts', () => {
    const c = keepalivedConf({
      ...base,
      preempt: true,
      trackInterface: null,
      checkScript: null,
      unicast: { lanSrc: '192.168.1.2', lanPeer: '192.168.1.3', wanSrc: '203.0.113.3', wanPeer: '203.0.113.4' },
      notify: { master: '/etc/tunnat/ha-notify master', backup: '/etc/tunnat/ha-notify backup', fault: '/etc/tunnat/ha-notify fault' },
    });
    expect(c).not.toContain('nopreempt');
    expect(c).not.toContain('track_interface');
    expect(c).not.toContain('vrrp_script');
    expect(block(c, 'vrrp_instance tunnat_lan')).toMatch(/unicast_src_ip 192\.168\.1\.2\s+unicast_peer \{\s+192\.168\.1\.3\s+\}/);
    expect(block(c, 'vrrp_instance tunnat_wan')).toMatch(/unicast_src_ip 203\.0\.113\.3\s+unicast_peer \{\s+203\.0\.113\.4\s+\}/);
    expect(block(c, 'vrrp_sync_group tunnat')).toContain('notify_master "/etc/tunnat/ha-notify master"');
  });

  it.each([
    [{ vrid: 255 }, /VRRP id 255/],
    [{ priority: 0 }, /priority 0/],
    [{ lanVip: '192.168.1.1' }, /ADDRESS\/PREFIX/],
    [{ wanIf: 'lan0' }, /same/],
    [{ advertMs: 15 }, /multiple of 10/],
    [{ checkScript: 'tunnat ha check' }, /absolute path/],
    [{ checkScript: '/bin/sh -c "x"' }, /quote/],
    [{ name: 'a b' }, /name/],
  ] as [Partial<KeepalivedOptions>, RegExp][])('refuses %o', (change, why) => {
    expect(() => keepalivedConf({ ...base, ...change })).toThrow(KeepalivedConfError);
    expect(() => keepalivedConf({ ...base, ...change })).toThrow(why);
  });
});
