"""Every command README.md and docs/*.md show is exercised, cheaply; every link in them resolves.

Which text counts as a command: the lines of fenced code blocks whose language is `bash`, `sh`, `shell` or
`console`. In bash/sh/shell blocks every line is a command (a trailing backslash continues it, `# ...` comments
are dropped, a leading `VAR=value` and a trailing `&` are shell, not Claire). In console blocks only lines starting
with `$ ` are commands; the lines after one are what it prints. Blocks in any other language (`text`, `yaml`, none)
are output or file contents and never run: a test checks that none of them holds a command, so none hides there.
Commands written inline in prose are not run; the docs put every full command line in a block.

How each command is checked (nothing here trains, downloads or calls an API):
- `python -m claire.<train|evaluate|generate|report> overrides...`: the command's config is composed in-process
  with Hydra's compose API from conf/ with those overrides (Hydra's own config included), which proves that each
  group, option and key exists. `-m` is dropped and a sweep takes one value (`a,b` and `choice(...)`/`range(...)`:
  the first; `interval(a, b)`: a). `--cfg`, `--resolve` are dropped (they print the composed config). `--help`
  runs the command's own help in a subprocess.
- a console block's command is also run for real (in a temporary folder) and must print the lines the block
  shows (`...` ends a line early); console blocks are kept to commands that finish in seconds.
- `python -m claire.<stats|decontamination|sweep|reproduce> ...` (tools that take files or folders):
  `--help` exits 0 and names every `--option` the line uses.
- `make TARGET [VAR=value]`: TARGET is a target of the Makefile and `make -n` succeeds; for `make train` and
  `make evaluate` the ARGS are composed as above.
- `lm_eval ...`: lm-eval is installed, the `--include_path` folder exists and defines every `--tasks` name.
- `<placeholders>` are replaced by the values in PLACEHOLDERS; an unknown one fails.
- Anything else fails unless NOT_RUN lists it with the reason.
"""

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"bash", "sh", "shell", "console"}
HYDRA_COMMANDS = ("train", "evaluate", "generate", "report", "chat", "serve")
FOLDER_TOOLS = ("stats", "decontamination", "sweep", "reproduce")
HYDRA_FLAGS_DROPPED = {"-m", "--multirun", "--resolve"}
HYDRA_FLAGS_WITH_VALUE_DROPPED = {"--cfg", "-c", "--package", "-p"}

# What the docs' placeholders stand for when a command is checked: folders are only named, never read.
PLACEHOLDERS = {
    "<run>": "experiments/report/claire-1.5b-v2",  # a run folder: the committed frozen run of the report's 1.5B
    "<time>": "2025-01-01_00-00-00",  # a timestamp folder name, as Hydra names them
    "<run_name>": "claire-1.5b-v2",  # a run's name, the folder above its timestamps
    "<study>": "quick-cpu",  # a study under sweeps/
    "<base_samples>": "base/samples_claire_causal.jsonl",  # an lm-eval sample log
    "<tuned_samples>": "tuned/samples_claire_causal.jsonl",
}

# Lines shown as commands that these tests do not run, each with its reason.
NOT_RUN = {
    "export OPENAI_API_KEY=...": "puts the user's own secret in the shell's environment; nothing of Claire runs",
}


# ---------------------------------------------------------------------------------------------------- reading


def code_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first content line, lines) of every fenced block in a Markdown file."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and language is None:
            language, start, lines = fence.group(1).lower(), number + 1, []
        elif fence:
            blocks.append((language, start, lines))
            language = None
        elif language is not None:
            lines.append(line)
    assert language is None, f"{path.name}: a code block opened at line {start - 1} is never closed"
    return blocks


def commands_in(path: Path) -> list[tuple[int, str, list[str] | None]]:
    """(line, command, the output a console block shows for it or None) for each command the file shows."""
    found = []
    for language, start, lines in code_blocks(path):
        if language not in RUN_LANGUAGES:
            continue
        i = 0
        while i < len(lines):
            line, number = lines[i], start + i
            i += 1
            if language == "console":
                if not line.startswith("$ "):
                    continue
                command, shown = line[2:], []
                while i < len(lines) and not lines[i].startswith("$ "):
                    shown.append(lines[i])
                    i += 1
                found.append((number, command.strip(), [s for s in shown if s.strip()]))
                continue
            while line.rstrip().endswith("\\") and i < len(lines):
                line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
            if line.strip() and not line.strip().startswith("#"):
                found.append((number, line.strip(), None))
    return found


ALL_COMMANDS = [(path, line, command, shown) for path in DOCS for line, command, shown in commands_in(path)]


def doc_id(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def without_comment(command: str) -> str:
    """The command without its trailing `# comment`."""
    return re.sub(r"\s+#\s.*$", "", command).strip()


def words(command: str) -> list[str]:
    """The command as the shell splits it, placeholders filled in, comments, env assignments and `&` dropped."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    unknown = re.findall(r"<[\w ]+>", command.split(" #")[0])
    assert not unknown, f"unknown placeholder {unknown}: add it to PLACEHOLDERS"
    argv = shlex.split(command, comments=True)
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
        argv.pop(0)
    if argv and argv[-1] == "&":
        argv.pop()
    return argv


# ---------------------------------------------------------------------------------------------------- checking


@functools.cache
def config_name(command: str) -> str:
    """The primary config a Hydra command composes, as its @hydra.main names it."""
    source = (ROOT / "claire" / f"{command}.py").read_text()
    found = re.search(r"@hydra\.main\([^)]*config_name=\"([\w-]+)\"", source)
    assert found, f"claire/{command}.py has no @hydra.main(config_name=...)"
    return found.group(1)


def one_value(overrides: list[str]) -> list[str]:
    """A multirun's overrides as one job's: each sweep takes one value (see the module docstring)."""
    single = []
    for override, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        if not parsed.is_sweep_override():
            single.append(override)
            continue
        value = parsed.value()
        if isinstance(value, ChoiceSweep | RangeSweep):
            first = next(iter(parsed.sweep_string_iterator()))
        elif isinstance(value, IntervalSweep):
            first = str(int(value.start) if "int" in value.tags else value.start)
        else:
            raise AssertionError(f"{override}: a sweep this test cannot take one value of")
        single.append(f"{parsed.get_key_element()}={first}")
    return single


@functools.cache
def composed(command: str, overrides: tuple[str, ...]) -> object:
    GlobalHydra.instance().clear()  # another test may have left Hydra initialized
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=config_name(command), overrides=list(overrides), return_hydra_config=True)


def hydra_overrides(argv: list[str]) -> tuple[list[str], bool]:
    """The overrides of a Hydra command line and whether it asks for --help."""
    overrides, wants_help, i = [], False, 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word in HYDRA_FLAGS_DROPPED:
            continue
        if word in HYDRA_FLAGS_WITH_VALUE_DROPPED:
            i += 1
            continue
        if word in ("--help", "-h"):
            wants_help = True
            continue
        assert not word.startswith("-"), f"{word}: a Hydra flag this test does not know"
        overrides.append(word)
    return one_value(overrides), wants_help


def python(*args: str, cwd: Path = ROOT, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@functools.cache
def help_text(module: str) -> str:
    done = python("-m", module, "--help")
    assert done.returncode == 0, f"python -m {module} --help exits {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout + done.stderr


@functools.cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def check_python(argv: list[str], shown: list[str] | None, tmp_path: Path) -> None:
    assert argv[:2] == ["python", "-m"] and len(argv) >= 3, f"{argv}: not `python -m MODULE ...`"
    module, args = argv[2], argv[3:]
    name = module.removeprefix("claire.")
    if module.startswith("claire.") and name in HYDRA_COMMANDS:
        overrides, wants_help = hydra_overrides(args)
        if wants_help:
            assert "group" in help_text(module).lower(), f"python -m {module} --help lists no config groups"
        composed(name, tuple(overrides))
    elif module.startswith("claire.") and name in FOLDER_TOOLS:
        text = help_text(module)
        for option in [a.split("=")[0] for a in args if a.startswith("--")]:
            assert option in text, f"python -m {module} --help does not mention {option}"
    else:
        raise AssertionError(f"python -m {module}: this test does not know how to check it; teach it or use NOT_RUN")
    if shown:
        done = python("-m", module, *args, cwd=tmp_path)
        printed = (done.stdout + done.stderr).splitlines()
        for line in shown:
            expected = line.split("...")[0].rstrip() if "..." in line else line.rstrip()
            assert any(p.rstrip().startswith(expected) for p in printed), (
                f"the doc shows {line!r}, the command printed:\n" + "\n".join(printed[-30:])
            )


def check_make(argv: list[str]) -> None:
    targets = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    variables = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    assert targets, f"{argv}: no make target"
    for target in targets:
        assert target in make_targets(), f"make {target}: no such target in the Makefile"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"make -n {' '.join(argv[1:])}: {done.stderr[-2000:]}"
    for target in targets:
        if target in ("train", "evaluate") and variables.get("ARGS"):
            overrides, _ = hydra_overrides(shlex.split(variables["ARGS"]))
            composed(target, tuple(overrides))


def check_lm_eval(argv: list[str]) -> None:
    assert (Path(sys.executable).parent / "lm_eval").exists(), "lm_eval is not installed (pip install -e '.[eval]')"
    options = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    folder = ROOT / options["--include_path"]
    assert folder.is_dir(), f"--include_path {options['--include_path']} is not a folder"
    defined = set()
    for yaml in folder.rglob("*.yaml"):
        defined |= set(re.findall(r"^task:\s*([\w-]+)", yaml.read_text(), re.M))
    for task in options["--tasks"].split(","):
        assert task in defined, f"--tasks {task}: no task of that name under {options['--include_path']}"


def launched(argv: list[str]) -> list[str]:
    """`torchrun [opts] -m M ARGS` or `accelerate launch [opts] -m M ARGS` as `python -m M ARGS`; a config file the
    launcher is given must exist."""
    assert argv[0] == "torchrun" or argv[1] == "launch", f"{argv[:2]}: only torchrun and accelerate launch are known"
    if "--config_file" in argv:
        assert (ROOT / argv[argv.index("--config_file") + 1]).is_file(), f"{argv}: no such --config_file"
    assert "-m" in argv, f"{argv}: the launchers are shown with -m claire.<command>"
    return ["python", *argv[argv.index("-m") :]]


def check_extras(target: str) -> None:
    """`pip install -e '.[a,b]'`: each extra is one pyproject.toml defines."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = re.fullmatch(r"\.\[([\w,-]+)\]", target)
    assert named, f"pip install -e {target}: the docs install Claire itself, with extras"
    for extra in named.group(1).split(","):
        assert extra in extras, f"pip install -e {target}: pyproject.toml has no extra {extra}"


def check_docker(argv: list[str]) -> None:
    """`docker build --target T -t TAG .`, `docker run ... TAG [overrides]`, `docker compose up SERVICE`: the target,
    the service and the mounts exist in Dockerfile and compose.yaml; the run's overrides compose for claire.serve."""
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", (ROOT / "Dockerfile").read_text(), re.M))
    if argv[1] == "build":
        assert argv[argv.index("--target") + 1] in stages and argv[-1] == ".", f"{argv}: no such Dockerfile target"
    elif argv[1] == "run":
        options = {argv[i]: argv[i + 1] for i in range(2, len(argv) - 1) if argv[i].startswith("-")}
        image = next(w for i, w in enumerate(argv[2:], 2) if not w.startswith("-") and not argv[i - 1].startswith("-"))
        assert image.startswith("claire-serve:") and image.split(":")[1] in stages, f"{image}: not an image built here"
        mounts = [argv[i + 1].split(":")[1] for i in range(len(argv) - 1) if argv[i] == "-v"]
        assert set(mounts) <= {"/srv/claire-run", "/cache"} and options, f"{argv}: mounts the images do not read"
        composed("serve", tuple(argv[argv.index(image) + 1 :]))
    else:
        assert argv[1:3] == ["compose", "up"], f"{argv}: a docker command this test does not know"
        import yaml

        assert argv[3] in yaml.safe_load((ROOT / "compose.yaml").read_text())["services"], f"{argv[3]}: no service"


@pytest.mark.parametrize(
    ("path", "line", "command", "shown"),
    ALL_COMMANDS,
    ids=[f"{doc_id(p, n)} {c[:60]}" for p, n, c, _ in ALL_COMMANDS],
)
def test_command(path, line, command, shown, tmp_path):
    if without_comment(command) in NOT_RUN:
        pytest.skip(NOT_RUN[without_comment(command)])
    argv = words(command)
    if argv[0] == "python":
        check_python(argv, shown, tmp_path)
    elif argv[0] == "make":
        assert shown is None, "a console block runs `make`: show make commands in a bash block"
        check_make(argv)
    elif argv[0] == "lm_eval":
        check_lm_eval(argv)
    elif argv[0] in ("torchrun", "accelerate"):
        check_python(launched(argv), shown, tmp_path)
    elif argv[:3] == ["pip", "install", "-e"]:
        check_extras(argv[3])
    elif argv[0] == "docker":
        check_docker(argv)
    else:
        raise AssertionError(f"{argv[0]}: this test does not know how to check it; teach it or use NOT_RUN")


def test_the_readme_shows_the_two_commands_of_a_fresh_machine():
    shown = {without_comment(command) for path, _, command, _ in ALL_COMMANDS if path.name == "README.md"}
    assert {"make train", "make test"} <= shown
    assert "make test" in (ROOT / ".ci" / "run").read_text(), "the README says CI runs make test"


def test_not_run_lists_only_commands_the_docs_show():
    shown = {without_comment(command) for _, _, command, _ in ALL_COMMANDS}
    assert not set(NOT_RUN) - shown


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_no_command_hides_in_a_block_that_is_not_run(path):
    for language, start, lines in code_blocks(path):
        if language in RUN_LANGUAGES:
            continue
        for i, line in enumerate(lines):
            assert not re.match(r"\s*(\$ )?(python -m |make |lm_eval )", line), (
                f"{doc_id(path, start + i)}: a command in a ```{language} block is never checked; use ```bash"
            )


# ---------------------------------------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    inside = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            found += [(number, target) for target in re.findall(r"\]\(([^)\s]+)\)", line)]
    return found


ALL_LINKS = [(path, line, target) for path in DOCS for line, target in links(path)]


@pytest.mark.parametrize(("path", "line", "target"), ALL_LINKS, ids=[f"{doc_id(p, n)} {t}" for p, n, t in ALL_LINKS])
def test_link_resolves(path, line, target):
    if re.match(r"[a-z]+:", target):
        pytest.skip("an address outside the repository")
    file, _, anchor = target.partition("#")
    resolved = (path.parent / file).resolve() if file else path
    assert resolved.is_relative_to(ROOT), f"{target} points outside the repository"
    assert resolved.exists(), f"{target}: no such file"
    if anchor:
        assert resolved.suffix == ".md", f"{target}: an anchor into a file that is not Markdown"
        assert anchor in anchors(resolved), f"{target}: {resolved.name} has no heading with that anchor"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md") if not t.startswith("#")}
    pages = set((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds no pages"
    assert not {p.resolve() for p in pages} - linked, "docs pages the README does not link to"


def test_the_readme_is_a_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; put the manual in docs/"


# ---------------------------------------------------------------------------------------------------- the tree


def tree_entries() -> list[tuple[int, Path, bool, str]]:
    """(line, path, whether it is a folder, comment) of each entry in the README's file tree: the ```text block
    whose first line is `.`."""
    trees = [(start, lines) for language, start, lines in code_blocks(ROOT / "README.md") if language == "text"]
    trees = [(start, lines) for start, lines in trees if lines and lines[0].strip() == "."]
    assert trees, "README.md has no file tree (a ```text block starting with `.`)"
    start, lines = trees[0]
    entries, stack = [], []
    for i, line in enumerate(lines[1:], start + 1):
        found = re.match(r"^([│├└─\s]*)(\S+)\s*(?:#\s*(.*))?$", line)
        assert found, f"README.md:{i}: not a tree entry"
        depth = len(found.group(1)) // 4
        stack[depth - 1 :] = [found.group(2).rstrip("/")]
        entries.append((i, ROOT.joinpath(*stack), found.group(2).endswith("/"), found.group(3) or ""))
    return entries


def test_the_readme_tree_names_files_that_exist():
    missing = []
    for line, path, folder, comment in tree_entries():
        assert comment, f"README.md:{line}: {path.relative_to(ROOT)} has no comment"
        if not path.exists():
            missing.append(f"README.md:{line}: {path.relative_to(ROOT)}")
        if folder:  # a folder's comment names files in it: they exist too
            for name in re.findall(r"(?<![\w./-])([\w-]+\.(?:py|jsonl|json|yaml)|[\w-]+/)(?![\w.])", comment):
                if not (path / name).exists():
                    missing.append(f"README.md:{line}: {(path / name).relative_to(ROOT)}")
    assert not missing, "the README's tree names what is not there:\n" + "\n".join(missing)


# ---------------------------------------------------------------------------------------------------- results


def test_the_withdrawn_figure_stays_withdrawn_where_it_is_reported():
    for path in DOCS:
        for paragraph in path.read_text().split("\n\n"):
            if "0.110 → 0.250" in paragraph:
                assert path.name == "results.md", f"{path.name} reports the withdrawn causal figure"
                assert "withdrawn" in paragraph, "the +0.140 causal figure appears without saying it is withdrawn"
