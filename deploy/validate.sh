#!/usr/bin/env bash
# Validates everything under deploy/:
#   1. every Kubernetes manifest in deploy/kubernetes (and kubernetes/secrets) with
#      `kubernetes-validate --strict`, against the oldest supported (1.30: preStop `sleep`)
#      and the newest Kubernetes version the tool knows;
#   2. the kustomization lists exactly the resource files present, and its ConfigMap
#      generator reads gateway.yaml; when kubectl is installed, `kubectl kustomize` output
#      (what `kubectl apply -k` sends, generated ConfigMap included) is validated as well;
#   3. deploy/kubernetes/gateway.yaml with `tollgate validate`, after pointing its
#      /etc/tollgate/... paths at temporary stand-ins for the Secrets (throwaway key, a
#      self-signed certificate, dummy client secrets) that are deleted on exit.
# kubernetes-validate (pinned) is installed into target/deploy-tools/venv (git-ignored) if missing.
# Any problem fails the script (non-zero exit) with the offending file named.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION="1.37.0"           # kubernetes-validate release (PyPI)
K8S_VERSIONS=(1.30.0 1.37.0)  # oldest supported cluster, newest schema the tool ships
KUBE_DIR=deploy/kubernetes

fail() { echo "deploy/validate.sh: FAIL: $*" >&2; exit 1; }

# --- 1. kubernetes-validate ---------------------------------------------------------
# Always the pinned version in a git-ignored venv (also gives us PyYAML for step 2).
VENV=target/deploy-tools/venv
KV=$VENV/bin/kubernetes-validate
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '$KV_VERSION')" 2>/dev/null; then
  echo "deploy/validate.sh: installing kubernetes-validate==$KV_VERSION into $VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed (install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" \
    || fail "pip install kubernetes-validate==$KV_VERSION failed"
fi

# Every resource file: everything in deploy/kubernetes except the kustomization itself
# (a kustomize config, not a Kubernetes resource) and gateway.yaml (tollgate's config,
# checked in step 3), plus the stub Secrets.
mapfile -t MANIFESTS < <(find "$KUBE_DIR" -name '*.yaml' ! -name kustomization.yaml ! -name gateway.yaml | sort)
[ "${#MANIFESTS[@]}" -ge 8 ] || fail "expected at least 8 manifests in $KUBE_DIR, found ${#MANIFESTS[@]}"
for v in "${K8S_VERSIONS[@]}"; do
  # kubernetes-validate exits non-zero on any error; --strict rejects unknown fields.
  "$KV" --strict --quiet -k "$v" "${MANIFESTS[@]}" \
    || fail "kubernetes-validate --strict -k $v rejected a manifest (see above)"
done
echo "deploy/validate.sh: ${#MANIFESTS[@]} manifests pass kubernetes-validate --strict (Kubernetes ${K8S_VERSIONS[*]})"

# --- 2. kustomization consistency -----------------------------------------------------
# Without kustomize/kubectl on the machine: the `resources:` list must name exactly the
# top-level manifest files (the stub Secrets in secrets/ are deliberately NOT listed), and
# the generator must read gateway.yaml without a name-suffix hash.
"$VENV/bin/python" - "$KUBE_DIR" <<'PY' || fail "kustomization.yaml is inconsistent (see above)"
import pathlib, sys
try:
    import yaml
except ImportError:
    sys.exit("PyYAML missing")
d = pathlib.Path(sys.argv[1])
k = yaml.safe_load((d / "kustomization.yaml").read_text())
listed = sorted(k.get("resources", []))
present = sorted(p.name for p in d.glob("*.yaml") if p.name not in ("kustomization.yaml", "gateway.yaml"))
problems = []
if listed != present:
    problems.append(f"resources {listed} != files {present}")
gens = k.get("configMapGenerator", [])
if not any(g.get("name") == "tollgate-config" and "gateway.yaml" in g.get("files", [])
           and g.get("options", {}).get("disableNameSuffixHash") is True for g in gens):
    problems.append("configMapGenerator tollgate-config from gateway.yaml with disableNameSuffixHash: true missing")
for p in problems:
    print("kustomization.yaml:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "deploy/validate.sh: kustomization.yaml lists every manifest and generates tollgate-config"

# Render the kustomization the way `kubectl apply -k` does (kubectl's built-in kustomize,
# offline) and validate the result too, generated ConfigMap included.
if command -v kubectl >/dev/null 2>&1; then
  RENDERED=$(mktemp "${TMPDIR:-/tmp}/tollgate-kustomize.XXXXXX.yaml")
  kubectl kustomize "$KUBE_DIR" > "$RENDERED" || { rm -f "$RENDERED"; fail "kubectl kustomize $KUBE_DIR failed"; }
  for v in "${K8S_VERSIONS[@]}"; do
    "$KV" --strict --quiet -k "$v" "$RENDERED" \
      || { rm -f "$RENDERED"; fail "kubernetes-validate --strict -k $v rejected the output of kubectl kustomize $KUBE_DIR"; }
  done
  "$VENV/bin/python" - "$RENDERED" "$KUBE_DIR/gateway.yaml" <<'PY2' || { rm -f "$RENDERED"; fail "rendered ConfigMap tollgate-config does not carry gateway.yaml"; }
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tollgate-config"]
sys.exit(0 if len(cms) == 1 and cms[0]["data"]["gateway.yaml"] == open(sys.argv[2]).read() else 1)
PY2
  echo "deploy/validate.sh: kubectl kustomize output ($(grep -c '^kind:' "$RENDERED") resources) passes kubernetes-validate --strict"
  rm -f "$RENDERED"
else
  echo "deploy/validate.sh: kubectl not found: SKIPPED rendering the kustomization (the files were validated above)"
fi

# --- 3. tollgate validate on the ConfigMap's gateway.yaml ----------------------------
command -v openssl >/dev/null 2>&1 || fail "openssl is needed to make throwaway keys"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-deploy.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/keys" "$TMP/tls" "$TMP/secrets"
# Same shapes as the real Secrets (see deploy/README.md): PKCS#8 EC P-256 signing key,
# certificate + key as in a kubernetes.io/tls Secret, client secret file with a newline.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/keys/signing.pem" 2>/dev/null \
  || fail "openssl genpkey failed"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=api.example.com" \
  -keyout "$TMP/tls/tls.key" -out "$TMP/tls/tls.crt" 2>/dev/null || fail "openssl req failed"
echo "dummy-introspection-secret" > "$TMP/secrets/introspection-client-secret"
sed "s#/etc/tollgate/#$TMP/#g" "$KUBE_DIR/gateway.yaml" > "$TMP/gateway.yaml"
grep -v '^[[:space:]]*#' "$TMP/gateway.yaml" | grep -q '/etc/tollgate' && fail "gateway.yaml has /etc/tollgate paths the stand-ins do not cover"

DASHBOARD_SECRET_HASH=$(printf 'dummy-dashboard-secret\n' | cargo run -q --locked -- hash-secret) \
  || fail "tollgate hash-secret failed"
export DASHBOARD_SECRET_HASH
export BI_CLIENT_SECRET=dummy-bi-secret
if ! out=$(cargo run -q --locked -- validate --config "$TMP/gateway.yaml" 2>&1); then
  echo "$out" | sed "s#$TMP/#deploy/kubernetes/#g" >&2
  fail "tollgate validate rejected deploy/kubernetes/gateway.yaml"
fi
echo "deploy/validate.sh: tollgate validate: $out" | sed "s#$TMP/#deploy/kubernetes/#g"
echo "deploy/validate.sh: OK"
