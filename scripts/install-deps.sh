#!/usr/bin/env bash
# Installs, on Debian (as root), every system package tunnat's build, its lab and its test suite use.
# Node.js 20 itself is not among them (Debian's own nodejs is older); install it first.
# .ci/run calls this; a person runs it once before `npm ci`.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/install-deps.sh: run as root (it calls apt-get install)" >&2
  exit 1
fi

# The prebuilt addon for the other architecture is cross-compiled (scripts/prebuild.sh, run by `npm pack`).
case "$(dpkg --print-architecture)" in
  amd64) cross=g++-aarch64-linux-gnu ;;
  arm64) cross=g++-x86-64-linux-gnu ;;
  *) cross= ;;
esac

packages=(
  # Building the native addon from source (node-gyp): compiler, make, python3.
  g++ make python3 $cross
  # The lab and the router: namespaces, links, routes and rules; the kernel engine; the probes.
  iproute2 iptables nftables conntrack procps kmod iputils-ping curl tcpdump
  # Only the tests and benchmarks: traffic generators, packet crafting, STUN.
  iperf3 socat traceroute hping3 python3-scapy stun-client stun-server coturn ca-certificates
  # The FTP ALG test: an FTP server in the internet namespace (curl is the client).
  vsftpd
  # The gateway pair (docs/ha.md): keepalived moves the shared addresses; conntrackd is the kernel engine's state sync.
  keepalived conntrackd
  # The live page's browser test (playwright-core drives Debian's chromium; no browser download).
  chromium
)

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
