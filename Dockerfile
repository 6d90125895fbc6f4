# retinad's container image: Debian bookworm with the retinad deb that `make package` builds
# (packaging/build.sh), so the image ships exactly the files the deb and the rpm ship:
# retinad and its pure-Python dependencies in /usr/lib/retinad, the BPF C in
# /usr/share/retinad/bpf (compiled by bcc at start-up against the node's kernel headers,
# mounted read-only from the host), /usr/bin/retinad. The deb's Depends come from Debian
# (python3-bpfcc wraps Debian's libbcc, so it cannot come from PyPI).
#
# The build context (retinad.deb + this file) is made by scripts/build-image.sh. With a
# registry:
#   RETINAD_IMAGE_BASE=debian:bookworm-slim RETINAD_IMAGE=registry.example/retinad:0.1.0 \
#     scripts/build-image.sh && docker push registry.example/retinad:0.1.0
# and apt below fetches the deb's dependencies. Without one (this project's test machines),
# the same script imports a debootstrap'd bookworm rootfs that already has them as the base,
# so apt installs the deb alone and needs no network.
#
# How to run it (every capability and mount, with its reason): docs/KUBERNETES.md.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY retinad.deb /tmp/retinad.deb
# The deb's postinst compiles the .pyc (as on a host) and, with no systemd running in the
# build, starts nothing. Its conffile /etc/retinad/retinad.toml (the embedded defaults) is
# what runs unless a config is mounted over it (the DaemonSet's ConfigMap).
RUN set -e; \
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/retinad.deb iproute2 ca-certificates \
         >/tmp/apt.log 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           /tmp/retinad.deb iproute2 ca-certificates; \
    fi; \
    rm -rf /tmp/retinad.deb /tmp/apt.log /var/lib/apt/lists/* /var/cache/apt/*.bin
ENV PYTHONUNBUFFERED=1
EXPOSE 10095
# `docker run IMAGE check` runs the feature probes.
ENTRYPOINT ["/usr/bin/retinad"]
