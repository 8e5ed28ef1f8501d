"""Parses a /metrics page read from stdin with PyPI prometheus-client's parser for the
format named by argv[1] ("text": Prometheus text 0.0.4, "openmetrics": OpenMetrics
1.0, which must end with "# EOF") and prints the families as JSON:
[{"name", "type", "help", "samples": [{"name", "labels", "value"}]}].
A page the parser refuses exits non-zero with the parser's error on stderr."""
import json
import math
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families


def main():
    fmt = sys.argv[1]
    text = sys.stdin.read()
    parse = {"text": text_families, "openmetrics": openmetrics_families}[fmt]
    out = []
    try:
        for fam in parse(text):
            out.append(
                {
                    "name": fam.name,
                    "type": fam.type,
                    "help": fam.documentation,
                    "samples": [
                        {
                            "name": s.name,
                            "labels": s.labels,
                            "value": None if math.isinf(s.value) else s.value,
                        }
                        for s in fam.samples
                    ],
                }
            )
    except Exception as e:  # the parser's refusal, as the test's failure message
        print(f"{fmt} parser refused the page: {e!r}", file=sys.stderr)
        sys.exit(1)
    json.dump(out, sys.stdout)


main()
