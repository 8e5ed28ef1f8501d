"""Renders the tollgate chart offline with Helm's own engine, like `helm template`.

Used by deploy/validate.sh. There is no helm binary in this environment's registries
(Debian, PyPI, npm, crates.io); the PyPI package helm-python-sdk embeds Helm's Go SDK
(v4) as a shared library, so the chart is loaded, linted, checked against
values.schema.json and rendered by Helm's code, not by a re-implementation.

  python render.py CHART [--values FILE] [--release NAME] [--namespace NS] --out FILE

Writes the manifests as one multi-document YAML file (like `helm template`, NOTES.txt
left out). Exit 1 with Helm's message when linting, the schema or a template fails.
"""

import argparse
import sys
from pathlib import Path

import helm_python as helm


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("chart")
    ap.add_argument("--values")
    ap.add_argument("--release", default="tollgate")
    ap.add_argument("--namespace", default="tollgate")
    ap.add_argument("--kube-version", default="v1.30.0")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    values = helm.values_from_yaml(Path(a.values).read_text()) if a.values else {}
    label = f"{a.chart} with {a.values or 'the default values'}"
    try:
        chart = helm.Chart.load(a.chart)
        chart.validate_schema(values)
        report = helm.lint(a.chart, values, strict=True, namespace=a.namespace,
                           kube_version=a.kube_version)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        problems += [{"path": "", "error": e} for e in report.get("errors") or []]
        if problems:
            for m in problems:
                print(f"{label}: helm lint: {m.get('path')}: {m.get('error')}", file=sys.stderr)
            return 1
        manifests = chart.render(values, name=a.release, namespace=a.namespace,
                                 is_install=True)
    except helm.errors.HelmError as e:  # schema, template and load errors
        print(f"{label}: {e}", file=sys.stderr)
        return 1
    docs = []
    for path in sorted(manifests):
        text = manifests[path].strip()
        if path.endswith("NOTES.txt") or not text:
            continue
        for part in text.split("\n---"):
            if part.strip():
                docs.append(f"# Source: {path}\n{part.strip()}\n")
    Path(a.out).write_text("---\n".join(docs))
    print(f"{label}: {len(docs)} manifests rendered by Helm SDK {helm.helm_sdk_version()} (lint --strict clean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
