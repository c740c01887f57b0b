"""The paper's studies, one ``softintrovae reproduce NAME`` each: clients of the library that train
(or reuse) normal run directories under one output directory and write their tables, next to the
paper's numbers, beside them.

:data:`EXPERIMENTS` is the one registry: the command line's choices, flags and defaults come from it,
and ``reproduce(NAME, **kwargs)`` runs an experiment from Python (an experiment's module is imported
when its function is first used, so listing the experiments needs no torch)::

    from softintrovae.experiments import reproduce
    reproduce("collapse", out="runs/collapse", seeds=1, iterations=10000)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from ..errors import UserError


class _OnUse:
    """``MODULE.NAME`` of this package, imported on its first use: the command line lists the
    experiments and their flags without loading the experiment modules (and torch)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def resolve(self) -> Callable[..., Any]:
        return getattr(import_module(f"{__name__}.{self.module}"), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.resolve())


@dataclass(frozen=True)
class Experiment:
    """One ``reproduce NAME``: the function that runs it, and what the command line needs of it."""

    function: Callable[..., Any]
    paper: str  # what of the paper it regenerates
    flags: tuple[str, ...]  # command-line flags, beyond --out and --set, that it takes (as keyword arguments)
    report: tuple[str, ...]  # the files it writes into its output directory, its Markdown table first
    plan: Callable[..., str]  # what a call with given keyword arguments will do, in one line
    files_first: bool  # the command lists the report files before the table (2D studies) or after it

    @property
    def defaults(self) -> dict[str, Any]:
        """The function's keyword defaults (``out``, ``seeds``, ...): the command line's defaults too."""
        parameters = inspect.signature(self.function).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


_TOY2D = ("--seeds", "--iterations", "--workers", "--report-only")
_COMPARED = ("--runs",)

EXPERIMENTS = {
    "table2": Experiment(
        _OnUse("toy2d", "table2"), "Table 2 and Figure 2", (*_TOY2D, "--datasets", "--methods"),
        ("table2.md", "table2.csv", "figure2.png"), _OnUse("toy2d", "plan"), files_first=True,
    ),
    "stability": Experiment(
        _OnUse("toy2d", "stability"), "Figure 3", (*_TOY2D, "--margins"), ("stability.md", "stability.csv", "stability.png"),
        _OnUse("toy2d", "plan"), files_first=True,
    ),
    "collapse": Experiment(
        _OnUse("toy2d", "collapse"), "Figure 21", _TOY2D, ("collapse.md", "collapse.csv", "collapse.png"), _OnUse("toy2d", "plan"),
        files_first=True,
    ),
    "ood": Experiment(
        _OnUse("ood", "reproduce_ood"), "Table 7", (*_COMPARED, "--samples", "--limit", "--datasets", "--roots"),
        ("ood.md", "ood.json", "vae/scores.png", "soft-introvae/scores.png"), _OnUse("ood", "plan"), files_first=False,
    ),
    "translation": Experiment(
        _OnUse("translation", "reproduce_translation"), "Table 4", _COMPARED,
        ("translation.md", "translation.json", "vae_transfer.png", "soft-introvae_transfer.png"), _OnUse("translation", "plan"),
        files_first=False,
    ),
}  # fmt: skip


def check_flag(name: str, flag: str) -> None:
    """One line for a command-line flag that ``reproduce NAME`` does not take, naming those that do."""
    if flag not in EXPERIMENTS[name].flags:
        takers = [f"'reproduce {other}'" for other, experiment in EXPERIMENTS.items() if flag in experiment.flags]
        listed = takers[0] if len(takers) == 1 else ", ".join(takers[:-1]) + " and " + takers[-1]
        raise UserError(f"{flag} applies to {listed}, not to 'reproduce {name}'")


def reproduce(name: str, **kwargs: Any) -> Any:
    """Run (or finish, or only report) the experiment ``name`` with its function's keyword arguments."""
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name].function(**kwargs)


__all__ = ["EXPERIMENTS", "Experiment", "check_flag", "reproduce"]
