#!/bin/sh
# Build Trellis and bring up the demo lab (see README): a server and NODES agents in
# cluster mode on BACKEND (vxlan, host-gw, hybrid, udp, l2, bgp), PODS pods per node, the
# reachability matrix, and where to look. `./target/release/trellis lab down demo` removes it.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq iproute2 nftables iputils-ping busybox-static protobuf-compiler >/dev/null
cargo build --release --locked
./target/release/trellis lab down demo >/dev/null 2>&1 || true
exec ./target/release/trellis lab up --name demo --nodes "${NODES:-3}" --backend "${BACKEND:-vxlan}" --pods "${PODS:-2}"
