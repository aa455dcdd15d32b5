#!/usr/bin/env bash
# An independent lab built with plain iproute2 commands and no tunnat code: the "lab that is not
# the project's own" in which `tunnat run` must work. Everything lives in namespaces named after
# <id>; nothing is created in the root namespace (veth peers are born inside their namespaces).
#
#   plain-lab.sh up <id> [lan-hosts]   build it (default 2 LAN hosts) and print its names
#   plain-lab.sh down <id>             remove it (kills what still runs inside, deletes namespaces)
#
#   pl<id>-gw    gateway: bridge lan0 192.168.1.1/24 (ports p0, p1, ...), wan0 203.0.113.1/24,
#                default via 203.0.113.2; ip_forward left at 0 for the NAT to turn on
#   pl<id>-hN    LAN host N: eth0 192.168.1.(10+N)/24, default via 192.168.1.1
#   pl<id>-inet  internet host: eth0 203.0.113.2/24 (no route back to the LAN: private addresses
#                must never reach it)
set -euo pipefail

usage() { echo "usage: $0 up <id> [lan-hosts] | down <id>" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1 id=$2
[[ $id =~ ^[a-z0-9]{1,12}$ ]] || { echo "id must be 1-12 of [a-z0-9]" >&2; exit 2; }
gw="pl${id}-gw" inet="pl${id}-inet"

down() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^pl${id}-" || true); do
    # A process left inside would keep the namespace alive after its name is gone.
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

up() {
  local hosts=${1:-2} i ns
  [[ $hosts =~ ^[0-9]+$ && $hosts -le 200 ]] || { echo "lan-hosts must be 0..200" >&2; exit 2; }
  trap 'echo "plain-lab: setup failed, removing it" >&2; down' ERR
  for ns in "$gw" "$inet"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done

  ip -n "$gw" link add lan0 type bridge stp_state 0 forward_delay 0
  ip -n "$gw" addr add 192.168.1.1/24 dev lan0
  ip -n "$gw" link set lan0 up
  for ((i = 0; i < hosts; i++)); do
    ns="pl${id}-h${i}"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$gw" ip link add "p${i}" type veth peer name eth0 netns "$ns"
    ip -n "$gw" link set "p${i}" master lan0
    ip -n "$gw" link set "p${i}" up
    ip -n "$ns" addr add "192.168.1.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 192.168.1.1
  done

  ip netns exec "$gw" ip link add wan0 type veth peer name eth0 netns "$inet"
  ip -n "$gw" addr add 203.0.113.1/24 dev wan0
  ip -n "$gw" link set wan0 up
  ip -n "$gw" route add default via 203.0.113.2
  ip -n "$inet" addr add 203.0.113.2/24 dev eth0
  ip -n "$inet" link set eth0 up
  trap - ERR

  echo "GW=$gw"
  echo "INET=$inet"
  echo "HOSTS=$(for ((i = 0; i < hosts; i++)); do printf 'pl%s-h%d ' "$id" "$i"; done | sed 's/ $//')"
}

case $cmd in
  up) up "${3:-2}" ;;
  down) down ;;
  *) usage ;;
esac
