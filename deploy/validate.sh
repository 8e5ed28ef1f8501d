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
#      self-signed certificate, dummy client secrets, a Redis URL) that are deleted on exit;
#   4. the Helm chart deploy/helm/tollgate, rendered by Helm's own engine (helm-python-sdk:
#      Helm's Go SDK) with its default values and with ci/full-values.yaml (everything
#      on): `helm lint --strict`, values.schema.json, kubernetes-validate --strict on the
#      built-in kinds, the prometheus-operator CRD schemas on ServiceMonitor/PodMonitor/
#      PrometheusRule, and `tollgate validate` on the gateway.yaml each render generates;
#      values that must be refused (a typo, ports that disagree) are refused;
#   5. the alerts deploy/prometheus/tollgate-rules.yaml (CRD schema, `promtool check
#      rules`, and the unit tests in tollgate-rules.test.yaml with `promtool test rules`)
#      and the dashboard deploy/grafana/tollgate-dashboard.json (JSON, panel ids, every
#      query parsed by promtool); the chart's copies of both must be the same;
#   6. deploy/kubernetes/ext-authz (tollgate as an existing ingress's authoriser): the
#      built-in kinds with kubernetes-validate --strict, the Gateway API HTTPRoute
#      (ExternalAuth filter) and ReferenceGrant and Traefik's Middleware against their CRD
#      schemas (npm @kubernetes-models/gateway-api and /traefik); Envoy Gateway's
#      SecurityPolicy only for its shape (no registry ships its CRD schema).
# Tools, pinned, installed into target/deploy-tools (git-ignored) when missing:
# kubernetes-validate and helm-python-sdk (PyPI, in a venv), promtool (extracted from
# Debian's prometheus package, not installed), the CRD schemas (npm, deploy/tools).
# Any problem fails the script (non-zero exit) with the offending file named.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION="1.37.0"           # kubernetes-validate release (PyPI)
K8S_VERSIONS=(1.30.0 1.37.0)  # oldest supported cluster, newest schema the tool ships
KUBE_DIR=deploy/kubernetes

fail() { echo "deploy/validate.sh: FAIL: $*" >&2; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-deploy.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

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
mapfile -t MANIFESTS < <(find "$KUBE_DIR" -name '*.yaml' ! -name kustomization.yaml ! -name gateway.yaml ! -path "$KUBE_DIR/ext-authz/*" | sort)
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
mkdir -p "$TMP/keys" "$TMP/tls" "$TMP/secrets"
# Same shapes as the real Secrets (see deploy/README.md): PKCS#8 EC P-256 signing key,
# certificate + key as in a kubernetes.io/tls Secret, client secret file with a newline.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/keys/signing.pem" 2>/dev/null \
  || fail "openssl genpkey failed"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=api.example.com" \
  -keyout "$TMP/tls/tls.key" -out "$TMP/tls/tls.crt" 2>/dev/null || fail "openssl req failed"
echo "dummy-introspection-secret" > "$TMP/secrets/introspection-client-secret"
echo "redis://:dummy-redis-password@127.0.0.1:6379/0" > "$TMP/secrets/redis-url"
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

# --- tools for steps 4 and 5 --------------------------------------------------------------
# Helm: no helm binary is packaged in Debian, PyPI or npm; helm-python-sdk embeds Helm's Go
# SDK, so rendering and linting are Helm's own code (deploy/helm/render.py).
if ! "$VENV/bin/python" -c "import helm_python" 2>/dev/null; then
  echo "deploy/validate.sh: installing helm-python-sdk (deploy/helm/requirements.txt) into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r deploy/helm/requirements.txt || fail "pip install helm-python-sdk failed"
fi
# promtool: taken out of Debian's prometheus package (only the promtool binary is used;
# nothing is installed, no service is started).
PROMTOOL=target/deploy-tools/prometheus/usr/bin/promtool
if [ ! -x "$PROMTOOL" ]; then
  echo "deploy/validate.sh: extracting promtool from Debian's prometheus package"
  mkdir -p target/deploy-tools/prometheus
  # (under the lock scripts/install-test-deps.sh takes: .ci/run runs both at once)
  ( cd "$TMP" && flock "${TMPDIR:-/tmp}/tollgate-apt.lock" sh -c 'apt-get download prometheus >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null; }' ) \
    || fail "apt-get download prometheus failed"
  dpkg-deb -x "$TMP"/prometheus_*.deb target/deploy-tools/prometheus || fail "dpkg-deb -x failed"
  rm -f "$TMP"/prometheus_*.deb
fi
"$PROMTOOL" --version >/dev/null 2>&1 || fail "$PROMTOOL does not run"
# The prometheus-operator CRD schemas (npm, pinned in deploy/tools/package-lock.json).
if [ ! -d deploy/tools/node_modules ] || [ deploy/tools/package-lock.json -nt deploy/tools/node_modules ]; then
  # --loglevel=error: the packages declare node >= 22 but run on the machine's node 20.
  npm ci --prefix deploy/tools --no-audit --no-fund --loglevel=error >/dev/null || fail "npm ci --prefix deploy/tools failed"
fi
TOLLGATE=(cargo run -q --locked --)

# Splits a rendered chart: built-in kinds -> $1.core.yaml, prometheus-operator kinds ->
# $1.crds.json, the ConfigMap's gateway.yaml -> $1.gateway.yaml, and the PrometheusRule's
# groups / the dashboard ConfigMap's JSON -> $1.rules.json / $1.dashboard.json.
split_render() {
  "$VENV/bin/python" - "$1" <<'PY'
import json, sys, yaml
base = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(base + ".yaml")) if d]
core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
crds = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
yaml.safe_dump_all(core, open(base + ".core.yaml", "w"), sort_keys=False)
json.dump(crds, open(base + ".crds.json", "w"))
cms = [d for d in core if d["kind"] == "ConfigMap" and "gateway.yaml" in d.get("data", {})]
if len(cms) != 1:
    sys.exit(f"{base}: expected one ConfigMap with gateway.yaml, found {len(cms)}")
open(base + ".gateway.yaml", "w").write(cms[0]["data"]["gateway.yaml"])
rules = [d["spec"] for d in crds if d["kind"] == "PrometheusRule"]
json.dump(rules, open(base + ".rules.json", "w"))
dash = [json.loads(d["data"]["tollgate-dashboard.json"]) for d in core
        if d["kind"] == "ConfigMap" and "tollgate-dashboard.json" in d.get("data", {})]
json.dump(dash, open(base + ".dashboard.json", "w"))
print(f"{len(core)} {len(crds)}")
PY
}

# `tollgate validate` on a gateway.yaml that names /etc/tollgate/... files and ${env:..}:
# stand-ins for the Secrets (deploy/standins.py; the Redis URL one is a redis:// URL).
validate_gateway() { # FILE LABEL
  local dir="$TMP/standins-$2" out
  mkdir -p "$dir"
  mapfile -t lines < <("$VENV/bin/python" deploy/standins.py "$1" "$dir" "${TOLLGATE[@]}") \
    || fail "$2: making stand-ins failed"
  local cfg="${lines[0]}" envs=("${lines[@]:1}")
  out=$(env "${envs[@]}" "${TOLLGATE[@]}" validate --config "$cfg" 2>&1) \
    || { echo "$out" >&2; fail "tollgate validate rejected the gateway.yaml of $2"; }
  echo "deploy/validate.sh: $2: tollgate validate: ${out#"$cfg": }"
}

# --- 4. the Helm chart --------------------------------------------------------------------
CHART=deploy/helm/tollgate
for case in default full; do
  vals=(); [ "$case" = full ] && vals=(--values "$CHART/ci/full-values.yaml")
  base="$TMP/chart-$case"
  "$VENV/bin/python" deploy/helm/render.py "$CHART" "${vals[@]}" --out "$base.yaml" \
    || fail "the chart does not render with ${vals[*]:-the default values}"
  read -r ncore ncrd < <(split_render "$base") || fail "chart-$case: cannot split the rendered manifests"
  for v in "${K8S_VERSIONS[@]}"; do
    "$KV" --strict --quiet -k "$v" "$base.core.yaml" \
      || fail "kubernetes-validate --strict -k $v rejected the chart rendered with ${vals[*]:-the default values}"
  done
  if [ "$ncrd" -gt 0 ]; then
    node deploy/tools/validate-crds.mjs "$base.crds.json" "chart ($case values)" \
      || fail "the chart's prometheus-operator resources do not match the CRD schemas"
  fi
  echo "deploy/validate.sh: chart ($case values): $ncore manifests pass kubernetes-validate --strict (Kubernetes ${K8S_VERSIONS[*]}), $ncrd CRD resources checked"
  validate_gateway "$base.gateway.yaml" "chart-$case"
done
# The chart's alert groups and dashboard are the files in deploy/ (the full render has both).
"$VENV/bin/python" - "$TMP/chart-full" <<'PY' || fail "the chart's files/ differ from deploy/prometheus or deploy/grafana: run deploy/helm/sync-files.sh"
import json, sys, yaml
base = sys.argv[1]
want_rules = yaml.safe_load(open("deploy/prometheus/tollgate-rules.yaml"))["spec"]
want_dash = json.load(open("deploy/grafana/tollgate-dashboard.json"))
ok = json.load(open(base + ".rules.json")) == [want_rules]
ok &= json.load(open(base + ".dashboard.json")) == [want_dash]
sys.exit(0 if ok else 1)
PY
# Values the chart must refuse, each with Helm's message.
refuse() { # LABEL VALUES-YAML EXPECTED-TEXT
  printf '%s\n' "$2" > "$TMP/refuse.yaml"
  if out=$("$VENV/bin/python" deploy/helm/render.py "$CHART" --values "$TMP/refuse.yaml" --out "$TMP/refused.yaml" 2>&1); then
    fail "the chart accepted $1"
  fi
  grep -q -- "$3" <<<"$out" || { echo "$out" >&2; fail "the chart refused $1 without saying \"$3\""; }
}
refuse "a misspelt value" "replicaCout: 3" "replicaCout"
refuse "a listen port the container does not expose" $'containerPorts:\n  public: 9000' "containerPorts says 9000"
refuse "an unknown log format" $'log:\n  format: xml' "/log/format"
refuse "redis.url with configYaml" $'configYaml: "server: {}"\nredis:\n  url: redis://r:6379' "redis.url"
refuse "redis.url with existingConfigMap" $'existingConfigMap: mine\nredis:\n  url: redis://r:6379' "existingConfigMap"
echo "deploy/validate.sh: chart: lint --strict clean; refuses misspelt values, mismatched ports, bad enums"

# --- 5. alerts and dashboard --------------------------------------------------------------
RULES=deploy/prometheus/tollgate-rules.yaml
"$VENV/bin/python" - "$RULES" "$TMP" <<'PY' || fail "$RULES: not a PrometheusRule"
import json, sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert d["apiVersion"] == "monitoring.coreos.com/v1" and d["kind"] == "PrometheusRule"
json.dump([d], open(sys.argv[2] + "/rules-crd.json", "w"))
yaml.safe_dump(d["spec"], open(sys.argv[2] + "/tollgate-rules.rules.yaml", "w"), sort_keys=False)
PY
node deploy/tools/validate-crds.mjs "$TMP/rules-crd.json" "$RULES" || fail "$RULES does not match the PrometheusRule CRD schema"
"$PROMTOOL" check rules "$TMP/tollgate-rules.rules.yaml" >/dev/null \
  || { "$PROMTOOL" check rules "$TMP/tollgate-rules.rules.yaml"; fail "promtool check rules rejected $RULES"; }
cp deploy/prometheus/tollgate-rules.test.yaml "$TMP/"
"$PROMTOOL" test rules "$TMP/tollgate-rules.test.yaml" >/dev/null \
  || { "$PROMTOOL" test rules "$TMP/tollgate-rules.test.yaml"; fail "the alert unit tests (deploy/prometheus/tollgate-rules.test.yaml) failed"; }
echo "deploy/validate.sh: $RULES: CRD schema, promtool check rules, promtool test rules pass"

DASH=deploy/grafana/tollgate-dashboard.json
"$VENV/bin/python" - "$DASH" "$TMP/dashboard-queries.yaml" <<'PY' || fail "$DASH is not a valid dashboard (see above)"
import json, re, sys, yaml
d = json.load(open(sys.argv[1]))
problems, rules, ids = [], [], set()
for key in ("uid", "title", "panels", "templating", "schemaVersion"):
    if key not in d:
        problems.append(f"missing {key}")
for p in d.get("panels", []):
    if p["id"] in ids:
        problems.append(f"panel id {p['id']} twice")
    ids.add(p["id"])
    if "gridPos" not in p:
        problems.append(f"panel {p['title']!r} has no gridPos")
    for t in p.get("targets", []):
        # Grafana's variables, as Prometheus would see them after interpolation.
        expr = t["expr"].replace("$__rate_interval", "5m")
        expr = re.sub(r"\$\{?(job|instance|route)\}?", ".*", expr)
        rules.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": expr})
if not rules:
    problems.append("no queries")
for msg in problems:
    print(f"{sys.argv[1]}: {msg}", file=sys.stderr)
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
sys.exit(1 if problems else 0)
PY
"$PROMTOOL" check rules "$TMP/dashboard-queries.yaml" >/dev/null \
  || { "$PROMTOOL" check rules "$TMP/dashboard-queries.yaml"; fail "a query in $DASH is not valid PromQL"; }
echo "deploy/validate.sh: $DASH: $(grep -c '"expr"' "$DASH") queries parse (promtool)"
# --- 6. ext-authz: tollgate as the authoriser of an existing ingress --------------------
EXT_DIR=$KUBE_DIR/ext-authz
counts=$("$VENV/bin/python" - "$EXT_DIR" "$TMP/ext" <<'PY'
import glob, json, sys, yaml
src, out = sys.argv[1], sys.argv[2]
docs = []
for f in sorted(glob.glob(src + "/*.yaml")):
    docs += [(f, d) for d in yaml.safe_load_all(open(f)) if d]
core = [d for f, d in docs if d["apiVersion"] in ("v1", "networking.k8s.io/v1")]
crds = [d for f, d in docs if d["apiVersion"].split("/")[0] in ("gateway.networking.k8s.io", "traefik.io")]
eg = [(f, d) for f, d in docs if d["apiVersion"].startswith("gateway.envoyproxy.io/")]
rest = len(docs) - len(core) - len(crds) - len(eg)
if rest:
    sys.exit(f"{src}: {rest} resource(s) of a kind this script does not validate")
yaml.safe_dump_all(core, open(out + ".core.yaml", "w"), sort_keys=False)
json.dump(crds, open(out + ".crds.json", "w"))
# Envoy Gateway's SecurityPolicy: its CRD schema is not in any registry; check the shape
# the README documents (the keys Envoy Gateway's v1alpha1 API names).
problems = []
for f, d in eg:
    where = f"{f}: {d['kind']}/{d['metadata']['name']}"
    if d["kind"] != "SecurityPolicy" or d["apiVersion"] != "gateway.envoyproxy.io/v1alpha1":
        problems.append(f"{where}: expected gateway.envoyproxy.io/v1alpha1 SecurityPolicy")
        continue
    spec = d.get("spec", {})
    unknown = set(spec) - {"targetRefs", "targetSelectors", "extAuth", "cors", "jwt", "oidc", "basicAuth", "apiKeyAuth", "authorization"}
    ext = spec.get("extAuth", {})
    unknown |= {f"extAuth.{k}" for k in set(ext) - {"grpc", "http", "headersToExtAuth", "bodyToExtAuth", "failOpen", "recomputeRoute", "contextExtensions"}}
    http = ext.get("http", {})
    unknown |= {f"extAuth.http.{k}" for k in set(http) - {"backendRef", "backendRefs", "backendSettings", "path", "headersToBackend"}}
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    if not spec.get("targetRefs") or not http.get("backendRefs") or http.get("path") != "/ext-authz":
        problems.append(f"{where}: needs targetRefs, extAuth.http.backendRefs and extAuth.http.path /ext-authz")
    if ext.get("failOpen") is not False:
        problems.append(f"{where}: extAuth.failOpen must be false (deny when tollgate cannot be asked)")
for p in problems:
    print(p, file=sys.stderr)
print(f"{len(core)} {len(crds)} {len(eg)}")
sys.exit(1 if problems else 0)
PY
) || fail "$EXT_DIR: a manifest is malformed or of an unexpected shape (see above)"
read -r ncore ncrd neg <<<"$counts"
for v in "${K8S_VERSIONS[@]}"; do
  "$KV" --strict --quiet -k "$v" "$TMP/ext.core.yaml" \
    || fail "kubernetes-validate --strict -k $v rejected a manifest in $EXT_DIR"
done
node deploy/tools/validate-ingress-crds.mjs "$TMP/ext.crds.json" "$EXT_DIR" \
  || fail "$EXT_DIR: a Gateway API or Traefik resource does not match its CRD schema"
echo "deploy/validate.sh: $EXT_DIR: $ncore built-in manifests pass kubernetes-validate --strict, $ncrd Gateway API/Traefik resources match their CRD schemas, $neg Envoy Gateway SecurityPolicy checked for shape only (no CRD schema in a registry)"
echo "deploy/validate.sh: OK"
