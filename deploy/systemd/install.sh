#!/usr/bin/env bash
# Installs one Ferry node on its own machine, as root: the ferry user, the binary, the node's
# files in /etc/ferry and the unit ferry-broker@NODE. Walk-through: deploy/README.md.
#
#   install.sh NODE_DIR
#
# NODE_DIR is the node's directory written by `ferry init ... --data-dir /var/lib/ferry`
# (DIR/nodes/NODE/: NODE.toml, NODE.pem, NODE.key, ca.pem, admin.token, client.toml), copied to
# this machine. Keep this script beside the units (deploy/systemd/).
#
# Environment:
#   FERRY_BIN    the binary to install as /usr/local/bin/ferry (default: ./ferry, else the
#                ferry on the PATH)
#   FERRY_START  auto (default): when systemd runs this machine, enable and start the unit (a
#                unit running already is left running); no: only say how
#
# Running it again is harmless: it installs the files again and leaves a running node alone.
set -euo pipefail
shopt -s nullglob

ETC=/etc/ferry
STATE=/var/lib/ferry
BIN=/usr/local/bin/ferry
UNITS=/etc/systemd/system

say() { echo "install.sh: $*"; }
die() {
  echo "install.sh: error: $*" >&2
  exit 1
}

if [ $# -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
fi
[ "$(id -u)" -eq 0 ] || die "run me as root: I create the ferry user and write $ETC, $BIN and $UNITS"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
unit_file="$here/ferry-broker@.service"
[ -f "$unit_file" ] || die "$unit_file is missing: run me from deploy/systemd/, beside the units"
case ${FERRY_START:-auto} in
  auto | no) ;;
  *) die "FERRY_START=$FERRY_START: say auto or no" ;;
esac

node_dir=${1%/}
[ -d "$node_dir" ] || die "$node_dir is not a directory: give the node's directory, DIR/nodes/NODE/ as written by ferry init"

# --- What the node's directory holds -----------------------------------------------------------
for f in "$node_dir"/ca.key*; do
  die "$f is the cluster CA's private key: it never goes on a node. Whoever holds it can mint a
certificate for any node and impersonate a broker to every client and host agent. Keep it on
the machine where ferry init ran (it signs --join, --renew and --rotate-ca), delete it from
$node_dir, and run me again."
done

configs=()
for f in "$node_dir"/*.toml; do
  [ "$(basename "$f")" = client.toml ] || configs+=("$f")
done
[ ${#configs[@]} -eq 1 ] || die "$node_dir should hold one node config, NODE.toml, beside client.toml; found ${#configs[@]}: ${configs[*]:-none}"
node=$(basename "${configs[0]}" .toml)
[[ $node =~ ^[A-Za-z0-9_-]+$ ]] || die "node id '$node' (from ${configs[0]}): letters, digits, - and _ only"

# A top-level string of a node config ("key = value" lines before the first [table]).
top_level() {
  sed -n -e '/^[[:space:]]*\[/q' \
    -e "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$2" | head -n 1
}
config_id=$(top_level node_id "${configs[0]}")
[ "$config_id" = "$node" ] || die "${configs[0]} says node_id = \"$config_id\": the file must be named after its node (the unit reads $ETC/%i.toml)"

missing=()
for name in "$node.toml" "$node.pem" "$node.key" ca.pem admin.token client.toml; do
  [ -f "$node_dir/$name" ] || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] || die "$node_dir lacks ${missing[*]}: copy the whole of DIR/nodes/$node/ as ferry init wrote it
(client.toml and admin.token are what the unit's stop, a drain through the restart gate, uses)"

# The unit can write nowhere but $STATE (StateDirectory=ferry; ProtectSystem=strict).
data_dir=$(top_level data_dir "$node_dir/$node.toml")
case $data_dir in
  "$STATE" | "$STATE"/*) ;;
  *) die "$node.toml keeps the node's store in data_dir = \"$data_dir\"$(
    case $data_dir in /*) ;; *) echo " (relative to the file: $ETC/$data_dir)" ;; esac
  ), where the unit may not write: it may write only in $STATE. Write the cluster with
ferry init ... --data-dir $STATE, or set data_dir = \"$STATE\" in $node.toml, and run me again." ;;
esac

# --- The binary -----------------------------------------------------------------------------------
bin=${FERRY_BIN:-}
if [ -z "$bin" ]; then
  if [ -f ./ferry ]; then
    bin=./ferry
  else
    bin=$(command -v ferry) || die "no ferry binary: put it in the current directory, or say FERRY_BIN=/path/to/ferry"
  fi
fi
[ -f "$bin" ] || die "FERRY_BIN=$bin: no such file"
if [ "$(readlink -f "$bin")" = "$(readlink -f "$BIN" || true)" ]; then
  version=$("$BIN" --version) || die "$BIN does not run on this machine"
  say "$BIN: $version (already in place)"
else
  install -d -m 0755 "$(dirname "$BIN")"
  # Under a new name first (copies may have lost the executable bit, and a binary built for
  # another machine should fail here), then a rename: a running broker keeps its binary.
  install -m 0755 -o root -g root "$bin" "$BIN.new.$$"
  version=$("$BIN.new.$$" --version) || {
    rm -f "$BIN.new.$$"
    die "$bin does not run on this machine (built for another architecture or C library?)"
  }
  mv -f "$BIN.new.$$" "$BIN"
  say "$BIN: $version"
fi

# --- The ferry user --------------------------------------------------------------------------------
nologin=/usr/sbin/nologin
[ -x $nologin ] || nologin=/sbin/nologin
[ -x $nologin ] || nologin=/bin/false
if ! getent group ferry >/dev/null; then
  groupadd --system ferry
  say "group ferry created"
fi
if ! getent passwd ferry >/dev/null; then
  useradd --system --gid ferry --home-dir "$STATE" --no-create-home --shell "$nologin" \
    --comment "Ferry broker" ferry
  say "user ferry created (home $STATE, no login)"
fi

# --- The node's files: root's, readable by the ferry group, the secrets by it alone -------------
install -d -m 0750 -o root -g ferry "$ETC"
chown root:ferry "$ETC"
chmod 0750 "$ETC"
for f in "$node_dir"/*; do
  name=$(basename "$f")
  if [ ! -f "$f" ]; then
    say "skipping $f: not a regular file"
    continue
  fi
  case $name in
    *.key | *.token) mode=0640 ;;
    *) mode=0644 ;;
  esac
  install -m "$mode" -o root -g ferry "$f" "$ETC/$name"
  say "$ETC/$name ($mode root:ferry)"
done

# The store: systemd creates it as well (StateDirectory=ferry); made here too so that the
# broker can also be run by hand as ferry.
install -d -m 0700 -o ferry -g ferry "$STATE"
[ "$data_dir" = "$STATE" ] || install -d -m 0700 -o ferry -g ferry "$data_dir"
say "$data_dir: the node's store (0700 ferry:ferry)"

# --- The unit ---------------------------------------------------------------------------------------
install -m 0644 -o root -g root "$unit_file" "$UNITS/ferry-broker@.service"
say "$UNITS/ferry-broker@.service"

unit="ferry-broker@$node"
start="systemctl daemon-reload && systemctl enable --now $unit"
if [ "${FERRY_START:-auto}" = no ]; then
  say "installed; start it with: $start"
elif [ ! -d /run/systemd/system ]; then
  say "installed, but systemd does not run this machine (no /run/systemd/system); where it does: $start"
else
  systemctl daemon-reload
  if systemctl is-active --quiet "$unit"; then
    systemctl enable --quiet "$unit"
    say "$unit is running: left alone. The new files take effect at its next restart, through"
    say "the gate: ferry admin --config $ETC/client.toml restart-check $node, then systemctl restart $unit"
  else
    systemctl enable --now "$unit"
    say "$unit started and enabled"
  fi
fi
say "then: ferry admin --config $ETC/client.toml status"
