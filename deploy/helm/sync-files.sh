#!/usr/bin/env bash
# Copies the dashboard and the alert groups into the chart (deploy/helm/tollgate/files/):
# run after editing deploy/grafana/tollgate-dashboard.json or
# deploy/prometheus/tollgate-rules.yaml. deploy/validate.sh fails while they differ.
set -euo pipefail
cd "$(dirname "$0")/../.."
cp deploy/grafana/tollgate-dashboard.json deploy/helm/tollgate/files/tollgate-dashboard.json
{
  echo "# Copied from deploy/prometheus/tollgate-rules.yaml (its spec:) by deploy/helm/sync-files.sh;"
  echo "# deploy/validate.sh checks they agree."
  sed -n '/^spec:$/,$p' deploy/prometheus/tollgate-rules.yaml | tail -n +2 | sed 's/^  //'
} > deploy/helm/tollgate/files/prometheus-rules.yaml
echo "deploy/helm/tollgate/files/ updated"
