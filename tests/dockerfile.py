"""A small reader for the repository's Dockerfile and .dockerignore.

tests/test_container_steps.py runs the Dockerfile's commands on the host and
tests/test_deploy_manifests.py checks the Kubernetes manifests against it, both
from what this module reads, so neither repeats a command, a port or a user.
It understands what the Dockerfile uses (line continuations, comments, parser
directives, ARG before FROM, `FROM ... AS name`, ENV key=value lists, RUN
flags, exec-form JSON) and refuses the rest loudly rather than guess.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, ENV, ...
    text: str  # the rest of the instruction, continuations joined
    line: int  # where it starts in the file (1-based)
    flags: dict[str, str] = field(default_factory=dict)  # RUN --mount=..., HEALTHCHECK --interval=...

    def exec_form(self) -> list[str]:
        """The JSON (exec) form's list; shell form is refused, since it would run under /bin/sh -c."""
        try:
            value = json.loads(self.text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Dockerfile line {self.line}: {self.keyword} is not in exec (JSON) form: {e}")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"Dockerfile line {self.line}: {self.keyword} must be a JSON list of strings")
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with their continuations joined; comment lines (also inside a
    continuation) and blank lines dropped."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        out.append((start, " ".join(current)))
        current = []
    if current:
        raise ValueError("Dockerfile ends inside a line continuation")
    return out


def _take_flags(text: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while text.startswith("--"):
        word, _, text = text.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        text = text.lstrip()
    return flags, text


def substitute(value: str, env: dict[str, str]) -> str:
    """$NAME and ${NAME} as Docker expands them in ENV, FROM and the like (no modifiers)."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise ValueError(f"Dockerfile: ${name} is not defined")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, value)


def parse(path: Path = DOCKERFILE) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(path.read_text()):
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise ValueError(f"Dockerfile line {line}: FROM {rest!r} not understood")
            stages.append(Stage(substitute(words[0], args), name))
            continue
        if not stages:
            raise ValueError(f"Dockerfile line {line}: {keyword} before the first FROM")
        flags: dict[str, str] = {}
        if keyword in ("RUN", "HEALTHCHECK", "COPY"):
            flags, rest = _take_flags(rest)
        stages[-1].instructions.append(Instruction(keyword, rest, line, flags))
    return stages


def env_of(stage: Stage, base_env: dict[str, str]) -> dict[str, str]:
    """The stage's ENV instructions applied in order over base_env (each may use the ones before)."""
    env = dict(base_env)
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.text):
            name, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"Dockerfile line {instruction.line}: use ENV NAME=VALUE")
            env[name] = substitute(value, env)
    return env


def run_steps(instruction: Instruction) -> list[list[str]]:
    """A RUN's shell command as its steps, each an argument list: the command is
    split into words as /bin/sh would (quotes kept together), then at `&&`.
    Other shell operators (;, |, ||, &, redirections) are refused."""
    lexer = shlex.shlex(instruction.text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    steps: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            steps.append([])
        elif token and set(token) <= set("();<>|&"):
            raise ValueError(f"Dockerfile line {instruction.line}: {token!r} in RUN; "
                             "tests/test_container_steps.py runs commands joined by && only")
        else:
            steps[-1].append(token)
    if any(not step for step in steps):
        raise ValueError(f"Dockerfile line {instruction.line}: an empty step in RUN")
    return steps


def mount_flags(instruction: Instruction) -> dict[str, str]:
    """RUN --mount=type=bind,from=build,source=/x,target=/y as a dict."""
    mount = instruction.flags.get("mount")
    if not mount:
        return {}
    return dict(part.split("=", 1) for part in mount.split(","))


@dataclass(frozen=True)
class Listen:
    scheme: str
    host: str
    port: int


def serve_settings(argv: list[str]) -> tuple[list[Listen], int | None, float | None]:
    """The --listen URLs, --metrics-port and --grace of a `fastecho serve` argument list."""
    listens: list[Listen] = []
    metrics_port = grace = None
    for option, value in zip(argv, argv[1:]):
        if option == "--listen":
            m = re.fullmatch(r"([a-z+]+)://(\[[^\]]+\]|[^:/]+):(\d+)/?", value)
            assert m, f"--listen {value} not understood"
            listens.append(Listen(m.group(1), m.group(2), int(m.group(3))))
        elif option == "--metrics-port":
            metrics_port = int(value)
        elif option == "--grace":
            grace = float(value)
    return listens, metrics_port, grace


def exposed(stage: Stage) -> set[tuple[int, str]]:
    """EXPOSE's ports as (port, "TCP"|"UDP"), Kubernetes' spelling."""
    ports = set()
    for instruction in stage.all("EXPOSE"):
        for word in instruction.text.split():
            number, _, proto = word.partition("/")
            ports.add((int(number), (proto or "tcp").upper()))
    return ports


def user_ids(stage: Stage) -> tuple[int, int | None]:
    """USER uid[:gid], numeric (Kubernetes' runAsNonRoot needs a number)."""
    user = stage.last("USER")
    assert user is not None, "the runtime stage sets no USER: it would run as root"
    uid, _, gid = user.text.partition(":")
    assert uid.isdigit(), f"USER {user.text}: use a numeric uid"
    return int(uid), int(gid) if gid else None


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's options and its CMD's exec form."""
    hc = stage.last("HEALTHCHECK")
    assert hc is not None, "no HEALTHCHECK"
    word, _, rest = hc.text.partition(" ")
    assert word.upper() == "CMD", f"HEALTHCHECK {hc.text!r}: expected CMD [...]"
    return hc.flags, Instruction("HEALTHCHECK CMD", rest.strip(), hc.line).exec_form()


def seconds(duration: str) -> float:
    """A Dockerfile duration (30s, 1m30s, 500ms) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# .dockerignore: the patterns Docker's builder applies to the context, in order,
# the last match deciding; a pattern that matches a directory matches what is
# under it. `*` and `?` stay within one path segment, `**` crosses them.


def _pattern_regex(pattern: str) -> re.Pattern:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def ignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        if "[" in pattern or "\\" in pattern:
            raise ValueError(f".dockerignore: {line!r}: character classes and escapes are not "
                             "understood by tests/dockerfile.py")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def _may_bring_back(directory: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    for negate, regex in rules:
        if negate:
            literal = re.split(r"\[\^/\]|\.\*|\(\?:", regex.pattern)[0].replace("\\", "")
            if literal == "" or literal.startswith(directory + "/") or directory.startswith(literal):
                return True
    return False


def context_files(root: Path = ROOT, rules: list[tuple[bool, re.Pattern]] | None = None) -> list[str]:
    """The files `docker build` would send from root, as relative paths."""
    rules = ignore_rules() if rules is None else rules
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # An ignored directory is skipped unless an exception (!pattern) may match under it.
        dirnames[:] = [d for d in dirnames
                       if not ignored(rel_dir + d, rules) or _may_bring_back(rel_dir + d, rules)]
        for name in filenames:
            relative = rel_dir + name
            if not ignored(relative, rules):
                files.append(relative)
    return sorted(files)
