"""README.md's commands as a user would type them, for tests/test_readme.py.

A command is a line of a ```bash block (trailing `# comment` dropped, `\\` continuations joined) or a code
span in the prose that starts with a program (`make bench`, `pip install ...`). Code spans made only of
`key=value` overrides are collected separately, so that each can be composed with Hydra.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

PROGRAMS = {"python", "python3", "make", "pip", "pip3", "pytest", "tensorboard", "wandb", "mlflow", "source"}
HYDRA_ENTRIES = {"train": "train", "evaluate": "evaluate", "predict": "predict", "explain": "explain",
                 "export": "export", "data": "data_report"}  # entry point -> its config in maskdet/conf
ARGPARSE_ENTRIES = {"compare", "data.synthetic", "label_issues"}
OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w./@-]*=\S*$")  # a Hydra override token, e.g. +data.subset.gender=f


@dataclass(frozen=True)
class Command:
    text: str    # as written, whitespace collapsed, optional-argument brackets kept
    line: int    # line in README.md
    inline: bool  # a code span in the prose rather than a line of a ```bash block

    @property
    def argv(self) -> list[str]:
        """Shell words; `[a b]` (optional arguments) become `a b`: the fuller form is the one run."""
        words = shlex.split(self.text)
        if any(w.startswith("[") for w in words):
            start = next(i for i, w in enumerate(words) if w.startswith("["))
            words[start] = words[start][1:]
            end = next(i for i in range(start, len(words)) if words[i].endswith("]"))
            words[end] = words[end][:-1]
            words = [w for w in words if w]
        return words

    @property
    def program(self) -> str:
        """`maskdet` for maskdet's own commands, else the program's name (`make`, `pytest`, ...)."""
        words = self.argv
        if self.entry is not None:
            return "maskdet"
        return Path(words[0]).name if words[0].startswith(".venv/") else words[0]

    @property
    def entry(self) -> str | None:
        """`train` for `python -m maskdet.train` or `maskdet-train`, `data.synthetic` for ..."""
        words = shlex.split(self.text)
        if words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m" and words[2].startswith("maskdet."):
            return words[2].removeprefix("maskdet.")
        if words[0].startswith("maskdet-"):
            return words[0].removeprefix("maskdet-")
        return None

    @property
    def args(self) -> list[str]:
        """The arguments after the program (and module)."""
        words = self.argv
        return words[3:] if words[0] in ("python", "python3") and words[1:2] == ["-m"] else words[1:]

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args

    @property
    def overrides(self) -> list[str]:
        """Hydra overrides of a maskdet command (flags such as -m left out)."""
        return [a for a in self.args if OVERRIDE.match(a)]


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#(\s.*)?$", "", line).strip()


def _is_command_span(span: str) -> bool:
    words = span.split()
    if not words or "=" in words[0]:
        return False
    first = words[0]
    if len(words) == 1 or first in ("python", "python3") and len(words) == 3 and words[1] == "-m":
        return False  # `wandb`, `python -m maskdet.explain` named in a sentence: mentions, not commands
    return first in PROGRAMS or first.startswith(("maskdet-", ".venv/bin/"))


def _prose_spans(text: str) -> list[tuple[int, str]]:
    """(line, text) of every code span outside fenced blocks; a span may run over a line break."""
    lines, in_fence = [], False
    for raw in text.splitlines():
        fence = raw.lstrip().startswith("```")
        lines.append("" if fence or in_fence else raw)
        in_fence ^= fence
    prose = "\n".join(lines)
    return [(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
            for m in re.finditer(r"`([^`]+)`", prose)]


def readme_commands(text: str) -> list[Command]:
    """Every command of the README: lines of ```bash blocks, then command-like code spans of the prose."""
    commands, in_fence, in_bash, pending = [], False, False, ""
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.lstrip().startswith("```"):
            in_bash = not in_fence and raw.strip() in ("```bash", "```sh", "```shell", "```console")
            in_fence = not in_fence
            continue
        if in_bash:
            line = _strip_comment(raw)
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = " ".join((pending + line).split())
            pending = ""
            if line:
                commands.append(Command(line, number, inline=False))
    return commands + [Command(span, number, inline=True) for number, span in _prose_spans(text)
                       if _is_command_span(span)]


def override_spans(text: str) -> list[tuple[int, str]]:
    """Code spans in the prose made only of Hydra overrides (and `-m`), e.g. `data.balance_by=[gender]`."""
    return [(number, span) for number, span in _prose_spans(text)
            if "(" not in span and "=" in span and all(w == "-m" or OVERRIDE.match(w) for w in span.split())]


def replace_override(args: list[str], key: str, value) -> list[str]:
    """Set `key=value` in place of any override of that key (`+key`, `++key` too), else append it."""
    pattern = re.compile(rf"^[+~]{{0,2}}{re.escape(key)}=")
    if any(pattern.match(a) for a in args):
        return [f"{key}={value}" if pattern.match(a) else a for a in args]
    return [*args, f"{key}={value}"]


def readme_files(text: str) -> dict[str, str]:
    """Config files the README shows: a ```yaml block after a paragraph naming `some/path.yaml` (the last
    such span before the block), e.g. the user experiment that `--config-dir my_conf` commands use."""
    files, lines, block, name = {}, text.splitlines(), None, None
    for number, raw in enumerate(lines):
        if block is not None:
            if raw.strip() == "```":
                if name:
                    files[name] = "\n".join(block) + "\n"
                block = None
            else:
                block.append(raw)
        elif raw.strip() == "```yaml":
            block, name = [], None
            for before in reversed(lines[max(0, number - 4):number]):
                spans = [s for s in re.findall(r"`([^`\s]+\.ya?ml)`", before)]
                if spans:
                    name = spans[-1]
                    break
    return files


def config_dir(args: list[str]) -> str | None:
    """The folder given with --config-dir / -cd (Hydra's flag), if any."""
    for flag in ("--config-dir", "-cd"):
        if flag in args:
            return args[args.index(flag) + 1]
        for arg in args:
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None
