#!/bin/sh
# Install what the tests drive (real kernel, real runtime, reference plugins), then run
# every test. Needs root: tests build network namespaces (never touching the root one).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No package may start its daemon (nginx, haproxy) in the machine's own namespace.
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
fi
apt-get install -y -qq iproute2 nftables iptables iputils-ping conntrack busybox-static \
    containernetworking-plugins podman runc util-linux etcd-server protobuf-compiler \
    iperf3 dnsmasq-base dnsutils dnsperf bird2 frr gobgpd curl openssl wrk nginx-light \
    haproxy >/dev/null
if [ -n "$made_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
fi
cargo test --workspace --locked
