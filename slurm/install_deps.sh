#!/usr/bin/env bash
# Install the Debian packages for a local one-node SLURM cluster (see slurm/local_cluster.sh).
#
# Idempotent and fast when everything is present: dpkg-query decides, and apt-get (including its
# `update`) runs only for packages that are missing. Needs root and a Debian/Ubuntu apt.
#
#   slurm/install_deps.sh          # install what is missing
set -euo pipefail

# slurmdbd + mariadb-server are not optional: without accounting `sacct` is disabled and submitit
# can wait forever on a cancelled or killed job.
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

missing=()
for pkg in "${PACKAGES[@]}"; do
    # `install ok installed` is dpkg's status for a fully configured package; anything else
    # (absent, half-configured, removed-with-config) gets (re)installed.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install_deps: all SLURM packages already installed"
    exit 0
fi

if [[ $EUID -ne 0 ]]; then
    echo "install_deps: need root to install: ${missing[*]}" >&2
    exit 1
fi

echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The package postinst scripts try to start services; without systemd (containers, CI) that fails
# noisily or hangs. policy-rc.d exit 101 tells invoke-rc.d "not allowed", so nothing is started and
# local_cluster.sh owns the daemons. Only created if absent, and removed again afterwards.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if ((own_policy)); then rm -f "$policy"; fi; }
trap cleanup EXIT

# Try with the package index as it is (fast); a missing or stale index makes apt fail to find
# or fetch a package, so refresh it and try once more.
apt_install() { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
if ! apt_install 2>/dev/null; then
    echo "install_deps: refreshing the package index (apt-get update)"
    apt-get update -qq
    apt_install
fi
echo "install_deps: done"
