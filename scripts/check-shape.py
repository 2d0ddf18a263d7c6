#!/usr/bin/env python3
"""Shape check for the workspace's source files (issue #16).

Reports, for every `crates/*/src/**/*.rs`:
  (a) files over 600 lines;
  (b) non-test functions over 80 lines (from the `fn` line to its closing
      brace), skipping `#[cfg(test)]` items, `#[test]` functions, files
      named `tests.rs`, files under a `tests/` directory and files a
      `#[cfg(test)] mod name;` declaration pulls in;
  (c) `Hypervisor::` in the engine outside `crates/cocoon-engine/src/backend/`, in code
      only (not in comments, strings or test code).

Prints one line per violation and exits 1 if there is any, 0 otherwise.
Usage: scripts/check-shape.py [REPO_ROOT]   (default: the script's repo)
"""

import re
import sys
from pathlib import Path

MAX_FILE_LINES = 600
MAX_FN_LINES = 80
BACKEND_DIR = "crates/cocoon-engine/src/backend/"


def strip_code(text):
    """Return `text` with comments and the contents of string and char
    literals replaced by spaces, newlines kept, so that braces, `fn` and
    `Hypervisor::` are only found in code and line numbers stay right."""
    out = list(text)
    n = len(text)
    i = 0

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    def ident_char(c):
        return c.isalnum() or c == "_"

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif (c in "rb") and (i == 0 or not ident_char(text[i - 1])):
            m = re.compile(r'(?:br|rb|r)(#*)"').match(text, i)
            if m and not (c == "b" and text[i + 1] == "b"):
                close = '"' + m.group(1)
                j = text.find(close, m.end())
                j = n if j < 0 else j + len(close)
                blank(m.end(), j - len(close))
                i = j
            elif text.startswith('b"', i) or text.startswith("b'", i):
                i += 1  # the literal itself is handled on the next round
            else:
                i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i + 1, j)
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}', '{') or a lifetime ('a).
            if i + 1 < n and text[i + 1] == "\\":
                j = text.find("'", i + 2)
                j = n if j < 0 else j
                blank(i + 1, j)
                i = j + 1
            elif i + 2 < n and text[i + 2] == "'":
                blank(i + 1, i + 2)
                i += 3
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def matching_brace(code, open_at):
    depth = 0
    for k in range(open_at, len(code)):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(code) - 1


def item_end(code, start):
    """The end offset of the item starting at `start`: its matching closing
    brace, or the `;` that ends a body-less item, whichever comes first."""
    depth = 0
    for k in range(start, len(code)):
        ch = code[k]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == ";" and depth == 0:
            return k
        elif ch == "{" and depth == 0:
            return matching_brace(code, k)
    return len(code) - 1


TEST_ATTR = re.compile(r"#\[\s*(?:cfg\s*\(\s*(?:all\s*\(\s*)?test\b|(?:\w+::)?test\s*[\](])")
TEST_MOD_DECL = re.compile(r"(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")
FN = re.compile(r"\bfn\s+(\w+)")


def test_regions(code):
    """Offsets (start, end) of the items under `#[cfg(test)]` or `#[test]`,
    and the names of the modules declared as `#[cfg(test)] mod name;`."""
    regions, mods = [], []
    for m in TEST_ATTR.finditer(code):
        # Skip the attribute itself and any attributes that follow it.
        k = m.start()
        while True:
            while k < len(code) and code[k].isspace():
                k += 1
            if code.startswith("#[", k) or code.startswith("#![", k):
                k = code.index("[", k)
                depth = 0
                while k < len(code):
                    depth += code[k] == "["
                    depth -= code[k] == "]"
                    k += 1
                    if depth == 0:
                        break
            else:
                break
        end = item_end(code, k)
        regions.append((m.start(), end))
        decl = TEST_MOD_DECL.match(code, k)
        if decl and decl.end() - 1 == end:
            mods.append(decl.group(1))
    return regions, mods


def in_regions(pos, regions):
    return any(a <= pos <= b for a, b in regions)


def line_of(code, pos):
    return code.count("\n", 0, pos) + 1


def child_module_paths(path, name):
    base = path.parent if path.name in ("mod.rs", "lib.rs", "main.rs") else path.with_suffix("")
    return {base / f"{name}.rs", base / name / "mod.rs"}


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    files = sorted(root.glob("crates/*/src/**/*.rs"))
    parsed = {}
    test_files = set()
    for path in files:
        code = strip_code(path.read_text(encoding="utf-8"))
        regions, mods = test_regions(code)
        parsed[path] = (code, regions)
        for name in mods:
            test_files |= child_module_paths(path, name)

    def is_test_file(path):
        rel = path.relative_to(root)
        if path.name == "tests.rs" or "tests" in rel.parts[3:-1]:
            return True
        # A file under a module that is itself test-only.
        return any(p in test_files for p in [path, *path.parents])

    # Directories of test-only modules (`#[cfg(test)] mod fixtures;` with
    # fixtures/ children) count as test code too.
    test_files |= {p.parent for p in test_files if p.name == "mod.rs"}
    test_files |= {p.with_suffix("") for p in list(test_files) if p.suffix == ".rs"}

    problems = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        code, regions = parsed[path]
        lines = code.count("\n") + (0 if code.endswith("\n") else 1)
        if lines > MAX_FILE_LINES:
            problems.append(f"{rel}: file has {lines} lines (max {MAX_FILE_LINES})")
        if is_test_file(path):
            continue
        for m in FN.finditer(code):
            if in_regions(m.start(), regions):
                continue
            end = item_end(code, m.end())
            if code[end] != "}":
                continue  # a declaration without a body
            first, last = line_of(code, m.start()), line_of(code, end)
            length = last - first + 1
            if length > MAX_FN_LINES:
                problems.append(
                    f"{rel}:{first}: fn {m.group(1)} has {length} lines (max {MAX_FN_LINES})"
                )
        # The engine decides per VMM only in its backends (the CLI maps
        # flags such as --fc to a kind, which is parsing, not a decision).
        if rel.startswith("crates/cocoon-engine/src/") and not rel.startswith(BACKEND_DIR):
            for m in re.finditer(r"\bHypervisor::", code):
                if not in_regions(m.start(), regions):
                    problems.append(f"{rel}:{line_of(code, m.start())}: Hypervisor:: outside {BACKEND_DIR}")

    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) in {len(files)} files", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
