#!/usr/bin/env bash
# Writes the cluster for compose.yaml: `ferry init` (run from the image, as its user ferry,
# so that the nodes can read their keys) with b1, b2 and w1 at their addresses on the compose
# network. Extra arguments go to `ferry init` (e.g. --cluster-name).
#
#   FERRY_IMAGE=ferry:latest FERRY_NET=172.29.7 FERRY_CLUSTER=./cluster ./init.sh
set -euo pipefail
cd "$(dirname "$0")"
image=${FERRY_IMAGE:-ferry:latest}
net=${FERRY_NET:-172.29.7}
out=${FERRY_CLUSTER:-./cluster}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -e "$out/ca.pem" ]; then
  echo "init.sh: $out already holds a cluster; remove it (and the volumes: docker-compose down -v) to start over" >&2
  exit 1
fi
# The image's user (uid 10001) writes the files; nobody else may list them afterwards.
chmod 0777 "$out"
docker run --rm --user 10001:10001 -v "$out:/out" --entrypoint /usr/local/bin/ferry "$image" \
  init --out /out --data-dir /var/lib/ferry --node "b1=$net.11" --node "b2=$net.12" --witness "w1=$net.13" "$@"
chmod 0711 "$out"
echo "cluster written to $out; start it with: docker-compose up -d" >&2
