"""Makes a tollgate config checkable outside the cluster: used by deploy/validate.sh.

  python standins.py GATEWAY_YAML OUT_DIR TOLLGATE...

Rewrites every /etc/tollgate/ path in GATEWAY_YAML to OUT_DIR/etc/ and creates a
throwaway stand-in for each referenced file, shaped like the real Secret: a matching
self-signed certificate and key for *.crt/*.key, a PKCS#8 EC P-256 key for other *.pem,
an argon2id hash (made by `TOLLGATE hash-secret`) for a file whose name says "hash", a
redis:// URL for one that says "redis", and a dummy secret otherwise. Every ${env:NAME}
gets a dummy value the same way. Prints the rewritten config's path, then NAME=value
lines for the environment.
"""

import re
import subprocess
import sys
from pathlib import Path


def hash_secret(tollgate: list[str]) -> str:
    r = subprocess.run(tollgate + ["hash-secret"], input="dummy-secret\n", capture_output=True,
                       text=True, check=True)
    return r.stdout.strip()


def main() -> None:
    src, out, tollgate = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    text = src.read_text()
    root = out / "etc"
    paths = sorted(set(re.findall(r"/etc/tollgate/[\w./-]+", text)))
    made = {}
    for p in paths:
        f = root / p[len("/etc/tollgate/"):]
        f.parent.mkdir(parents=True, exist_ok=True)
        name = f.name
        if name.endswith(".crt") or name.endswith(".key"):
            crt, key = f.with_suffix(".crt"), f.with_suffix(".key")
            if crt not in made:
                subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                                "-subj", "/CN=api.example.com", "-keyout", str(key), "-out", str(crt)],
                               check=True, capture_output=True)
                made[crt] = made[key] = True
        elif name.endswith(".pem"):
            subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-out", str(f)], check=True, capture_output=True)
        elif "hash" in name:
            f.write_text(hash_secret(tollgate) + "\n")
        elif "redis" in name:
            f.write_text("redis://127.0.0.1:6379/0\n")
        else:
            f.write_text("dummy-secret-value\n")
    config = out / "gateway.yaml"
    config.write_text(text.replace("/etc/tollgate/", f"{root}/"))
    print(config)
    for name in sorted(set(re.findall(r"\$\{env:(\w+)\}", text))):
        value = hash_secret(tollgate) if "HASH" in name.upper() else f"dummy-{name.lower()}"
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
