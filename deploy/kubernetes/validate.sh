#!/usr/bin/env bash
# Validates deploy/kubernetes offline: every manifest, and the Secrets make-secrets.sh writes
# from a fake `ferry init` directory, against the API schemas of a pinned Kubernetes version,
# strictly (an unknown or misspelt field fails). kubernetes-validate (PyPI) bundles the
# schemas, so nothing but its installation reaches the network. Then the cross-references no
# schema sees: selectors against pod labels, Services, Secrets and their keys.
#
# Needs python3 with pip (installed with apt when missing, as root or through sudo -n).
# Exit 0 when everything passes, 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
KUBERNETES_VALIDATE=1.37.0 # the PyPI package, pinned: its schemas are what we check against
KUBERNETES=1.30.0          # the oldest Kubernetes these manifests are meant for
TOOLS=${TMPDIR:-/tmp}/ferry-kubernetes-validate/$KUBERNETES_VALIDATE
MANIFESTS=(namespace.yaml broker.yaml broker-relay.yaml witness.yaml poddisruptionbudget.yaml)

fail() {
  echo "validate.sh: FAILED: $*" >&2
  exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-kubernetes-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== kubernetes-validate $KUBERNETES_VALIDATE (in $TOOLS)"
command -v python3 >/dev/null || fail "python3 is missing (Debian: apt-get install python3)"
if ! python3 -m pip --version >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
fi
installed() {
  PYTHONPATH=$TOOLS python3 -c "import sys, kubernetes_validate.version as v
sys.exit(v.__version__ != '$KUBERNETES_VALIDATE')" 2>/dev/null
}
if ! installed; then
  # --target: its own directory, outside any venv, and allowed where the system Python is
  # marked externally managed (Debian 12); installed whole, then moved into place.
  rm -rf "$TOOLS.partial"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --no-input --target "$TOOLS.partial" "kubernetes-validate==$KUBERNETES_VALIDATE" \
    || fail "pip could not install kubernetes-validate==$KUBERNETES_VALIDATE"
  rm -rf "$TOOLS"
  mv "$TOOLS.partial" "$TOOLS"
  installed || fail "kubernetes-validate $KUBERNETES_VALIDATE does not import from $TOOLS"
fi
kv() {
  PYTHONPATH=$TOOLS python3 -m kubernetes_validate "$@"
}

echo "== make-secrets.sh on a fake ferry init directory"
# Dummy contents: the schema check needs only the files' names and the Secrets' shape.
INIT=$WORK/init
for node in ferry-broker-0 ferry-broker-1 ferry-witness-0; do
  mkdir -p "$INIT/nodes/$node"
  printf 'node_id = "%s"\n[limits]\nmemory_bytes_max = 805306368\n' "$node" >"$INIT/nodes/$node/$node.toml"
  echo "certificate of $node" >"$INIT/nodes/$node/$node.pem"
  echo "key of $node" >"$INIT/nodes/$node/$node.key"
  echo "cluster CA certificate" >"$INIT/nodes/$node/ca.pem"
  echo "admin token" >"$INIT/nodes/$node/admin.token"
  echo 'cluster_name = "ferry"' >"$INIT/nodes/$node/client.toml"
done
echo "the cluster CA's key" >"$INIT/ca.key"
"$HERE/make-secrets.sh" "$INIT" >"$WORK/secrets.yaml" 2>"$WORK/make-secrets.err" \
  || fail "make-secrets.sh refused a good init directory: $(cat "$WORK/make-secrets.err")"
[ ! -s "$WORK/make-secrets.err" ] || fail "make-secrets.sh complained: $(cat "$WORK/make-secrets.err")"
if grep -q "ca.key" "$WORK/secrets.yaml" || grep -qF "$(base64 <"$INIT/ca.key" | tr -d '\n')" "$WORK/secrets.yaml"; then
  fail "make-secrets.sh put the CA key into a Secret"
fi
# What it must refuse, printing nothing on stdout (the output may be piped to kubectl apply).
refusals=0
refuses() { # refuses WHAT: make-secrets.sh on $WORK/bad must exit 1 with no stdout
  if "$HERE/make-secrets.sh" "$WORK/bad" >"$WORK/bad.out" 2>"$WORK/bad.err"; then
    fail "make-secrets.sh accepted $1"
  fi
  [ ! -s "$WORK/bad.out" ] || fail "make-secrets.sh printed a partial Secret for $1"
  echo "refuses $1: $(cat "$WORK/bad.err")"
  refusals=$((refusals + 1))
}
rm -rf "$WORK/bad" && cp -r "$INIT" "$WORK/bad" && echo "another CA" >"$WORK/bad/nodes/ferry-broker-1/ca.pem"
refuses "two different ca.pem"
rm -rf "$WORK/bad" && cp -r "$INIT" "$WORK/bad" && rm "$WORK/bad/nodes/ferry-witness-0/ferry-witness-0.key"
refuses "a missing node key"
rm -rf "$WORK/bad" && cp -r "$INIT" "$WORK/bad" && cp "$INIT/ca.key" "$WORK/bad/nodes/ferry-broker-0/"
refuses "ca.key in a node's directory"

echo "== kubernetes-validate --strict -k $KUBERNETES"
FILES=()
for manifest in "${MANIFESTS[@]}"; do FILES+=("$HERE/$manifest"); done
FILES+=("$WORK/secrets.yaml")
if command -v kubectl >/dev/null; then
  # kustomize is built into kubectl and runs offline; without kubectl the cross-check below
  # still compares kustomization.yaml's resources with the manifests.
  kubectl kustomize "$HERE" >"$WORK/kustomized.yaml" || fail "kubectl kustomize $HERE failed"
  FILES+=("$WORK/kustomized.yaml")
else
  echo "(no kubectl: kustomize's output is not rendered; its resource list is still checked)"
fi
status=0
kv --strict -k "$KUBERNETES" "${FILES[@]}" >"$WORK/kv.out" 2>&1 || status=$?
sed -e "s|$HERE/||g" -e "s|$WORK/||g" "$WORK/kv.out"
# kubernetes-validate only warns, and exits 0, for a kind it has no schema for (a misspelt
# kind or apiVersion): anything but an INFO line is a failure here.
if [ "$status" -ne 0 ] || grep -qv '^INFO ' "$WORK/kv.out"; then
  fail "kubernetes-validate found problems (above)"
fi
for file in "${FILES[@]}"; do
  grep -qF "INFO $file passed" "$WORK/kv.out" || fail "${file#"$HERE/"}: no resource validated"
done
passed=$(grep -c '^INFO ' "$WORK/kv.out")

echo "== cross-references"
if ! PYTHONPATH=$TOOLS python3 - "$HERE" "$WORK/secrets.yaml" "${MANIFESTS[@]}" <<'PY'
import os, sys, yaml

here, secrets_file, manifests = sys.argv[1], sys.argv[2], sys.argv[3:]
problems = []

def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

objects = [(m, d) for m in manifests for d in load(os.path.join(here, m))]
secrets = {d["metadata"]["name"]: d for d in load(secrets_file)}
by_kind = {}
for m, d in objects:
    by_kind.setdefault(d["kind"], []).append(d)

# kustomization.yaml lists exactly the manifests.
kustomization = load(os.path.join(here, "kustomization.yaml"))[0]
listed = set(kustomization.get("resources", []))
on_disk = {f for f in os.listdir(here) if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != on_disk or listed != set(manifests):
    problems.append(f"kustomization.yaml lists {sorted(listed)}; the directory holds "
                    f"{sorted(on_disk)}; validate.sh checks {sorted(manifests)}")

for m, d in objects:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "ferry":
        problems.append(f"{m}: {d['kind']}/{d['metadata']['name']} is not in namespace ferry")

def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

sets = {s["metadata"]["name"]: s for s in by_kind.get("StatefulSet", [])}
services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
pods = {}  # pod name -> (StatefulSet, its pod labels)
for name, s in sets.items():
    spec = s["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if not matches(spec["selector"]["matchLabels"], labels):
        problems.append(f"StatefulSet {name}: its selector does not match its pod labels")
    if labels.get("app.kubernetes.io/part-of") != "ferry":
        problems.append(f"StatefulSet {name}: pods lack app.kubernetes.io/part-of: ferry (the PDB)")
    headless = services.get(spec["serviceName"])
    if (not headless or headless["spec"].get("clusterIP") != "None"
            or not headless["spec"].get("publishNotReadyAddresses")
            or not matches(headless["spec"]["selector"], labels)):
        problems.append(f"StatefulSet {name}: serviceName {spec['serviceName']} is not a headless "
                        "Service publishing not-ready pods and selecting them")
    if spec.get("podManagementPolicy") != "Parallel":
        problems.append(f"StatefulSet {name}: podManagementPolicy is not Parallel")
    for i in range(spec["replicas"]):
        pods[f"{name}-{i}"] = (s, labels)
    pod = spec["template"]["spec"]
    mounted = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    for c in pod["containers"]:
        mounts = {vm["mountPath"]: vm["name"] for vm in c.get("volumeMounts", [])}
        if mounts.get("/var/lib/ferry") not in claims:
            problems.append(f"StatefulSet {name}: /var/lib/ferry is not a volumeClaimTemplate")
        config = mounted.get(mounts.get("/etc/ferry"), {}).get("secret", {}).get("secretName")
        if config not in secrets:
            problems.append(f"StatefulSet {name}: /etc/ferry is not a Secret make-secrets.sh writes")
            continue
        keys = set(secrets[config]["data"])
        for i in range(spec["replicas"]):
            node = f"{name}-{i}"
            need = {f"{node}.toml", f"{node}.pem", f"{node}.key", "ca.pem", "admin.token", "client.toml"}
            if not need <= keys:
                problems.append(f"Secret {config} lacks {sorted(need - keys)} for pod {node}")
        env = [e["name"] for e in c.get("env", [])]
        if env[:1] != ["POD_NAME"] or not {"FERRY_NODE_CONFIG", "FERRY_NODE"} <= set(env):
            problems.append(f"StatefulSet {name}: env must define POD_NAME first, then "
                            "FERRY_NODE_CONFIG and FERRY_NODE")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if "drain" not in hook or grace < 120:
            problems.append(f"StatefulSet {name}: no preStop drain, or a grace period under 120 s")
        ports = {p["name"]: p for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("scheme") != "HTTPS" or ports.get(get.get("port"), {}).get("containerPort") != 7101:
                problems.append(f"StatefulSet {name}: {probe} is not HTTPS on the admin port 7101")

# Every Service selects pods that exist, on ports they declare.
for name, svc in services.items():
    sel = svc["spec"]["selector"]
    chosen = [p for p, (s, labels) in pods.items()
              if matches(sel, {**labels, "statefulset.kubernetes.io/pod-name": p})]
    if not chosen:
        problems.append(f"Service {name}: its selector {sel} matches no pod")
    for p in chosen:
        container = pods[p][0]["spec"]["template"]["spec"]["containers"][0]
        declared = {(q["name"], q.get("protocol", "TCP")) for q in container.get("ports", [])}
        for port in svc["spec"]["ports"]:
            if (port["targetPort"], port.get("protocol", "TCP")) not in declared:
                problems.append(f"Service {name}: targetPort {port['targetPort']} is not a port of pod {p}")
relay = {n for n, s in services.items() if s["spec"].get("type") == "LoadBalancer"}
brokers = {p for p in pods if p.startswith("ferry-broker-")}
relay_pods = {services[n]["spec"]["selector"].get("statefulset.kubernetes.io/pod-name") for n in relay}
if relay_pods != brokers:
    problems.append(f"relay Services select {sorted(relay_pods)}, the brokers are {sorted(brokers)}")

# One PDB, maxUnavailable 1, over all three nodes.
pdbs = by_kind.get("PodDisruptionBudget", [])
covered = {p for p, (s, labels) in pods.items() for b in pdbs if matches(b["spec"]["selector"]["matchLabels"], labels)}
if len(pdbs) != 1 or pdbs[0]["spec"].get("maxUnavailable") != 1 or covered != set(pods) or len(pods) != 3:
    problems.append(f"the PodDisruptionBudget must allow 1 unavailable among all 3 nodes; it covers {sorted(covered)}")

for p in problems:
    print("ERROR", p)
if problems:
    sys.exit(1)
print(f"OK {len(pods)} nodes ({', '.join(sorted(pods))}), {len(services)} Services, "
      f"{len(secrets)} Secrets: selectors, ports, Secrets and their keys agree")
PY
then
  fail "cross-references (above)"
fi

# Each resource validated, each refusal of make-secrets.sh, and the cross-references.
echo "kubernetes: $((passed + refusals + 1)) passed, 0 failed"
