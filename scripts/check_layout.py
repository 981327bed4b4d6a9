#!/usr/bin/env python3
"""The workspace keeps the layout of DESIGN §11 (docs/architecture.md):

  (a) the crate graph (`cargo metadata --no-deps`, normal, build and dev
      dependencies) uses only the allowed edges below: dependencies point
      downward only, and sigma-dest never depends on sigma-auth;
  (b) inside each crate, the graph of top-level modules built from
      `crate::x` paths (`use crate::x`, `use crate::{x, y::z}`, `crate::x::f()`,
      names the crate root re-exports from x, and `super::` paths climbing
      to the root) has no cycle. Only non-test code counts: a file is read up
      to its first `#[cfg(test)]`, and files declared under `#[cfg(test)]`
      (`mod tests;`) are skipped;
  (c) no .rs file under crates/*/src has more than 1 200 lines before its
      first `#[cfg(test)]`.

Prints the crate graph and every violation; exits 1 on any violation.
Python 3 standard library only."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 1200

# crate -> the workspace crates it may depend on (T -> H -> A -> router ->
# destination, DESIGN §11). A listed edge need not exist; an unlisted one fails.
ALLOWED = {
    "sigma-http": set(),
    "sigma-core": {"sigma-http"},
    "sigma-store": {"sigma-http", "sigma-core"},
    "sigma-auth": {"sigma-http", "sigma-core", "sigma-store"},
    "sigma-dest": {"sigma-http", "sigma-core", "sigma-store"},
    "sigma-tls": {"sigma-core"},
    "sigma": {
        "sigma-http",
        "sigma-core",
        "sigma-store",
        "sigma-auth",
        "sigma-dest",
        "sigma-tls",
    },
    "sigma-load": set(),
}

# Known exceptions, each with the reason it is not fixed yet. Keep these
# empty unless a fix is too large for the change at hand; every entry is
# printed on each run so that it is not forgotten.
#   (crate, frozenset of modules in the cycle) -> why
KNOWN_CYCLES = {
    ("sigma-dest", frozenset({"db", "factory", "upstream"})):
        "factory::Build names the db/upstream settings it hands to the "
        "factories, and those modules implement factory::Factory; to fix, move "
        "the settings types into a leaf module (e.g. sigma_dest::settings) that "
        "factory and the destinations both import",
}
#   path relative to the repository -> why
KNOWN_LONG_FILES = {}

CFG_TEST = re.compile(r"^\s*#\[cfg\(test\)\]")
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")


def fail(errors, msg):
    errors.append(msg)
    print("  FAIL " + msg)


# ---------------------------------------------------------------- (a) crates


def crate_graph(errors):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    meta = json.loads(out)
    members = set(meta["workspace_members"])
    pkgs = [p for p in meta["packages"] if p["id"] in members]
    names = {p["name"] for p in pkgs}
    print("crate graph (workspace crates only; [dev] = dev-dependency):")
    for p in sorted(pkgs, key=lambda p: p["name"]):
        name = p["name"]
        deps = sorted(
            {(d["name"], d["kind"] or "normal") for d in p["dependencies"] if d["name"] in names}
        )
        shown = ", ".join(n + (" [dev]" if k == "dev" else "") for n, k in deps)
        print(f"  {name} -> {shown or '(none)'}")
        if name not in ALLOWED:
            fail(errors, f"crate {name} is not in ALLOWED of scripts/check_layout.py")
            continue
        for dep, kind in deps:
            if dep not in ALLOWED[name]:
                fail(errors, f"{name} depends on {dep} ({kind}): not an allowed edge")
    for name in sorted(set(ALLOWED) - names):
        fail(errors, f"crate {name} of ALLOWED is not a workspace member")
    return pkgs


# ------------------------------------------------------------- (b) modules


def strip_comments(text):
    """Drops // and /* */ comments and string literals (roughly; enough for paths)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def non_test(text):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if CFG_TEST.match(line):
            return lines[:i]
    return lines


def brace_group(text, start):
    """text[start] == '{': returns the contents up to the matching brace."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return text[start + 1 :]


def top_names(group):
    """Top-level first segments of a use group: `a, b::c, d::{e, f}` -> a, b, d."""
    names, depth, cur = [], 0, ""
    for ch in group + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            seg = cur.strip()
            if seg:
                names.append(re.split(r"[\s:]", seg, maxsplit=1)[0])
            cur = ""
        else:
            cur += ch
    return names


def crate_refs(text):
    """First segments after `crate::` in text (which has comments stripped)."""
    refs = set()
    for m in re.finditer(r"\bcrate::(\{|\w+)", text):
        if m.group(1) == "{":
            refs.update(top_names(brace_group(text, m.start(1))))
        else:
            refs.add(m.group(1))
    return refs


def super_refs(text, depth):
    """`super::` chains that climb exactly to the crate root from a file `depth`
    modules below it (src/x.rs is depth 1, src/x/y.rs depth 2)."""
    refs = set()
    for m in re.finditer(r"\b((?:super::)+)(\{|\w+)", text):
        if m.group(1).count("super::") != depth:
            continue
        if m.group(2) == "{":
            refs.update(top_names(brace_group(text, m.start(2))))
        else:
            refs.add(m.group(2))
    return refs


def test_only_files(src):
    """Files declared as `#[cfg(test)] mod x;` somewhere under src."""
    skip = set()
    for f in src.rglob("*.rs"):
        text = f.read_text(encoding="utf-8")
        base = f.parent if f.name in ("lib.rs", "main.rs", "mod.rs") else f.with_suffix("")
        for m in TEST_MOD.finditer(text):
            for cand in (base / (m.group(1) + ".rs"), base / m.group(1) / "mod.rs"):
                skip.add(cand)
            d = base / m.group(1)
            if d.is_dir():
                skip.update(d.rglob("*.rs"))
    return skip


def root_reexports(root_text, modules):
    """Names the crate root re-exports from one of its modules: `pub use x::A;`,
    `pub use x::{A, b::B};` -> {A: x, B: x}."""
    out = {}
    for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", root_text):
        path = m.group(1).strip()
        path = re.sub(r"^(?:crate|self)::", "", path)
        first = re.split(r"::", path, maxsplit=1)[0].strip()
        if first not in modules:
            continue
        rest = path[len(first) :].lstrip(":")
        for leaf in re.findall(r"(\w+)(?:\s+as\s+(\w+))?\s*(?:[,}]|$)", rest):
            out[leaf[1] or leaf[0]] = first
    return out


def find_cycle(graph, scc):
    """A shortest cycle through the smallest-named node of a strongly
    connected component (breadth-first search back to it)."""
    start = min(scc)
    prev = {start: None}
    queue = [start]
    while queue:
        n = queue.pop(0)
        for m in sorted(graph[n]):
            if m not in scc:
                continue
            if m == start:
                path = [n]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if m not in prev:
                prev[m] = n
                queue.append(m)
    return sorted(scc)


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def module_graph(crate_dir, errors):
    src = crate_dir / "src"
    name = crate_dir.name
    roots = [r for r in ("lib.rs", "main.rs") if (src / r).exists()]
    modules = set()
    for p in src.iterdir():
        if p.suffix == ".rs" and p.name not in ("lib.rs", "main.rs"):
            modules.add(p.stem)
        elif p.is_dir():
            modules.add(p.name)
    skip = test_only_files(src)
    root_text = ""
    for r in roots:
        root_text += strip_comments("\n".join(non_test((src / r).read_text(encoding="utf-8"))))
    reexp = root_reexports(root_text, modules)
    graph = {m: set() for m in modules}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        if f in skip or rel.parts[0] in ("lib.rs", "main.rs"):
            continue
        mod = rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]
        depth = len(rel.parts) - (1 if f.name == "mod.rs" else 0)
        text = strip_comments("\n".join(non_test(f.read_text(encoding="utf-8"))))
        for ref in crate_refs(text) | super_refs(text, depth):
            target = ref if ref in modules else reexp.get(ref)
            if target and target != mod:
                graph[mod].add(target)
    bad = []
    for comp in sccs(graph):
        if len(comp) < 2:
            continue
        key = (name, frozenset(comp))
        cycle = " -> ".join(find_cycle(graph, comp))
        if key in KNOWN_CYCLES:
            print(f"  known cycle in {name}: {cycle} ({KNOWN_CYCLES[key]})")
            continue
        bad.append(comp)
        fail(errors, f"{name}: module cycle {cycle} (component: {', '.join(sorted(comp))})")
    return bad


# ---------------------------------------------------------------- (c) lines


def long_files(errors):
    for f in sorted(ROOT.glob("crates/*/src/**/*.rs")):
        src = next(p for p in f.parents if p.name == "src")
        if f in test_only_files_cached(src):
            continue
        n = len(non_test(f.read_text(encoding="utf-8")))
        rel = str(f.relative_to(ROOT))
        if n > MAX_LINES:
            if rel in KNOWN_LONG_FILES:
                print(f"  known long file {rel}: {n} lines ({KNOWN_LONG_FILES[rel]})")
                continue
            fail(errors, f"{rel}: {n} lines of non-test code (over {MAX_LINES})")


_TEST_ONLY = {}


def test_only_files_cached(src):
    if src not in _TEST_ONLY:
        _TEST_ONLY[src] = test_only_files(src)
    return _TEST_ONLY[src]


def main():
    errors = []
    pkgs = crate_graph(errors)
    print("module cycles (crate::x paths, non-test code):")
    for p in sorted(pkgs, key=lambda p: p["name"]):
        module_graph(Path(p["manifest_path"]).parent, errors)
    print(f"files over {MAX_LINES} lines of non-test code:")
    long_files(errors)
    if errors:
        print(f"layout: {len(errors)} problem(s)")
        return 1
    print("layout: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
