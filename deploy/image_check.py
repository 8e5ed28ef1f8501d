"""Builds deploy/Dockerfile's binary the way the image build does, without a container daemon.

Run through deploy/image-check.sh (see there for what is checked and why). Reads the
Dockerfile and the repository's .dockerignore; does not know the file lists itself, so a
COPY line or an ignore rule that drifts from what Cargo.toml needs fails here as it
would in `docker build`.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IGNORE = ROOT / ".dockerignore"


def fail(msg: str) -> None:
    print(f"deploy/image-check.sh: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg: str) -> None:
    print(f"deploy/image-check.sh: {msg}", flush=True)


# --- Dockerfile ------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    if cur:
        fail("Dockerfile ends inside a continued line")
    return out


def stages(ins: list[tuple[str, str]]) -> list[dict]:
    """Each FROM starts a stage: {name, base, ins: [...]}; ARGs before the first FROM are global."""
    global_args, out = {}, []
    for word, rest in ins:
        if word == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            out.append({"name": name, "base": parts[0], "ins": []})
        elif not out:
            if word == "ARG":
                k, _, v = rest.partition("=")
                global_args[k.strip()] = v.strip().strip('"')
        else:
            out[-1]["ins"].append((word, rest))
    for s in out:
        s["base"] = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), ""), s["base"])
    return out


def split_flags(rest: str) -> tuple[list[str], list[str]]:
    """`--flag=x --flag2 a b` -> (flags, words); JSON (exec) form is understood too."""
    rest = rest.strip()
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    flags = []
    while words and words[0].startswith("--"):
        flags.append(words.pop(0))
    return flags, words


def exec_form(rest: str) -> list[str]:
    rest = rest.strip()
    if not rest.startswith("["):
        fail(f"expected the exec (JSON) form, got: {rest}")
    return json.loads(rest)


# --- .dockerignore (moby/patternmatcher semantics) -------------------------------------

def ignore_rules(text: str) -> list[tuple[bool, re.Pattern, str]]:
    """(is_exception, regex, pattern) in file order; the last rule that matches a path wins."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exc = line.startswith("!")
        if exc:
            line = line[1:].strip()
        line = os.path.normpath(line).lstrip("/")
        if line == ".":
            continue
        rules.append((exc, re.compile("^" + glob_regex(line) + "$"), line))
    return rules


def glob_regex(pat: str) -> str:
    """Go filepath.Match syntax plus `**` (any number of path segments)."""
    out, i = "", 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**", i):
            i += 2
            if pat.startswith("/", i):  # `**/` : zero or more leading directories
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pat.find("]", i)
            if j < 0:
                fail(f".dockerignore: unterminated [ in {pat!r}")
            cls = pat[i + 1:j]
            out += "[" + ("^" + cls[1:] if cls.startswith("^") else cls) + "]"
            i = j
        elif c == "\\" and i + 1 < len(pat):
            i += 1
            out += re.escape(pat[i])
        else:
            out += re.escape(c)
        i += 1
    return out


def excluded(rel: str, rules) -> bool:
    """A path is excluded when the last rule matching it, or one of its parent folders, excludes."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for exc, rx, _ in rules:
        if any(rx.match(p) for p in prefixes):
            result = not exc
    return result


def may_reinclude(rel_dir: str, rules) -> bool:
    """Whether an exception rule could match something below an excluded folder."""
    for exc, _, pat in rules:
        if exc:
            lit = re.split(r"[*?\[\\]", pat, maxsplit=1)[0]
            if not lit or (rel_dir + "/").startswith(lit) or lit.startswith(rel_dir + "/"):
                return True
    return False


def context_files(rules) -> set[str]:
    """Every file of the repository (git-tracked or not, like `docker build`) the context keeps."""
    keep = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        # Skip what is excluded whole (target/ alone has ~10^5 files), as docker does.
        dirnames[:] = [
            d for d in dirnames
            if not (rel_dir == "." and d == ".git")
            and not (excluded(os.path.normpath(os.path.join(rel_dir, d)), rules)
                     and not may_reinclude(os.path.normpath(os.path.join(rel_dir, d)), rules))
        ]
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if not excluded(rel, rules):
                keep.add(rel)
    return keep


# --- assemble and build ----------------------------------------------------------------

def copy_into(root: Path, workdir: str, srcs: list[str], dest: str, ctx: set[str]) -> int:
    """COPY srcs dest, from the filtered context into `root` (the build stage's filesystem)."""
    dest_abs = dest if dest.startswith("/") else os.path.join(workdir, dest)
    many = len(srcs) > 1
    if many and not dest.endswith("/"):
        fail(f"COPY with several sources needs a destination ending in /: {dest}")
    n = 0
    for src in srcs:
        src = os.path.normpath(src).lstrip("/")
        rx = re.compile("^" + glob_regex(src) + "(/.*)?$")
        hits = sorted(f for f in ctx if rx.match(f))
        if not hits:
            fail(f"COPY {src}: nothing in the build context matches (check .dockerignore)")
        for f in hits:
            m = re.match("^" + glob_regex(src), f)
            below = f[m.end():].lstrip("/")
            top = f[: m.end()]
            if below:  # a folder: its contents go into dest
                target = os.path.join(dest_abs, below)
            elif dest.endswith("/") or many:
                target = os.path.join(dest_abs, os.path.basename(top))
            else:
                target = dest_abs
            out = root / target.lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, out)
            n += 1
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    # One fixed folder (not a random temporary one), so that the build stage's paths, and
    # with them cargo's fingerprints, are the same on every run: a second run rebuilds
    # only what changed, and old builds do not pile up.
    work = Path(os.environ.get("IMAGE_CHECK_DIR", ROOT / "target" / "image-check")).resolve()
    cache = work / "target"
    ins = instructions(DOCKERFILE.read_text())
    st = stages(ins)
    if len(st) < 2:
        fail("expected a build stage and a runtime stage")
    build, runtime = st[0], st[-1]
    rules = ignore_rules(IGNORE.read_text()) if IGNORE.exists() else []
    if (ROOT / "deploy" / "Dockerfile.dockerignore").exists():
        fail("deploy/Dockerfile.dockerignore would override .dockerignore under BuildKit")
    ctx = context_files(rules)
    for secret in ("keys", "target", ".git"):
        if any(f == secret or f.startswith(secret + "/") for f in ctx):
            fail(f"{secret}/ is in the build context: .dockerignore must leave it out")

    tmp = work / "run"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        root = tmp / "root"
        workdir, run_cmd, mounts, copied = "/", None, [], 0
        for word, rest in build["ins"]:
            if word == "WORKDIR":
                workdir = os.path.join(workdir, rest.strip())
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif word in ("COPY", "ADD"):
                flags, words = split_flags(rest)
                if any(f.startswith("--from") for f in flags):
                    fail("the build stage copies from another stage; image-check does not follow that")
                copied += copy_into(root, workdir, words[:-1], words[-1], ctx)
            elif word == "RUN":
                if run_cmd is not None:
                    fail("image-check expects one RUN in the build stage")
                flags, _ = split_flags(rest)
                mounts = [f for f in flags if f.startswith("--mount=")]
                run_cmd = re.sub(r"^(--\S+\s+)*", "", rest).strip()
        if run_cmd is None:
            fail("no RUN in the build stage")
        # Cargo reads .cargo/config.toml from every parent folder and CARGO_HOME; the image
        # build sees none, so one here would make this build differ from the image's.
        cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
        configs = [d / ".cargo" / c for d in root.parents for c in ("config.toml", "config")]
        configs += [cargo_home / "config.toml", cargo_home / "config"]
        for c in configs:
            if c.exists():
                fail(f"{c} would apply to this build but not to the image build")
        say(f"build context: {copied} files copied as the Dockerfile's COPY lines say, into {root}")

        # The runtime stage takes files from the build stage: map their folders into root.
        pulled = []
        for word, rest in runtime["ins"]:
            if word == "COPY":
                flags, words = split_flags(rest)
                if any(f.startswith("--from=") for f in flags):
                    pulled.append((words[0], words[1]))
        if len(pulled) != 1:
            fail(f"expected one COPY --from=build in the runtime stage, found {pulled}")
        out_path, image_path = pulled[0]

        # Cache mounts: the target folder becomes a link to the persistent cache (so CI is
        # not a cold release build every time); the cargo registry is this machine's.
        for m in mounts:
            opts = dict(kv.split("=", 1) for kv in m[len("--mount="):].split(",") if "=" in kv)
            t = opts.get("target", "")
            if t.startswith(workdir.rstrip("/") + "/"):
                link = root / t.lstrip("/")
                cache.mkdir(parents=True, exist_ok=True)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(cache)
            elif "cargo/registry" not in t:
                fail(f"unexpected cache mount {m}")

        cmd = run_cmd
        for absdir in {workdir, os.path.dirname(out_path)}:
            cmd = re.sub(r"(?<![\w./])" + re.escape(absdir.rstrip("/")) + r"(?=/|\b)",
                         str(root) + absdir.rstrip("/"), cmd)
        if "--locked" not in cmd or "cargo build" not in cmd:
            fail(f"the RUN command is not a locked cargo build: {run_cmd}")
        say(f"running the Dockerfile's RUN command in {root / workdir.lstrip('/')}:\n    {cmd}")
        say(f"  (target folder: {cache})")
        t0 = time.monotonic()
        env = dict(os.environ)
        env.pop("CARGO_TARGET_DIR", None)
        env.pop("CARGO_BUILD_TARGET_DIR", None)
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=root / workdir.lstrip("/"), env=env)
        if r.returncode != 0:
            fail(f"the Dockerfile's build command failed (exit {r.returncode})")
        say(f"build command finished in {time.monotonic() - t0:.0f} s")

        binary = root / out_path.lstrip("/")
        check_binary(binary)
        check_runtime_stage(runtime, binary, image_path, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say("OK")


def check_binary(binary: Path) -> None:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        fail(f"the build did not produce {binary}")
    sections = subprocess.run(["readelf", "-S", "-W", str(binary)], capture_output=True, text=True)
    if sections.returncode != 0:
        fail(f"readelf failed on {binary}: {sections.stderr}")
    if ".symtab" in sections.stdout or ".debug_info" in sections.stdout:
        fail("the image binary is not stripped (.symtab or .debug_info present)")
    size = binary.stat().st_size / 2**20
    want = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    v = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    if v.returncode != 0 or want not in v.stdout:
        fail(f"`tollgate --version` said {v.stdout!r} {v.stderr!r}, expected {want}")
    say(f"binary: stripped, {size:.1f} MiB, {v.stdout.strip()}")


def check_runtime_stage(runtime: dict, binary: Path, image_path: str, tmp: Path) -> None:
    """Labels, user, and ENTRYPOINT/CMD/HEALTHCHECK run against the built binary."""
    ins = runtime["ins"]
    args, env, labels = {}, {}, {}
    entry = cmd = health = user = None
    for word, rest in ins:
        if word == "ARG":
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
        elif word == "LABEL":
            for kv in shlex.split(rest):
                k, _, v = kv.partition("=")
                labels[k] = v
        elif word == "ENV":
            k, _, v = rest.partition("=")
            env[k.strip()] = v.strip().strip('"')
        elif word == "ENTRYPOINT":
            entry = exec_form(rest)
        elif word == "CMD":
            cmd = exec_form(rest)
        elif word == "USER":
            user = rest.strip()
        elif word == "HEALTHCHECK":
            health = exec_form(rest.split(" CMD ", 1)[1])
    need = ["title", "description", "licenses", "version", "revision", "created", "source"]
    missing = [n for n in need if f"org.opencontainers.image.{n}" not in labels]
    if missing:
        fail(f"OCI labels missing: {missing}")
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]
    if args.get("VERSION") != cargo["version"]:
        fail(f"ARG VERSION={args.get('VERSION')} but Cargo.toml says {cargo['version']}")
    if labels["org.opencontainers.image.licenses"] != cargo["license"]:
        fail("the licenses label differs from Cargo.toml's license")
    if not user or not re.fullmatch(r"[1-9]\d*:[1-9]\d*", user):
        fail(f"USER must be a numeric non-root uid:gid, got {user!r}")
    if not entry or entry[0] != image_path or not cmd or not health or health[0] != image_path:
        fail(f"ENTRYPOINT/HEALTHCHECK must run {image_path}: {entry} {health}")
    say(f"runtime stage: {len(labels)} OCI labels, USER {user}, ENTRYPOINT {entry + cmd}, HEALTHCHECK {health}")

    # Start the server as the image would (ENTRYPOINT + CMD, the image's ENV) with a
    # config at the path ENV names, then run the HEALTHCHECK command against it.
    etc = tmp / "etc-root"
    env = {k: re.sub(r"^/etc/", str(etc) + "/etc/", v) for k, v in env.items()}
    config = Path(env.get("TOLLGATE_CONFIG", ""))
    if not str(config).startswith(str(etc)):
        fail("ENV TOLLGATE_CONFIG must name the config under /etc")
    config.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config.write_text(
        "server:\n  listen: \"127.0.0.1:0\"\n"
        f"  admin_listen: \"127.0.0.1:{port}\"\n"
        "upstreams:\n  - name: u\n    url: \"http://127.0.0.1:9\"\n"
        "routes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth: none\n"
    )
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    run_env.update(env)
    argv = lambda words: [str(binary) if w == image_path else w for w in words]
    hc = lambda: subprocess.run(argv(health), env=run_env, capture_output=True, text=True, timeout=20)
    log = open(tmp / "server.log", "w+")
    server = subprocess.Popen(argv(entry + cmd), env=run_env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            r = hc()
            if r.returncode == 0:
                break
            if server.poll() is not None:
                log.seek(0)
                fail(f"the image's ENTRYPOINT+CMD exited {server.returncode}: {log.read()}")
            if time.monotonic() > deadline:
                fail(f"HEALTHCHECK never passed: {r.stderr}")
            time.sleep(0.2)
        say(f"HEALTHCHECK against the running ENTRYPOINT+CMD: exit 0 ({r.stdout.strip()})")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if server.returncode != 0:
        fail(f"SIGTERM: the server exited {server.returncode}")
    r = hc()
    if r.returncode != 1:
        fail(f"HEALTHCHECK with the server stopped: exit {r.returncode}, expected 1")
    say(f"HEALTHCHECK with the server stopped: exit 1 ({r.stderr.strip()})")


if __name__ == "__main__":
    main()
