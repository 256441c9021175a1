#!/usr/bin/env bash
# The CI test of the systemd walk-through (deploy/README.md), as root on a fresh Debian machine:
#
#   FERRY_BIN=target/release/ferry deploy/systemd/test.sh
#   deploy/systemd/test.sh --verify-only     # only systemd-analyze verify; no root needed
#
# It checks the units with systemd-analyze verify, writes a pair and a witness with ferry init
# (b1, b2 and w1, all on 127.0.0.1), installs b1 with install.sh into the real /etc/ferry,
# /var/lib/ferry and /usr/local/bin as the walk-through does, and runs b1 as its unit would:
# the unit's own ExecStart and ExecStop lines, as the ferry user. systemd need not run the
# machine (CI machines are often containers): the test does what the unit asks of systemd,
# save its sandbox. b2 and w1 stand in for the other machines, from their directories.
# Then: a stop drains b1 through the restart gate; the lease is released once b1 is back; and
# with b2 gone the gate refuses, which ExecStop reports with exit 3.
#
# It refuses to run where Ferry is installed already (it removes all it installed at the end).
# FERRY_TEST_BASE_PORT (default 17100): the ports of the three nodes, base to base+22.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UNITS=(ferry-broker@.service ferry-host.service)
ETC=/etc/ferry
STATE=/var/lib/ferry
BIN=/usr/local/bin/ferry
UNIT=/etc/systemd/system/ferry-broker@.service
BASE=${FERRY_TEST_BASE_PORT:-17100}
STARTED=$(date +%s)

step() { printf '\n== [%3ds] %s\n' $(($(date +%s) - STARTED)) "$*"; }
note() { echo "   $*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Runs "$@" until it succeeds, for at most $1 seconds; on time out, shows its last output.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + seconds)) out
  until out=$("$@" 2>&1); do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      printf '%s\n' "$out" | sed 's/^/   | /' >&2
      fail "$what: not within $seconds s"
    fi
    sleep 1
  done
  note "$what"
}

# systemd-analyze verify exits 0 on many mistakes (an unknown key, a value it cannot parse:
# "ignoring"), so any word it says is a failure.
verify() {
  local out
  out=$(systemd-analyze verify --man=no "$@" 2>&1) || {
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify $*"
  }
  [ -z "$out" ] || {
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify $*: warnings"
  }
  note "verified: $*"
}

need_systemd_analyze() {
  command -v systemd-analyze >/dev/null && return
  [ "$(id -u)" -eq 0 ] || fail "systemd-analyze is missing (Debian: apt-get install systemd)"
  step "installing systemd-analyze (Debian package systemd; systemd need not run the machine)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
}

# The units as shipped, before anything is installed: verify checks that each command exists,
# so /usr/local/bin/ferry becomes the binary under test (or /bin/true) in copies in a
# temporary directory; verify names a template's instance %i. Nothing else changes.
verify_shipped() {
  local bin=$1 dir
  dir=$(mktemp -d)
  for unit in "${UNITS[@]}"; do
    sed "s|/usr/local/bin/ferry|$bin|g" "$HERE/$unit" >"$dir/$unit"
  done
  local rc=0
  (cd "$dir" && verify "${UNITS[@]/#/./}") || rc=$?
  rm -rf "$dir"
  [ $rc -eq 0 ] || exit $rc
}

if [ "${1:-}" = --verify-only ]; then
  need_systemd_analyze
  step "systemd-analyze verify (the units as shipped, ExecStart's binary: ${FERRY_BIN:-/bin/true})"
  verify_shipped "$(readlink -f "${FERRY_BIN:-/bin/true}")"
  exit 0
fi
[ $# -eq 0 ] || fail "usage: FERRY_BIN=target/release/ferry $0 [--verify-only]"

# --- Preconditions --------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || fail "run me as root: I install into $ETC, $STATE, $BIN and create the ferry user"
[ -n "${FERRY_BIN:-}" ] || fail "say which binary: FERRY_BIN=target/release/ferry $0"
FERRY=$(readlink -f "$FERRY_BIN")
if [ ! -f "$FERRY" ] || [ ! -x "$FERRY" ]; then
  fail "FERRY_BIN=$FERRY_BIN is not an executable file"
fi
for tool in setpriv prlimit useradd userdel; do
  command -v $tool >/dev/null || fail "$tool is missing (Debian: util-linux, passwd)"
done
for path in "$ETC" "$STATE" "$BIN" "$UNIT"; do
  [ ! -e "$path" ] || fail "$path exists: this test installs there and removes it all at the end; run it where Ferry is not installed"
done
! getent passwd ferry >/dev/null || fail "user ferry exists: run me where Ferry is not installed"
! getent group ferry >/dev/null || fail "group ferry exists: run me where Ferry is not installed"
need_systemd_analyze

TMP=$(mktemp -d /tmp/ferry-systemd-test.XXXXXX)
CLUSTER=$TMP/cluster
PIDS=()
# Kills what the test started and removes what it installed (none of which was there before).
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ $rc -ne 0 ]; then
    for log in "$TMP"/*.log; do
      echo "--- last lines of $log" >&2
      tail -n 40 "$log" >&2
    done
  fi
  rm -rf "$ETC" "$STATE" "$BIN" "$UNIT"
  userdel ferry 2>/dev/null
  groupdel ferry 2>/dev/null
  rm -rf "$TMP"
  [ $rc -eq 0 ] && echo && echo "PASS ($(($(date +%s) - STARTED)) s)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ADMIN=("$FERRY" admin --config "$ETC/client.toml")
status() { timeout 20 "${ADMIN[@]}" status; }

# --- 1. The units ---------------------------------------------------------------------------------
step "1. systemd-analyze verify: the units as shipped"
verify_shipped "$FERRY"

# --- 2. ferry init --------------------------------------------------------------------------------
step "2. ferry init: b1, b2 and the witness w1, on 127.0.0.1 (ports from $BASE), --data-dir $STATE"
"$FERRY" init --out "$CLUSTER" --node b1=127.0.0.1 --node b2=127.0.0.1 --witness w1=127.0.0.1 \
  --base-port "$BASE" --data-dir "$STATE" >"$TMP/init.log" 2>&1 || {
  cat "$TMP/init.log" >&2
  fail "ferry init"
}
for node in b1 b2 w1; do
  dir=$CLUSTER/nodes/$node
  got=$(find "$dir" -mindepth 1 -printf '%f\n' | sort | tr '\n' ' ')
  want=$(printf '%s\n' admin.token ca.pem client.toml "$node.key" "$node.pem" "$node.toml" | sort | tr '\n' ' ')
  [ "$got" = "$want" ] || fail "$dir holds: $got; expected: $want"
  for secret in "$node.key" admin.token; do
    [ "$(stat -c %a "$dir/$secret")" = 600 ] || fail "$dir/$secret is not mode 0600"
  done
  grep -qx "data_dir = \"$STATE\"" "$dir/$node.toml" || fail "$dir/$node.toml: no data_dir = \"$STATE\""
done
note "each of nodes/b1, b2, w1 holds its six files, no ca.key; data_dir = \"$STATE\""

# --- 3. install.sh refuses ------------------------------------------------------------------------
step "3. install.sh refuses a node directory holding ca.key, and a data_dir it cannot write"
refused() { # DIR WORD: install.sh DIR must fail, saying WORD, and install nothing
  local rc=0
  FERRY_BIN=$FERRY FERRY_START=no bash "$HERE/install.sh" "$1" >"$TMP/refused.out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || fail "install.sh $1 did not refuse"
  grep -q -- "$2" "$TMP/refused.out" || {
    cat "$TMP/refused.out" >&2
    fail "install.sh $1: no word of $2"
  }
  for path in "$ETC" "$BIN" "$UNIT"; do [ ! -e "$path" ] || fail "install.sh refused $1, yet wrote $path"; done
  ! getent passwd ferry >/dev/null || fail "install.sh refused $1, yet created the user ferry"
  sed -n '1,3s/^/   | /p' "$TMP/refused.out"
}
cp -a "$CLUSTER/nodes/b1" "$TMP/with-ca-key"
cp "$CLUSTER/ca.key" "$TMP/with-ca-key/"
refused "$TMP/with-ca-key" ca.key
cp -a "$CLUSTER/nodes/b1" "$TMP/relative-data"
sed -i 's|^data_dir = .*|data_dir = "data"|' "$TMP/relative-data/b1.toml"
refused "$TMP/relative-data" data_dir

# --- 4. install.sh b1 -----------------------------------------------------------------------------
step "4. install.sh $CLUSTER/nodes/b1 (twice: a second run is harmless)"
for run in 1 2; do
  FERRY_BIN=$FERRY FERRY_START=no bash "$HERE/install.sh" "$CLUSTER/nodes/b1" >"$TMP/install.out" 2>&1 || {
    cat "$TMP/install.out" >&2
    fail "install.sh, run $run"
  }
done
sed 's/^/   | /' "$TMP/install.out"
grep -q 'systemctl daemon-reload && systemctl enable --now ferry-broker@b1' "$TMP/install.out" ||
  fail "install.sh did not say how to start ferry-broker@b1"
mode() { # PATH WANT: mode, owner and group of PATH
  local got
  got=$(stat -c '%a %U %G' "$1")
  [ "$got" = "$2" ] || fail "$1 is $got; expected $2"
}
mode "$ETC" "750 root ferry"
for name in b1.key admin.token; do mode "$ETC/$name" "640 root ferry"; done
for name in b1.toml b1.pem ca.pem client.toml; do mode "$ETC/$name" "644 root ferry"; done
[ ! -e "$ETC/ca.key" ] || fail "$ETC/ca.key exists"
mode "$BIN" "755 root root"
mode "$STATE" "700 ferry ferry"
mode "$UNIT" "644 root root"
IFS=: read -r _ _ _ _ _ home shell < <(getent passwd ferry)
[ "$home" = "$STATE" ] || fail "ferry's home is $home"
case $shell in */nologin | /bin/false) ;; *) fail "ferry's shell is $shell" ;; esac
as_ferry() { setpriv --reuid=ferry --regid=ferry --init-groups --no-new-privs -- "$@"; }
as_ferry test -r "$ETC/b1.key" || fail "the ferry user cannot read $ETC/b1.key"
as_ferry test -r "$ETC/admin.token" || fail "the ferry user cannot read $ETC/admin.token"
! as_ferry touch "$ETC/written-by-ferry" 2>/dev/null || fail "the ferry user can write in $ETC"
for secret in b1.key admin.token; do
  ! setpriv --reuid=65534 --regid=65534 --clear-groups -- test -r "$ETC/$secret" ||
    fail "another user can read $ETC/$secret"
done
note "$ETC 0750 root:ferry; keys and token 0640, the rest 0644; $BIN 0755; $STATE 0700 ferry"
note "user ferry (home $home, shell $shell) reads the key and token, writes nothing in $ETC; others read neither"

step "4b. systemd-analyze verify: the unit as installed, unchanged ($BIN exists now)"
verify "$UNIT"

# --- 5. b2 and w1 ---------------------------------------------------------------------------------
# They stand in for the other machines. Sharing this one, they cannot share /var/lib/ferry:
# each keeps its store in its own directory (data_dir "data", relative to its config).
step "5. b2 and w1 from their directories, their stores in them"
for node in b2 w1; do
  dir=$CLUSTER/nodes/$node
  sed -i 's|^data_dir = .*|data_dir = "data"|' "$dir/$node.toml"
  "$FERRY" broker --config "$dir/$node.toml" >"$TMP/$node.log" 2>&1 &
  PIDS+=($!)
  note "$node: pid $!"
done
B2_PID=${PIDS[0]}

# --- 6. b1 as its unit runs it ----------------------------------------------------------------------
# The unit's command lines for instance b1 (%i), as words in CMD: systemd's quoting is the
# shell's for these lines, and $$ is a literal $.
unit_command() {
  local line
  line=$(sed -n "s/^$1=//p" "$UNIT")
  if [ -z "$line" ] || [ "$(printf '%s\n' "$line" | wc -l)" -ne 1 ]; then
    fail "$UNIT: not one $1= line"
  fi
  line=${line//%i/b1}
  line=${line//'$$'/'$'}
  case $line in /*) ;; *) fail "$UNIT: $1= does not start with an absolute path (a prefix this test does not know?)" ;; esac
  # shellcheck disable=SC2016 # a literal ${
  case $line in *%* | *'${'*) fail "$UNIT: $1= has a specifier or variable this test does not know: $line" ;; esac
  eval "CMD=($line)"
}
unit_value() { sed -n "s/^$1=//p" "$UNIT"; }
if [ "$(unit_value User)" != ferry ] || [ "$(unit_value Group)" != ferry ]; then
  fail "$UNIT: not User=ferry, Group=ferry"
fi
[ "$(unit_value StateDirectory)" = ferry ] || fail "$UNIT: not StateDirectory=ferry"
NOFILE=$(unit_value LimitNOFILE)
if ! prlimit --nofile="$NOFILE:$NOFILE" true 2>/dev/null; then
  # A container without CAP_SYS_RESOURCE (Docker's default) cannot raise its hard limit.
  note "LimitNOFILE=$NOFILE is above this machine's hard limit, which cannot be raised here: $(ulimit -Hn)"
  NOFILE=$(ulimit -Hn)
fi
UMASK=$(unit_value UMask)
# What systemd does for a command of the unit: the user and group, no new privileges, the
# limit on open files, the umask, / as the working directory and a clean environment
# ($MAINPID for ExecStop while the broker runs). Not its sandbox (namespaces).
# as_unit [PREFIX...] -- COMMAND...: runs PREFIX (timeout, say) with COMMAND as the unit would.
# It execs: call it in the background (then $! is the command's pid) or in a subshell.
as_unit() {
  local prefix=()
  while [ "$1" != -- ]; do
    prefix+=("$1")
    shift
  done
  shift
  cd /
  umask "${UMASK:-0022}"
  exec "${prefix[@]}" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$home" USER=ferry LOGNAME=ferry SHELL="$shell" ${MAINPID:+MAINPID=$MAINPID} \
    prlimit --nofile="$NOFILE:$NOFILE" -- \
    setpriv --reuid=ferry --regid=ferry --init-groups --no-new-privs -- "$@"
}
# Waits at most $2 seconds for the process $1 (a child) to exit: its exit code in EXIT_RC.
wait_exit() {
  local pid=$1 deadline=$(($(date +%s) + $2)) state
  while state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) && [ "${state%% *}" != Z ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      kill -KILL "$pid"
      fail "pid $pid did not exit within $2 s"
    fi
    sleep 0.2
  done
  EXIT_RC=0
  wait "$pid" 2>/dev/null || EXIT_RC=$?
  local alive=()
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || alive+=("$p"); done
  PIDS=("${alive[@]}")
}
start_b1() {
  unit_command ExecStart
  note "ExecStart: ${CMD[*]}"
  MAINPID='' as_unit -- "${CMD[@]}" >>"$TMP/b1.log" 2>&1 &
  B1_PID=$!
  PIDS+=("$B1_PID")
  sleep 1
  kill -0 "$B1_PID" 2>/dev/null || fail "b1 exited at once"
  [ "$(stat -c %U "/proc/$B1_PID")" = ferry ] || fail "b1 (pid $B1_PID) does not run as ferry"
  [ "$(readlink "/proc/$B1_PID/exe")" = "$BIN" ] || fail "pid $B1_PID is not $BIN"
  note "b1: pid $B1_PID, user ferry, $BIN"
}
# Runs the unit's ExecStop as systemd would (with $MAINPID as the caller sets it), bounded by
# TimeoutStopSec: its exit code in STOP_RC, its output in $TMP/stop.out and stop.err.
exec_stop() {
  unit_command ExecStop
  note "ExecStop: ${CMD[*]}   (MAINPID=${MAINPID:-unset})"
  local seconds
  seconds=$(unit_value TimeoutStopSec)
  STOP_RC=0
  (as_unit timeout --kill-after=5 "${seconds:-90}" -- "${CMD[@]}") \
    >"$TMP/stop.out" 2>"$TMP/stop.err" || STOP_RC=$?
  sed 's/^/   stdout | /' "$TMP/stop.out"
  sed 's/^/   stderr | /' "$TMP/stop.err"
}
# Is there a maintenance lease on b1? (Fails when the status cannot be had.)
lease_on_b1() {
  local out
  out=$(status) || fail "ferry admin status: $out"
  grep -q 'maintenance: b1' <<<"$out"
}
show_status() {
  local out
  out=$(status 2>&1) || true
  awk '{ print "   | " $0 }' <<<"$out"
}

step "6. b1 the way ferry-broker@b1 starts it, as the user ferry"
start_b1

step "7. the cluster: b1, b2 and w1 healthy, a leader"
cluster_ready() {
  local out
  out=$(status) || return 1
  printf '%s\n' "$out"
  grep -q '^cluster .*: leader [^-]' <<<"$out" || return 1
  for node in b1 b2 w1; do
    awk -v n="$node" '$1 == n' <<<"$out" | grep -qw healthy || return 1
  done
}
wait_until 60 "b1, b2 and w1 are healthy and have a leader" cluster_ready
show_status

step "8. the gate allows b1's restart (after its stabilization time, 30 s by default)"
wait_until 90 "ferry admin restart-check b1: allowed" timeout 20 "${ADMIN[@]}" restart-check b1

step "9. ExecStop after a crash (\$MAINPID unset): nothing to drain, exit 0, no lease"
MAINPID='' exec_stop
[ "$STOP_RC" -eq 0 ] || fail "ExecStop without \$MAINPID exited $STOP_RC"
! lease_on_b1 || fail "ExecStop without \$MAINPID took a lease on b1"
note "exit 0, no lease"

step "10. systemctl stop: ExecStop drains b1 through the gate (exit 0)"
MAINPID=$B1_PID exec_stop
[ "$STOP_RC" -eq 0 ] || fail "ExecStop exited $STOP_RC, not 0 (drained)"
lease_on_b1 || fail "b1 holds no maintenance lease after its drain"
note "exit 0; b1 holds the maintenance lease"

step "10b. ExecStop again (b1 drained by hand, then systemctl restart): exit 0"
MAINPID=$B1_PID exec_stop
[ "$STOP_RC" -eq 0 ] || fail "a second ExecStop exited $STOP_RC, not 0"

step "11. then systemd's SIGTERM: b1 exits cleanly"
kill -TERM "$B1_PID"
wait_exit "$B1_PID" 30
case $EXIT_RC in
  0) note "b1 exited 0" ;;
  143) note "b1 died of SIGTERM (systemd counts that as a clean stop)" ;;
  *) fail "b1 exited $EXIT_RC after SIGTERM" ;;
esac
if [ ! -d "$STATE/raft" ] || [ "$(stat -c %U "$STATE/raft")" != ferry ]; then
  fail "no store of ferry's in $STATE/raft"
fi
# Where a sandbox of ProtectSystem=strict lets it write nothing (PrivateTmp gives it /tmp).
stray=$(find /etc /usr /var /opt /srv /home /root /run -xdev \( -path /var/tmp -o -path "$STATE" \) \
  -prune -o -user ferry -print 2>/dev/null || true)
[ -z "$stray" ] || fail "the ferry user wrote outside $STATE (ProtectSystem=strict would refuse): $stray"
note "its store is $STATE/raft, ferry's; it wrote nothing elsewhere"

step "12. b1 back: its lease is released once it is healthy for the stabilization time"
start_b1
lease_released() {
  local out
  out=$(status) || return 1
  printf '%s\n' "$out"
  ! grep -q 'maintenance: b1' <<<"$out" && awk '$1 == "b1"' <<<"$out" | grep -qw serving
}
wait_until 90 "b1 serves; no maintenance lease" lease_released
show_status

step "13. b2 fails: the gate refuses to take b1 down as well"
kill -KILL "$B2_PID"
wait_exit "$B2_PID" 10
refused_now() {
  local rc=0
  timeout 20 "${ADMIN[@]}" restart-check b1 || rc=$?
  [ $rc -eq 3 ]
}
wait_until 30 "ferry admin restart-check b1: refused (exit 3)" refused_now
timeout 20 "${ADMIN[@]}" restart-check b1 2>&1 | sed 's/^/   | /' || true

step "14. systemctl stop now: ExecStop exits 3, the gate's reasons in the journal (here: below)"
MAINPID=$B1_PID exec_stop
[ "$STOP_RC" -eq 3 ] || fail "ExecStop exited $STOP_RC, not 3 (refused)"
[ -s "$TMP/stop.err" ] || fail "ExecStop was refused without a word on stderr"
grep -q 'FAIL' "$TMP/stop.out" "$TMP/stop.err" || fail "ExecStop was refused without naming a failed check"
! lease_on_b1 || fail "a refused drain left a lease on b1"
kill -0 "$B1_PID" || fail "b1 stopped"
note "exit 3, reasons given, no lease; b1 still runs. systemd would now send SIGTERM all the same:"
note "b1's sessions would fail over as after a crash (deploy/README.md)"
