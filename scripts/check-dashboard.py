#!/usr/bin/env python3
"""Checks that every PromQL expression of a Grafana dashboard parses.

    scripts/check-dashboard.py packaging/grafana/capra.json "$(scripts/promtool.sh)"

Each panel target's "expr" becomes a recording rule in a temporary rules
file, with the dashboard's variables replaced ($sync, $db and other
variables by .*, $__rate_interval, $__interval and $__range by 5m), and
`promtool check rules` reads it. Then the script prints a line `names:`
and every capra_* series name the expressions and the variable queries
use, one per line, sorted (the histogram's as scraped: ..._bucket, _sum,
_count), for comparing against a live scrape. Exit status: promtool's when
it fails, 1 when the dashboard has no expression, 2 on bad usage.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

SUBSTITUTIONS = [
    (r"\$\{?__range_ms\}?", "300000"),
    (r"\$\{?__range_s\}?", "300"),
    (r"\$\{?__interval_ms\}?", "300000"),
    (r"\$\{?__(rate_interval|interval|range)\}?", "5m"),
    (r"\$\{[A-Za-z0-9_]+(:[A-Za-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\]", ".*"),
]
NAME = re.compile(r"\bcapra_[a-zA-Z0-9_]+")


def walk(node, exprs, queries):
    """Collects target exprs and variable queries anywhere in the JSON."""
    if isinstance(node, dict):
        targets = node.get("targets")
        if isinstance(targets, list):
            for t in targets:
                if isinstance(t, dict) and isinstance(t.get("expr"), str) and t["expr"].strip():
                    exprs.append(t["expr"])
        if node.get("type") == "query":
            q = node.get("query")
            if isinstance(q, dict):
                q = q.get("query")
            if isinstance(q, str):
                queries.append(q)
        for k, v in node.items():
            if k != "targets":
                walk(v, exprs, queries)
    elif isinstance(node, list):
        for v in node:
            walk(v, exprs, queries)


def substitute(expr):
    for pattern, value in SUBSTITUTIONS:
        expr = re.sub(pattern, value, expr)
    return expr


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    dashboard, promtool = sys.argv[1], sys.argv[2]
    with open(dashboard) as f:
        dash = json.load(f)
    exprs, queries = [], []
    walk(dash, exprs, queries)
    if not exprs:
        print(f"{dashboard}: no expr found", file=sys.stderr)
        return 1
    rules = [{"record": f"dashboard_expr_{i}", "expr": substitute(e)} for i, e in enumerate(exprs)]
    # JSON is YAML: promtool reads it as a rules file.
    doc = {"groups": [{"name": "dashboard", "rules": rules}]}
    fd, path = tempfile.mkstemp(prefix="capra-dashboard-", suffix=".rules.yml")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        run = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stdout + run.stderr)
            for i, e in enumerate(exprs):
                print(f"dashboard_expr_{i}: {substitute(e)}", file=sys.stderr)
            return run.returncode
    finally:
        os.unlink(path)
    print(f"{dashboard}: {len(exprs)} expressions parse")
    names = set()
    for text in exprs + queries:
        names.update(NAME.findall(text))
    print("names:")
    for n in sorted(names):
        print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
