"""Every ``python train.py ...`` command the repository shows a user composes into a valid config.

A documented command that fails at its first line (an experiment that needs ``data.paths`` shown
without it, a renamed key, a removed option) is a defect a user meets before any training. The
commands are read from the tracked Markdown (inline code and shell blocks), the YAML configs' and
the Slurm scripts' comment lines, and the Python files' docstrings. Each is composed through Hydra
with the configs of this checkout and validated as ``train.py`` does before any work:

- a sweep (``variant=a,b,c``, ``seed=0,1,2``, ``variant=glob(*)``), the command's or, under
  ``-m``, the experiment's own (``hydra.sweeper.params``), is checked value by value, each with
  the other sweeps at their first value (the fast tier composes the first values only);
  Hydra's own override parser splits the sweeps;
- launcher and sweeper settings (``hydra/...``, ``hydra.…``), a range a sweeper searches
  (``interval(...)``) and shell values (``$VAR``) are left out, since composing does not use them;
- a command with a placeholder among those (``...``, ``<dataset>``, ``[key=value ...]``) is a
  pattern, not a command, and is not checked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob

from attnlab.training.config import register_schema
from test_training import CONFIGS, compose_config

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".md", ".yaml", ".sbatch", ".py"}
COMMAND = re.compile(r"python train\.py(?![\w.])(.*)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"\.\.\.|<|\[group=|\[key=")
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
SLURM_SCRIPT = ROOT / "scripts" / "slurm" / "multinode.sbatch"


def _tracked_files() -> list[Path]:
    """The tracked files that may show commands; none outside a git checkout (the first test skips)."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                                check=True, timeout=60).stdout.split()
    except (FileNotFoundError, subprocess.CalledProcessError):
        return []
    return [ROOT / name for name in listed if Path(name).suffix in SUFFIXES and not name.startswith("tests/")]


def _logical_lines(text: str) -> list[str]:
    """Lines with shell continuations (a trailing backslash) joined; a continuation line of a
    comment block loses its ``#``."""
    joined, pending = [], ""
    for line in text.splitlines():
        if pending:
            line = pending + " " + re.sub(r"^\s*#?\s*", "", line)
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1].rstrip()
            continue
        pending = ""
        joined.append(line)
    return joined


def _commands_in(path: Path) -> list[str]:
    """The argument strings of the ``python train.py`` commands shown in one file."""
    text = path.read_text(encoding="utf-8")
    found = []
    fence = None  # the open fenced block's language, "" when it names none
    for line in _logical_lines(text):
        opening = re.match(r"^\s*(?:```|~~~)\s*(\w*)", line) if path.suffix == ".md" else None
        if opening:
            fence = opening.group(1) if fence is None else None
            continue
        if path.suffix == ".md" and fence is None:
            candidates = CODE_SPAN.findall(line)  # prose names commands only in code spans
        elif path.suffix == ".md":
            # Shell blocks only: a comment inside a Python example names that example's own variant.
            candidates = [line] if fence in SHELL_FENCES else []
        else:  # a comment or docstring line that starts with the command (not a command in a sentence)
            candidates = [line] if re.match(r"^\s*(#\s*)?(srun\s+)?python train\.py", line) else []
        for candidate in candidates:
            match = COMMAND.search(candidate)
            if match:
                found.append(re.split(r"\s#|\s&&|\s\|", match.group(1))[0].strip())
    return found


def _documented_commands() -> list[tuple[str, str]]:
    commands = {}
    for path in _tracked_files():
        if path.suffix == ".sbatch":  # its overrides come after its own: the test at the end
            continue
        for arguments in _commands_in(path):
            commands.setdefault(arguments, path.relative_to(ROOT).as_posix())
    return [(where, arguments) for arguments, where in commands.items()]


def _composed_tokens(arguments: str) -> list[str]:
    """The overrides of one command that composing reads (no launcher, sweeper or shell values)."""
    return [token for token in shlex.split(arguments) if token not in ("-m", "--multirun")
            and not token.startswith(("hydra/", "hydra.")) and "$" not in token]


def _override_sets(arguments: str) -> list[list[str]]:
    """What ``train.py`` composes for one command: one override list per value of each sweep.
    Under ``-m``, an experiment's own sweep (``hydra.sweeper.params``) comes first and the command
    line's overrides replace it key by key, as in Hydra's basic sweeper."""
    parser = OverridesParser.create()
    overrides = [o for o in parser.parse_overrides(_composed_tokens(arguments))
                 if not o.is_interval_sweep()]  # a sweeper's search range, not values
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        if {"-m", "--multirun"} & set(shlex.split(arguments)):
            plain = [o.input_line for o in overrides if not o.is_sweep_override()]
            params = compose("train", overrides=plain, return_hydra_config=True).hydra.sweeper.get("params") or {}
            given = {o.get_key_element() for o in overrides}
            overrides = parser.parse_overrides([f"{key}={value}" for key, value in params.items()
                                                if key not in given]) + overrides
        loader = GlobalHydra.instance().config_loader()
        values = [_sweep_values(o, loader) for o in overrides]
    first = [f"{o.get_key_element()}={v[0]}" if o.is_sweep_override() else o.input_line
             for o, v in zip(overrides, values)]
    sets = [first]
    for index, (override, choices) in enumerate(zip(overrides, values)):
        for value in choices[1:]:
            sets.append([*first[:index], f"{override.get_key_element()}={value}", *first[index + 1:]])
    return sets


def _sweep_values(override, loader) -> list[str]:
    """A sweep's values in order (a ``glob`` over its config group's options); [] for a value."""
    if not override.is_sweep_override():
        return []
    if isinstance(override.value(), Glob):
        return override.value().filter(loader.get_group_options(override.get_key_element()))
    return list(override.sweep_string_iterator())


DOCUMENTED = _documented_commands()


def test_the_documentation_shows_train_commands():
    # The extraction itself: the README's quick-start commands must be among those checked.
    if not DOCUMENTED:
        pytest.skip("not a git checkout")
    shown = {arguments for _, arguments in DOCUMENTED}
    assert "variant=sep_qkv" in shown
    assert any(arguments.startswith("-m experiment=demo variant=baseline,gelu_bias,sep_qkv,qk_scale")
               for arguments in shown)
    assert len(DOCUMENTED) >= 30


CHECKABLE = [c for c in DOCUMENTED if not any(PLACEHOLDER.search(t) for t in _composed_tokens(c[1]))]
_validated: set[tuple[str, ...]] = set()  # override lists already composed by another command's test


def _check(where: str, arguments: str, override_sets: list[list[str]]) -> None:
    for overrides in override_sets:
        if tuple(overrides) in _validated:
            continue
        try:
            compose_config(overrides).validate()
        except Exception as error:  # noqa: BLE001 - the message names the command and its file
            pytest.fail(f"{where}: `python train.py {arguments}` fails with {overrides}: "
                        f"{type(error).__name__}: {error}")
        _validated.add(tuple(overrides))


@pytest.mark.parametrize("where, arguments", CHECKABLE, ids=lambda value: value if isinstance(value, str) else None)
def test_every_documented_train_command_composes_and_validates(where, arguments):
    _check(where, arguments, _override_sets(arguments)[:1])


@pytest.mark.slow  # about 120 more composes (0.1 s each): every variant of a zoo sweep, every seed
@pytest.mark.parametrize("where, arguments", CHECKABLE, ids=lambda value: value if isinstance(value, str) else None)
def test_every_value_of_every_documented_sweep_composes_and_validates(where, arguments):
    _check(where, arguments, _override_sets(arguments)[1:])


def test_the_slurm_script_composes_with_its_own_example_arguments():
    # The script passes fixed overrides before the user's ("$@"); its header shows those.
    text = SLURM_SCRIPT.read_text(encoding="utf-8")
    example = re.search(r"sbatch scripts/slurm/multinode\.sbatch (.*)", text).group(1)
    fixed = [line for line in _logical_lines(text) if line.lstrip().startswith("srun python train.py")]
    assert len(fixed) == 1
    fixed_arguments = COMMAND.search(fixed[0]).group(1)
    for overrides in _override_sets(f"{fixed_arguments} {example}"):
        compose_config(overrides).validate()
