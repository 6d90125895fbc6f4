# retinad's container image: Debian bookworm, bcc from Debian (python3-bpfcc wraps Debian's
# libbcc, so it cannot come from PyPI), retinad and its pure-Python dependencies in
# /usr/lib/retinad, the BPF C in /usr/share/retinad/bpf (compiled by bcc at start-up against
# the node's kernel headers, mounted read-only from the host).
#
# The build context is made by scripts/build-image.sh (a wheel of this checkout installed
# with pip --target into ./lib, plus bpf/). With a registry:
#   RETINAD_IMAGE_BASE=debian:bookworm-slim RETINAD_IMAGE=registry.example/retinad:0.1.0 \
#     scripts/build-image.sh && docker push registry.example/retinad:0.1.0
# Without one (this project's test machines), the same script imports a debootstrap'd
# bookworm rootfs that already has python3-bpfcc as the base, so the RUN below installs
# nothing and needs no network. Once the deb from packaging/ lands, the image will install
# that deb instead of ./lib (same paths).
#
# How to run it (every capability and mount, with its reason): docs/KUBERNETES.md.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN if ! dpkg-query -W -f='${Status}' python3-bpfcc 2>/dev/null | grep -q 'ok installed'; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3 python3-bpfcc iproute2 ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY lib/ /usr/lib/retinad/
COPY bpf/ /usr/share/retinad/bpf/
ENV PYTHONPATH=/usr/lib/retinad \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 10095
# Reads /etc/retinad/retinad.toml when mounted there (the DaemonSet's ConfigMap), else the
# embedded defaults; `docker run IMAGE check` runs the feature probes.
ENTRYPOINT ["/usr/bin/python3", "-m", "retinad"]
