"""The registry of the paper's experiments, the command line built from it, and the shared table writers."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import softintrovae
from softintrovae.cli import build_parser, main
from softintrovae.errors import UserError
from softintrovae.experiments import EXPERIMENTS, Experiment, reproduce
from softintrovae.experiments.common import markdown_table


def _reproduce_choices() -> list[str]:
    parser = build_parser()
    commands = next(a for a in parser._subparsers._group_actions if a.dest == "command")
    positional = next(a for a in commands.choices["reproduce"]._actions if a.dest == "experiment")
    return list(positional.choices)


def test_the_registry_lists_the_paper_studies():
    assert list(EXPERIMENTS) == ["table2", "stability", "collapse", "ood", "translation"]


def test_the_cli_choices_come_from_the_registry(monkeypatch):
    assert _reproduce_choices() == list(EXPERIMENTS)
    monkeypatch.setitem(EXPERIMENTS, "figure9", EXPERIMENTS["collapse"])
    assert _reproduce_choices()[-1] == "figure9"


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_flag_is_a_keyword_of_its_experiment_and_the_table_comes_first(name):
    experiment = EXPERIMENTS[name]
    parameters = inspect.signature(experiment.function).parameters
    assert all(flag[2:].replace("-", "_") in parameters for flag in experiment.flags)
    assert experiment.report[0] == f"{name}.md"
    assert Path(experiment.defaults["out"]) == Path("runs") / "reproduce" / name


@pytest.mark.parametrize(
    "args, message",
    [
        (["ood", "--iterations", "5"], "--iterations applies to 'reproduce table2', 'reproduce stability' and 'reproduce collapse', not to 'reproduce ood'"),
        (["translation", "--samples", "2"], "--samples applies to 'reproduce ood', not to 'reproduce translation'"),
        (["collapse", "--report-only", "--runs", "a", "b"], "--runs applies to 'reproduce ood' and 'reproduce translation', not to 'reproduce collapse'"),
    ],
)
def test_a_flag_another_experiment_takes_is_refused_in_one_line(tmp_path, capsys, args, message):
    assert main(["reproduce", *args, "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"softintrovae: error: {message}"
    assert not (tmp_path / "x").exists()


def test_reproduce_by_name_calls_the_registered_function(monkeypatch):
    calls = []
    plan = EXPERIMENTS["collapse"].plan
    monkeypatch.setitem(EXPERIMENTS, "fake", Experiment(lambda **kw: calls.append(kw) or "done", "-", (), ("fake.md",), plan, True))
    assert reproduce("fake", seeds=2) == "done" and calls == [{"seeds": 2}]
    with pytest.raises(UserError, match="unknown experiment 'figure9'; choose from table2, stability, collapse, ood, translation, fake"):
        reproduce("figure9")


def test_markdown_table_keeps_empty_cells_narrow():
    assert markdown_table(["", "MSE"], [["copy", 0.5], ["x", ""]]) == ["| | MSE |", "|---|---|", "| copy | 0.5 |", "| x | |"]


def test_no_library_module_imports_the_experiments():
    package = Path(softintrovae.__file__).parent
    library = [p for p in package.rglob("*.py") if "experiments" not in p.relative_to(package).parts and p.name != "cli.py"]
    importers = []
    for path in library:
        imports = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = [getattr(node, "module", None) or "" for node in imports] + [alias.name for node in imports for alias in node.names]
        if any("experiments" in name.split(".") for name in names):
            importers.append(path.name)
    assert "sweep.py" in {p.name for p in library} and importers == []
