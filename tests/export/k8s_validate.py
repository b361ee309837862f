#!/usr/bin/env python3
"""Validate Kubernetes manifests with kubernetes-validate in strict mode.

Usage: k8s_validate.py VERSION[,VERSION...] FILE...
VERSION "latest" is the newest schema the installed package ships. Prints one line per
failing document (file, document index, version, message) and the counts; exits 1 on any
failure, 2 when the package is missing (the caller must fail loudly, never skip).
"""
import sys

try:
    import kubernetes_validate as kv
    import yaml
except ImportError as e:  # pragma: no cover
    print(f"kubernetes-validate is not installed: {e}", file=sys.stderr)
    sys.exit(2)


def main():
    versions = sys.argv[1].split(",")
    versions = [kv.latest_version() if v == "latest" else v for v in versions]
    docs = failures = 0
    for path in sys.argv[2:]:
        with open(path) as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is None:
                    continue
                docs += 1
                for v in versions:
                    try:
                        kv.validate(doc, v, strict=True)
                    except Exception as e:  # ValidationError, SchemaNotFound, ...
                        failures += 1
                        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                        print(f"{path}#{i} ({doc.get('kind')}/{doc.get('metadata', {}).get('name')}) k8s {v}: {msg}")
    print(f"validated {docs} documents against {','.join(versions)} (strict): {failures} failures")
    sys.exit(1 if failures else 0)


main()
