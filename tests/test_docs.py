"""The guides cannot drift from the code.

- docs/install.md lists every key of tokenproxy.example.toml, with the default the code
  has (proxy/config.py's dataclasses), and no key that does not exist. The table's rows are
  printed by ``python tests/test_docs.py`` (paste them, then write the descriptions).
- every ``tokenproxy ...`` command line in docs/*.md and README.md (in shell code blocks and
  inline code) names a real command, and every option it passes is one of that command's.
- every admin API endpoint the guides name is one proxy/admin/app.py routes.
- every repository path they cite (``proxy/store/audit.py``, ``tests/...``) and every
  relative link exists, and every ``proxy.x.y`` module they name can be imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tokenproxy.example.toml"
INSTALL = ROOT / "docs" / "install.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
GUIDES = [*DOCS, ROOT / "README.md"]
GUIDE_NAMES = {
    "install.md", "policy.md", "tickets.md", "keys.md", "scaling.md", "insider-response.md",
    "security-model.md",
}

# ============================================================================
# Configuration keys and their defaults
# ============================================================================


def render(value: Any) -> str:
    """A value as TOML writes it (the subset the config uses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    raise TypeError(type(value))


def example_keys() -> Iterator[tuple[str, Any, bool]]:
    """(dotted key, value in the example, inside an array of tables) for every key.

    Arrays of tables and lists of inline tables become ``name[]``; an inline table that is a
    value (``columns = { full_name = "name" }``) is a leaf: its keys are data, not config.
    """

    def walk(prefix: str, table: dict[str, Any], in_array: bool) -> Iterator[tuple[str, Any, bool]]:
        for key, value in table.items():
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                yield f"{path}[]", value, in_array
                merged: dict[str, Any] = {}
                for item in value:
                    for k, v in item.items():
                        merged.setdefault(k, v)
                yield from walk(f"{path}[]", merged, True)
            elif isinstance(value, dict) and not prefix:
                yield from walk(path, value, in_array)
            else:
                yield path, value, in_array

    yield from walk("", tomllib.loads(EXAMPLE.read_text(encoding="utf-8")), False)


def code_default(path: str) -> Any:
    """The default proxy/config.py gives a plain ``section.key``, as TOML data."""
    from proxy.config import Config

    section, key = path.split(".")
    value = getattr(getattr(Config(), section), key)
    if isinstance(value, tuple):
        return list(value)
    return value


ROW = re.compile(r"^\| `([a-z_]+(?:\.[a-z_]+(?:\[\])?)+)` \| (.*?) \| (.*) \|$")


def install_rows() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in INSTALL.read_text(encoding="utf-8").splitlines():
        if m := ROW.match(line):
            assert m.group(1) not in rows, f"{m.group(1)} has two rows"
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def documented_default(path: str, value: Any, in_array: bool) -> str | None:
    """The default cell a plain key must have (None: keys inside arrays, described in words)."""
    if in_array:
        return None
    if path.endswith("[]") or path in {"http.routes", "pg.tables", "admin.tokens"}:
        return "none"
    return f"`{render(value)}`"


def test_every_example_key_is_in_install_md_with_its_default() -> None:
    rows = install_rows()
    assert rows, "docs/install.md has no key table"
    keys = list(example_keys())
    assert len(keys) >= 55
    for path, value, in_array in keys:
        assert path in rows, f"docs/install.md: no row for `{path}`"
        want = documented_default(path, value, in_array)
        if want is not None:
            assert rows[path][0] == want, f"`{path}`: the default is {want}"
        assert rows[path][1].strip(), f"`{path}`: say what it does"


def test_the_example_shows_the_code_defaults() -> None:
    for path, value, in_array in example_keys():
        if in_array or path.endswith("[]") or path in {"http.routes", "pg.tables"}:
            continue
        if path == "admin.tokens":
            assert code_default(path) == [] and value == []
            continue
        assert code_default(path) == value, path


def test_install_md_documents_no_key_that_does_not_exist() -> None:
    known = {path for path, _, _ in example_keys()}
    known |= {"admin.tokens[]", "admin.tokens[].name", "admin.tokens[].sha256"}
    for path in install_rows():
        assert path in known, f"docs/install.md documents `{path}`, which is no config key"


# ============================================================================
# Command lines
# ============================================================================

_FENCE = re.compile(r"^```(\S*)\s*$")
_SHELL = {"", "sh", "bash", "shell", "console", "text"}
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# `tokenproxy` where a command starts (a line, `$(`, after `|`, `;`, `&&`, a path's bin/) is
# always a call; anywhere else (`docker compose run --rm tokenproxy keys init`) only when the
# next word is one of its commands: `docker build -t tokenproxy .` names an image.
_START = re.compile(r"(?:^\s*(?:\$\s+)?|\$\(|[|;&]\s*|bin/)$")
_CALL = re.compile(r"(?<![\w./-])tokenproxy(?=\s|$)|(?<=bin/)tokenproxy(?=\s|$)")
_CUT = re.compile(r"\s(?:\||;|&&|\|\||>|<|2>|#)(?:\s|$)|\)")


def _lines_with_code(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, code) of shell code block lines and inline code spans."""
    fence: str | None = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _FENCE.match(line.strip())
        if m:
            fence = None if fence is not None else m.group(1)
            continue
        if fence is not None:
            if fence in _SHELL:
                yield n, line
        else:
            for span in _INLINE.findall(line):
                yield n, span


def top_commands() -> set[str]:
    from proxy.cli import main

    return set(main.list_commands(click.Context(main)))


def command_lines() -> Iterator[tuple[str, int, list[str]]]:
    """(file, line, argv after ``tokenproxy``) of every call in the guides."""
    for path in GUIDES:
        for n, code in _lines_with_code(path):
            for m in _CALL.finditer(code):
                rest = code[m.end():]
                if cut := _CUT.search(rest):
                    rest = rest[: cut.start()]
                try:
                    words = shlex.split(rest)
                except ValueError:
                    words = rest.split()
                if not _START.search(code[: m.start()]) and (
                    not words or words[0] not in top_commands()
                ):
                    continue
                yield path.name, n, words


def _options(command: click.Command) -> dict[str, bool]:
    """Option name -> takes a value."""
    out: dict[str, bool] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in [*param.opts, *param.secondary_opts]:
                out[name] = not (param.is_flag or param.count)
    out["--help"] = out["-h"] = False
    return out


def check_command(words: list[str]) -> str | None:
    """None when ``tokenproxy <words>`` names a real command with real options; else why."""
    from proxy.cli import main

    command: click.Command = main
    ctx = click.Context(main, info_name="tokenproxy")
    i = 0
    while i < len(words):
        word = words[i].strip("[]")
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            options = _options(command)
            if name not in options:
                return f"{' '.join(words)}: {command.name} has no option {name}"
            i += 2 if options[name] and "=" not in word else 1
            continue
        if isinstance(command, click.Group):
            sub = command.get_command(ctx, word)
            if sub is None:
                if word in {"...", "COMMAND"} or word.startswith("<"):
                    return None
                return f"{' '.join(words)}: {command.name} has no command {word!r}"
            command = sub
        i += 1
    return None


def test_the_command_checker() -> None:
    assert check_command(["keys", "rotate"]) is None
    assert check_command(["--log-level", "debug", "audit", "verify", "--anchor", "1:ab"]) is None
    assert check_command(["tickets", "add", "T-1", "--agent", "a", "--customer", "7"]) is None
    assert check_command(["keys", "spin"]) is not None
    assert check_command(["audit", "tail", "--lines", "5"]) is not None
    lines = {(" ".join(w)) for _, _, w in command_lines()}
    assert "keys rotate" in lines  # README.md's quick start is read


def test_every_command_line_in_the_guides_is_real() -> None:
    problems = [
        f"{name}:{n}: {why}"
        for name, n, words in command_lines()
        if (why := check_command(words)) is not None
    ]
    assert not problems, "\n".join(problems)


# ============================================================================
# Admin endpoints, paths, links, modules
# ============================================================================

_ADMIN_ROUTE = re.compile(r'r\.add_(get|put|post|delete)\("([^"]+)"')
_ENDPOINT = re.compile(
    r"\b(GET|PUT|POST|DELETE) (/(?:healthz|readyz|metrics|tickets|keyring|policy|audit)"
    r"[^\s`?)\[\],]*)"
)


def test_every_admin_endpoint_named_is_routed() -> None:
    source = (ROOT / "proxy" / "admin" / "app.py").read_text(encoding="utf-8")
    routes = {(m.upper(), p) for m, p in _ADMIN_ROUTE.findall(source)}
    assert ("PUT", "/tickets/{id}") in routes
    for path in GUIDES:
        for method, endpoint in _ENDPOINT.findall(path.read_text(encoding="utf-8")):
            shape = re.sub(r"\{[^}]*\}|(?<=/tickets/)[^/]+", "{id}", endpoint)
            assert (method, shape) in routes, f"{path.name}: {method} {endpoint}"


# Cited before they exist; remove an entry once its file is in the repository.
KNOWN_MISSING: dict[str, set[str]] = {}

_REPO_PATH = re.compile(r"`((?:proxy|tests|examples|docs|loadtest)/[\w./-]*\w/?)`")
_MODULE = re.compile(r"`(proxy(?:\.\w+)+)`")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def importable(dotted: str) -> bool:
    """``proxy.store.audit`` (a module) or ``proxy.config.load_config`` (an attribute)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:k]))
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            obj: Any = importlib.import_module(".".join(parts[:k]))
            for attr in parts[k:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_cited_paths_modules_and_links_exist() -> None:
    for path in GUIDES:
        text = path.read_text(encoding="utf-8")
        for cited in _REPO_PATH.findall(text):
            if cited in KNOWN_MISSING.get(path.name, ()):
                continue
            assert (ROOT / cited).exists(), f"{path.name}: `{cited}` does not exist"
        for module in _MODULE.findall(text):
            assert importable(module), f"{path.name}: `{module}` is no module or attribute"
        for link in _LINK.findall(text):
            if "://" in link or link.startswith("mailto:"):
                continue
            assert (path.parent / link).exists(), f"{path.name}: link to {link}"


def test_the_guides_exist() -> None:
    assert {p.name for p in DOCS} >= GUIDE_NAMES


# ============================================================================
# `python tests/test_docs.py`: the key table's rows, to paste into docs/install.md
# ============================================================================


def main() -> None:
    old = install_rows() if INSTALL.exists() else {}
    for path, value, in_array in example_keys():
        default = documented_default(path, value, in_array) or "(say)"
        what = old.get(path, ("", "(say what it does)"))[1]
        print(f"| `{path}` | {default} | {what} |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

