#!/usr/bin/env bash
# Make this machine able to run the container tests (make test-containers), as root:
# - the stand-in base images and rootful podman with runc: ../shared/containers/stand-in-images.sh
#   (or $DIN_STAND_IN_SCRIPT), when it is there;
# - iptables, which netavark (podman's network stack) runs to set up every compose network.
# Without the script nothing is installed, and the tests skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
script=${DIN_STAND_IN_SCRIPT:-../shared/containers/stand-in-images.sh}
if [ "$(id -u)" != 0 ]; then
  echo "ensure_podman: not root; rootful podman is needed, the container tests will skip"
  exit 0
fi
if [ -f "$script" ]; then
  bash "$script"
else
  echo "ensure_podman: $script is absent; using podman and the base images as they are"
fi
if command -v podman >/dev/null && ! command -v iptables >/dev/null; then
  apt-get install -y -qq --no-install-recommends iptables >/dev/null
fi
