#!/usr/bin/env bash
# Writes, on stdout, the two Secrets the StatefulSets mount at /etc/ferry, from the directory
# a `ferry init --node ferry-broker-0=... --node ferry-broker-1=... --witness
# ferry-witness-0=...` run wrote (README.md):
#
#   ferry-broker-config   the files of nodes/ferry-broker-0/ and nodes/ferry-broker-1/
#   ferry-witness-config  the files of nodes/ferry-witness-0/
#
# Each node's directory is flattened into its Secret: the names its nodes share (ca.pem,
# admin.token, client.toml) must hold the same bytes, or this refuses. ca.key never goes
# into a Secret. Plain shell and base64, so it needs neither kubectl nor a cluster:
#
#   deploy/kubernetes/make-secrets.sh ./cluster | kubectl apply -f -
#
# Exit 0 written, 1 refused (the reason on stderr), 2 usage.
set -euo pipefail

NAMESPACE=ferry
BROKERS=(ferry-broker-0 ferry-broker-1)
WITNESSES=(ferry-witness-0)

die() {
  echo "make-secrets.sh: $*" >&2
  exit 1
}

if [ $# -ne 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: make-secrets.sh INIT_DIR > secrets.yaml   (INIT_DIR: what ferry init --out wrote)" >&2
  exit 2
fi
INIT_DIR=$1
[ -d "$INIT_DIR/nodes" ] || die "$INIT_DIR/nodes is not a directory: give the directory ferry init --out wrote"

# A file's bytes as base64 on one line (GNU and BSD base64 both read stdin; tr drops wrapping).
b64() {
  base64 <"$1" | tr -d '\n'
}

# secret NAME NODE...: appends to OUT one Secret holding the regular files of each NODE's
# directory. Nothing is printed until both Secrets are whole: a refusal half-way must not
# leave `| kubectl apply -f -` a partial Secret to apply.
OUT=""
secret() {
  local name=$1
  shift
  local node dir file key seen
  # The keys written so far, each with the file it came from ("key path" lines).
  local keys=""
  for node in "$@"; do
    dir=$INIT_DIR/nodes/$node
    [ -d "$dir" ] || die "$dir is missing: was ferry init given --node/--witness $node=HOST?"
    for file in "$node.toml" "$node.pem" "$node.key" ca.pem admin.token client.toml; do
      [ -f "$dir/$file" ] || die "$dir/$file is missing"
    done
  done

  OUT+="apiVersion: v1
kind: Secret
metadata:
  name: $name
  namespace: $NAMESPACE
  labels:
    app.kubernetes.io/name: ferry
    app.kubernetes.io/part-of: ferry
type: Opaque
data:
"
  for node in "$@"; do
    dir=$INIT_DIR/nodes/$node
    for file in "$dir"/* "$dir"/.[!.]*; do
      [ -e "$file" ] || continue
      key=${file##*/}
      [ "$key" != ca.key ] || die "$file: the CA key stays with the operator, never in the cluster"
      if [ ! -f "$file" ]; then
        echo "make-secrets.sh: skipping $file (not a regular file)" >&2
        continue
      fi
      case $key in
        *[!-._a-zA-Z0-9]*) die "$file: a Secret key may hold only letters, digits, '-', '_' and '.'" ;;
      esac
      seen=$(printf '%s' "$keys" | awk -v k="$key" '$1 == k { print substr($0, length(k) + 2); exit }')
      if [ -n "$seen" ]; then
        cmp -s "$seen" "$file" || die "$seen and $file differ: both would be /etc/ferry/$key"
        continue
      fi
      keys+="$key $file"$'\n'
      OUT+="  $key: $(b64 "$file")"$'\n'
    done
    if grep -Eq '^[[:space:]]*memory_bytes_max[[:space:]]*=[[:space:]]*0[[:space:]]*(#.*)?$' "$dir/$node.toml"; then
      echo "make-secrets.sh: warning: $node.toml has memory_bytes_max = 0: in a pod that is the" \
        "Kubernetes node's memory, not the container's limit (README.md, \"Memory\")" >&2
    fi
  done
}

secret ferry-broker-config "${BROKERS[@]}"
OUT+="---"$'\n'
secret ferry-witness-config "${WITNESSES[@]}"
printf '%s' "$OUT"
