"""Every ``python train.py ...`` and ``python evaluate.py ...`` command the repository shows a
user composes into a valid config.

A documented command that fails at its first line (an experiment that needs ``data.paths`` shown
without it, a renamed key, a removed option) is a defect a user meets before any work. The
commands are read from the tracked Markdown (inline code and shell blocks), the YAML configs' and
the Slurm scripts' comment lines, and the Python files' docstrings. Each is composed through Hydra
with the configs of this checkout and validated as the script does before any work:

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

from omegaconf import OmegaConf

from attnlab.analysis.config import register_schema as register_evaluate_schema
from attnlab.training.config import register_schema as register_train_schema
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SUFFIXES = {".md", ".yaml", ".sbatch", ".py"}
# script: (its config folder, its config's name, what registers its typed schema)
SCRIPTS = {"train.py": (CONFIGS, "train", register_train_schema),
           "evaluate.py": (CONFIGS / "evaluate", "evaluate", register_evaluate_schema)}
COMMAND = re.compile(r"python (train\.py|evaluate\.py)(?![\w.])(.*)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"\.\.\.|<|\[group=|\[key=")
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}


def _tracked_files() -> list[Path]:
    """The tracked files that may show commands; none outside a git checkout (the first test skips)."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True,
                                check=True, timeout=60).stdout.split("\0")
    except (OSError, subprocess.SubprocessError):
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


def _commands_in(path: Path) -> list[tuple[str, str]]:
    """(script, its arguments) of the commands shown in one file."""
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
            candidates = [line] if re.match(r"^\s*(#\s*)?(srun\s+)?python (train|evaluate)\.py", line) else []
        for candidate in candidates:
            match = COMMAND.search(candidate)
            if match:
                # Ends at a shell comment, the next command, or a remark in parentheses after spaces.
                found.append((match.group(1), re.split(r"\s#|\s&&|\s\||\s{2,}\(", match.group(2))[0].strip()))
    return found


def _documented_commands() -> list[tuple[str, str, str]]:
    """(where first shown, script, arguments) of every distinct command."""
    commands = {}
    for path in _tracked_files():
        if path.suffix == ".sbatch":  # its overrides come after its own: the test at the end
            continue
        for command in _commands_in(path):
            commands.setdefault(command, path.relative_to(ROOT).as_posix())
    return [(where, script, arguments) for (script, arguments), where in commands.items()]


def _composed_tokens(arguments: str) -> list[str]:
    """The overrides of one command that composing reads (no launcher, sweeper or shell values),
    up to the first word that is none (prose after a command in a sentence)."""
    tokens = []
    for token in shlex.split(arguments):
        if token in ("-m", "--multirun"):
            continue
        if "=" not in token:
            break
        if not token.startswith(("hydra/", "hydra.")) and "$" not in token:
            tokens.append(token)
    return tokens


def _override_sets(script: str, arguments: str) -> list[list[str]]:
    """What ``script`` composes for one command: one override list per value of each sweep.
    Under ``-m``, an experiment's own sweep (``hydra.sweeper.params``) comes first and the command
    line's overrides replace it key by key, as in Hydra's basic sweeper."""
    parser = OverridesParser.create()
    overrides = [o for o in parser.parse_overrides(_composed_tokens(arguments))
                 if not o.is_interval_sweep()]  # a sweeper's search range, not values
    config_dir, config_name, register_schema = SCRIPTS[script]
    register_schema()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        if {"-m", "--multirun"} & set(shlex.split(arguments)):
            plain = [o.input_line for o in overrides if not o.is_sweep_override()]
            hydra_config = compose(config_name, overrides=plain, return_hydra_config=True).hydra
            params = hydra_config.sweeper.get("params") or {}
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


def test_the_documentation_shows_commands_of_both_scripts():
    # The extraction itself: the README's quick-start commands must be among those checked.
    if not DOCUMENTED:
        pytest.skip("not a git checkout")
    shown = {(script, arguments) for _, script, arguments in DOCUMENTED}
    assert ("train.py", "variant=sep_qkv") in shown and ("evaluate.py", "") in shown
    assert any(script == "train.py" and arguments.startswith("-m experiment=demo variant=baseline,gelu_bias")
               for script, arguments in shown)
    assert sum(script == "train.py" for script, _ in shown) >= 30
    assert sum(script == "evaluate.py" for script, _ in shown) >= 10


CHECKABLE = [c for c in DOCUMENTED if not any(PLACEHOLDER.search(t) for t in _composed_tokens(c[2]))]
_validated: set[tuple[str, ...]] = set()  # (script, *overrides) already composed by another command's test


def _compose_and_validate(script: str, overrides: list[str]) -> None:
    """As the script reads its settings before any work: composed, built into the typed config
    (its value checks) and validated."""
    config_dir, config_name, register_schema = SCRIPTS[script]
    register_schema()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        OmegaConf.to_object(compose(config_name, overrides=overrides)).validate()


def _check(where: str, script: str, arguments: str, override_sets: list[list[str]]) -> None:
    for overrides in override_sets:
        if (script, *overrides) in _validated:
            continue
        try:
            _compose_and_validate(script, overrides)
        except Exception as error:  # noqa: BLE001 - the message names the command and its file
            pytest.fail(f"{where}: `python {script} {arguments}` fails with {overrides}: "
                        f"{type(error).__name__}: {error}")
        _validated.add((script, *overrides))


def _id(value) -> str | None:
    return value or "(no arguments)" if isinstance(value, str) else None


@pytest.mark.parametrize("where, script, arguments", CHECKABLE, ids=_id)
def test_every_documented_command_composes_and_validates(where, script, arguments):
    _check(where, script, arguments, _override_sets(script, arguments)[:1])


@pytest.mark.slow  # about 120 more composes (0.1 s each): every variant of a zoo sweep, every seed
@pytest.mark.parametrize("where, script, arguments", CHECKABLE, ids=_id)
def test_every_value_of_every_documented_sweep_composes_and_validates(where, script, arguments):
    _check(where, script, arguments, _override_sets(script, arguments)[1:])


SLURM_SCRIPTS = [path for path in _tracked_files() if path.suffix == ".sbatch"]


@pytest.mark.parametrize("script", SLURM_SCRIPTS, ids=lambda path: path.name)
def test_every_slurm_script_composes_with_its_own_example_arguments(script):
    # A script passes fixed overrides before the user's ("$@"); its header shows an example of those.
    text = script.read_text(encoding="utf-8")
    example = re.search(rf"sbatch {re.escape(script.relative_to(ROOT).as_posix())} (.*)", text)
    assert example, f"{script.name}: no 'sbatch {script.relative_to(ROOT).as_posix()} ...' example in its header"
    fixed = [line for line in _logical_lines(text) if line.lstrip().startswith("srun python train.py")]
    assert len(fixed) == 1
    fixed_arguments = COMMAND.search(fixed[0]).group(2)
    assert fixed_arguments.rstrip().endswith('"$@"')  # the user's arguments come last
    for overrides in _override_sets("train.py", fixed_arguments.replace('"$@"', example.group(1))):
        _compose_and_validate("train.py", overrides)
