#!/usr/bin/env bash
# Build (once) and cache a Debian 12 root filesystem that systemd-nspawn can boot for the deployment test.
#
# Usage: tests/deploy/build_rootfs.sh [CACHE_DIR]     (default /var/cache/converter-deploy-test)
# Prints the path of the ready root filesystem on its last line.
#
# The image holds what a fresh Debian 12 server holds plus the heavy packages the roles install (ffmpeg, the Vulkan
# loader and Mesa drivers, prometheus, python3-venv, postgresql-15, haproxy): the playbook still installs them with
# `apt state=present`, but does not download ~300 MB on every test run. Services that the roles manage are disabled
# in the image (the containers share the host network, so three prometheus instances would fight over :9090), and
# PostgreSQL gets no cluster: converter_postgresql creates its own (as on a fresh host, where it tells the package
# not to).
set -euo pipefail

CACHE_DIR=${1:-/var/cache/converter-deploy-test}
MIRROR=${DEPLOY_TEST_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEPLOY_TEST_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
BASE_INCLUDE=systemd,systemd-sysv,dbus,python3,openssh-server,ca-certificates
EXTRA_PACKAGES="python3-venv python3-apt curl ffmpeg libvulkan1 mesa-vulkan-drivers prometheus postgresql-15 haproxy"
# Bump when the recipe changes: a new key means a new image.
RECIPE_VERSION=2
KEY=$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$BASE_INCLUDE" "$EXTRA_PACKAGES" | sha256sum | cut -c1-12)
ROOT="$CACHE_DIR/rootfs-$SUITE-$KEY"
# Stage 1 depends on the debootstrap inputs only: a new package list reuses it.
STAGE1_KEY=$(printf '%s\n' "$SUITE" "$BASE_INCLUDE" | sha256sum | cut -c1-12)

if [[ -f "$ROOT/.converter-rootfs-ready" ]]; then
  echo "$ROOT"
  exit 0
fi

[[ $EUID -eq 0 ]] || { echo "build_rootfs.sh: must run as root" >&2; exit 1; }
for tool in debootstrap systemd-nspawn; do
  command -v "$tool" >/dev/null || { echo "build_rootfs.sh: $tool is missing (apt-get install debootstrap systemd-container)" >&2; exit 1; }
done

mkdir -p "$CACHE_DIR"
TMP="$CACHE_DIR/build-$KEY-$$"
cleanup() { rm -rf --one-file-system "$TMP"; }
trap cleanup EXIT

# Stage 1 (debootstrap, ~1 min) is kept on its own so that a failure later does not repeat it.
STAGE1="$CACHE_DIR/stage1-$SUITE-$STAGE1_KEY"
if [[ ! -f "$STAGE1/.converter-stage1-ready" ]]; then
  echo "building $STAGE1 (debootstrap $SUITE from $MIRROR)" >&2
  rm -rf --one-file-system "$STAGE1.tmp"
  debootstrap --variant=minbase --include="$BASE_INCLUDE" "$SUITE" "$STAGE1.tmp" "$MIRROR" >&2
  touch "$STAGE1.tmp/.converter-stage1-ready"
  mv "$STAGE1.tmp" "$STAGE1"
fi
echo "building $ROOT from $STAGE1" >&2
cp -a "$STAGE1" "$TMP"
rm -f "$TMP/.converter-stage1-ready"

cat >"$TMP/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# No recommends, like the roles; no documentation in the image.
cat >"$TMP/etc/apt/apt.conf.d/90converter-test" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
cat >"$TMP/etc/dpkg/dpkg.cfg.d/90converter-test-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
cp /etc/resolv.conf "$TMP/etc/resolv.conf" 2>/dev/null || true

# No cluster from the postgresql-15 package (its postinst reads createcluster.d); no service started while
# installing (policy-rc.d).
mkdir -p "$TMP/etc/postgresql-common/createcluster.d"
echo 'create_main_cluster = false' >"$TMP/etc/postgresql-common/createcluster.d/00-converter-test-image.conf"
printf '#!/bin/sh\nexit 101\n' >"$TMP/usr/sbin/policy-rc.d"
chmod 755 "$TMP/usr/sbin/policy-rc.d"

run_in() { systemd-nspawn --quiet --register=no --keep-unit --resolv-conf=replace-host -M converter-build -D "$TMP" "$@"; }
run_in /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -q update >&2
run_in /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -q -y install $EXTRA_PACKAGES >&2
run_in /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -q -y dist-upgrade >&2
run_in /usr/bin/apt-get clean >&2
rm -f "$TMP/usr/sbin/policy-rc.d"
if [[ -n "$(ls -A "$TMP/etc/postgresql/15" 2>/dev/null)" ]]; then
  echo "build_rootfs.sh: the postgresql-15 package created a cluster in the image" >&2
  exit 1
fi

# The roles enable what they manage; nothing else may listen on the shared host network.
run_in /bin/systemctl disable prometheus.service haproxy.service >&2 || true
run_in /bin/systemctl mask systemd-networkd.service systemd-networkd.socket systemd-resolved.service \
  apt-daily.timer apt-daily-upgrade.timer >&2 || true
# sshd: root logs in with a key only; each container gets its own port at boot time.
mkdir -p "$TMP/root/.ssh"
chmod 700 "$TMP/root/.ssh"
cat >"$TMP/etc/ssh/sshd_config.d/00-converter-test.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF
: >"$TMP/etc/machine-id"
rm -f "$TMP/etc/hostname"

touch "$TMP/.converter-rootfs-ready"
mv "$TMP" "$ROOT"
trap - EXIT
echo "$ROOT"
