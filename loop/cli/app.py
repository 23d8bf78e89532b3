"""The `cai` command line: the typer app, its command groups and the global options.

The commands live in one module per group (`run`, `status`, `operate`, `principles`, `judge`, `review`, `export`,
`cache`, `generate`, `serve`); this module names them, so the whole command tree reads in one place. Nothing here or
there imports torch at import time: `cai --help`, `cai status` and `cai principles check` start without it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from loop.cli import cache, export, generate, judge, operate, principles, review, run, serve, status
from loop.cli.errors import Options

app = typer.Typer(help="cai: Constitutional AI and RLAIF self-improvement.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
principles_app = typer.Typer(help="Work with principle (constitution) files.", no_args_is_help=True)
app.add_typer(principles_app, name="principles")
judge_app = typer.Typer(help="Measure the AI judge.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")
review_app = typer.Typer(help="Review preference pairs: a reviewer's verdict overrides the AI label.",
                         no_args_is_help=True)
app.add_typer(review_app, name="review")
export_app = typer.Typer(help="Export a run's pairs, or a policy as a model folder.", no_args_is_help=True)
app.add_typer(export_app, name="export")
cache_app = typer.Typer(help="Results kept under CAI_HOME across runs (judge scores, the base's eval answers).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", envvar="CAI_DEBUG",
                                        help="Show the traceback of a failure (also CAI_DEBUG=1).")] = False,
) -> None:
    Options.debug = debug


# The order here is the order of `cai --help`.
app.command()(run.iterate)
app.command("run")(run.run_service)
app.command()(run.worker)
app.command()(serve.serve)
app.command()(status.status)
principles_app.command("check")(principles.check)
principles_app.command("show")(principles.show)
principles_app.command("diff")(principles.diff)
principles_app.command("try")(principles.try_principle)
judge_app.command("eval")(judge.judge_eval)
review_app.command("list")(review.review_list)
review_app.command("keep")(review.review_keep)
review_app.command("flip")(review.review_flip)
review_app.command("drop")(review.review_drop)
export_app.command("pairs")(export.export_pairs)
export_app.command("policy")(export.export_policy_command)
cache_app.command("list")(cache.cache_list)
cache_app.command("clear")(cache.cache_clear)
app.command("eval")(operate.eval_policy)
app.command()(generate.generate)
app.command()(operate.rollback)
app.command()(operate.promote)
app.command()(operate.pause)
app.command()(operate.resume)
app.command()(operate.stop)
app.command()(status.metrics)
app.command()(serve.dashboard)


def main() -> None:  # pragma: no cover - `python -m loop.cli`
    sys.exit(app())
