#!/bin/sh
# Install what the tests drive (real kernel, real runtime, reference plugins), then run
# every test. Needs root: tests build network namespaces (never touching the root one).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq iproute2 nftables iptables iputils-ping conntrack busybox-static \
    containernetworking-plugins podman runc util-linux etcd-server protobuf-compiler \
    iperf3 dnsmasq-base dnsutils dnsperf bird2 frr gobgpd >/dev/null
cargo test --workspace --locked
