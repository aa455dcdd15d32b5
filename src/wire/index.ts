/** Zero-copy packet views, checksums, addresses and emitters: everything tunnat reads off the wire. */
export * from './bytes.js';
export * from './checksum.js';
export * from './ipv4.js';
export * from './udp.js';
export * from './tcp.js';
export * from './icmp.js';
export * from './addr.js';
export * from './build.js';
