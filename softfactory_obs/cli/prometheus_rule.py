"""The prometheus-operator ``PrometheusRule`` that carries ``rules/recording.yml`` and ``rules/alerts.yml``.

The rule groups are copied as text, re-indented under ``spec:``, so the manifest holds exactly the
rules promtool tests, comments included, and the substitutions of ``softfactory-obs configs`` apply to
it as to the rule files. Regenerate the shipped copy after editing the rules (a test compares them)::

    python -m softfactory_obs.cli.prometheus_rule > softfactory_obs/configs/kubernetes/prometheus-rule.yml
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .configs import SHIPPED

RULE_FILES = ("rules/recording.yml", "rules/alerts.yml")
MANIFEST = "kubernetes/prometheus-rule.yml"

_HEADER = """\
# GENERATED from rules/recording.yml and rules/alerts.yml by softfactory_obs.cli.prometheus_rule;
# edit those and regenerate. For the Prometheus Operator: its Prometheus loads the PrometheusRules
# its ruleSelector matches (kube-prometheus-stack's default wants the label release: <its release>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: softfactory-obs
  labels: {app: shop}
spec:
  groups:
"""


def _groups_text(rules_text: str, source: str) -> str:
    """The list under ``groups:`` of one rule file, re-indented two more spaces."""
    lines = rules_text.splitlines()
    try:
        start = lines.index("groups:") + 1
    except ValueError:
        raise ValueError(f"{source}: no top-level 'groups:' line") from None
    return "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])


def render(read: Callable[[str], str]) -> str:
    """The manifest, given ``read(name)`` of each of :data:`RULE_FILES` (relative to the configs)."""
    return _HEADER + "".join(_groups_text(read(name), name) for name in RULE_FILES)


def main() -> int:
    """Print the manifest generated from the shipped rules."""
    sys.stdout.write(render(lambda name: (SHIPPED / name).read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
