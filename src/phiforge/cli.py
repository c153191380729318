"""The ``phiforge`` command line: ``phiforge run`` plus one subcommand per stage.

    phiforge run [RECIPE] [--dry-run] [--only STAGE] [--from STAGE] [key=value ...]
    phiforge pretrain [RECIPE] [--dry-run] [key=value ...]     # = run --only pretrain
    phiforge presets                                           # model presets and sizes
    phiforge models [RECIPE] [--check]                         # the recipe's models by role
    phiforge serve-teacher [--port N]                          # the bundled teacher behind llama.cpp
    phiforge eval MODEL [MODEL ...] --tasks mmlu=FILE,humaneval  # any model folder / endpoint, no recipe

With no RECIPE, ``recipes/tiny.toml`` (the CPU default) is used. Overrides take
the form ``section.key=value`` (e.g. ``pretrain.max_steps=50``). User errors print
one clear message and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phiforge.errors import PhiforgeError

DEFAULT_RECIPE = Path("recipes/tiny.toml")
STAGE_COMMANDS = ("data", "curate", "synth", "tokenizer", "pretrain", "midtrain", "refusal", "sft", "pts", "dpo", "judge", "dpo_judge",
                  "eval", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phiforge", description="The Phi-4 training recipe, end to end.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe's stages in order, skipping finished ones")
    _add_recipe_args(run)
    run.add_argument("--only", metavar="STAGE", help="run just this stage (its inputs must exist)")
    run.add_argument("--from", dest="start", metavar="STAGE", help="rerun this stage and every later one")
    for name in STAGE_COMMANDS:
        stage = sub.add_parser(name, help=f"run only the '{name}' stage of a recipe"
                               + ("; with --tasks: evaluate any model folder or endpoint" if name == "eval" else ""))
        _add_recipe_args(stage)
        if name == "eval":
            _add_eval_args(stage)
    sub.add_parser("presets", help="list the model presets with parameter counts")
    models = sub.add_parser("models", help="show the recipe's models by role; --check asks each for a reply")
    _add_recipe_args(models)
    models.add_argument("--check", action="store_true", help="open each model and sample one short reply")
    serve = sub.add_parser("serve-teacher", help="serve the bundled teacher with llama.cpp's OpenAI-compatible "
                                                 "server until Ctrl-C")
    serve.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    serve.add_argument("--n-ctx", type=int, default=4096)
    return parser


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="RECIPE | key=value",
                   help="recipe file (default recipes/tiny.toml) and section.key=value overrides")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved plan, and exit")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("outside a recipe (phiforge eval MODEL [MODEL ...] --tasks ...)")
    g.add_argument("--tasks", help="comma-separated TASK[=DATA] list, e.g. mmlu=mmlu.jsonl,humaneval,recall")
    g.add_argument("--out", default="evals", help="output folder (one subfolder per model and task)")
    g.add_argument("--repeats", type=int, help="samples per item (default: the task's)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default: the task's, 0.5 for simple-evals)")
    g.add_argument("--max-items", type=int, help="evaluate the first N items of each task")
    g.add_argument("--max-tokens", type=int, help="generation budget per response (default: the task's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--param", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="task-specific setting, e.g. recall.lengths=[4096,8192] (repeatable)")
    g.add_argument("--grader", help="model for LLM graders/extractors (SimpleQA, AMC, MATH checker): folder, "
                                    "'bundled' or URL#name")
    g.add_argument("--contamination", help="JSONL flags {task, id, verdict}: also report scores on clean and "
                                           "flagged items separately")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--batch-size", type=int, default=32, help="local models: rows decoded together")
    g.add_argument("--api-key-env", help="environment variable holding the endpoint's API key")
    g.add_argument("--overwrite", action="store_true", help="discard samples made with other settings")


def split_args(args: list[str]) -> tuple[Path | None, list[str]]:
    """First non-override argument is the recipe; ``a.b=c`` items are overrides."""
    recipe, overrides = None, []
    for a in args:
        if "=" in a and not Path(a).exists():
            overrides.append(a)
        elif recipe is None:
            recipe = Path(a)
        else:
            raise PhiforgeError(f"unexpected argument {a!r}: give one recipe file, then key=value overrides")
    if recipe is None and DEFAULT_RECIPE.is_file():
        recipe = DEFAULT_RECIPE
    elif recipe is None:
        print(f"phiforge: no recipe given and no {DEFAULT_RECIPE} here; using the built-in defaults",
              file=sys.stderr)
    return recipe, overrides


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown_flags = [a for a in extra if a.startswith("-")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    if extra:  # positionals after a flag (e.g. `run --dry-run pretrain.lr=1`) land here
        args.args = list(getattr(args, "args", [])) + extra
    try:
        return _dispatch(args)
    except PhiforgeError as e:
        print(f"phiforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"phiforge: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if args.command == "presets":
        from phiforge.run.plan import print_presets
        print_presets()
        return 0
    if args.command == "serve-teacher":
        from phiforge.backends.commands import serve_teacher
        return serve_teacher(port=args.port, n_ctx=args.n_ctx)
    if args.command == "eval" and args.tasks:
        from phiforge.evals.commands import eval_models
        return eval_models(args, log=_log)
    from phiforge.recipe import load_recipe
    recipe_path, overrides = split_args(args.args)
    recipe = load_recipe(recipe_path, overrides)
    if args.command == "models":
        from phiforge.backends.commands import show_models
        return show_models(recipe, check=args.check, dry_run=args.dry_run)
    only = args.command if args.command in STAGE_COMMANDS else args.only
    start = getattr(args, "start", None)
    if args.dry_run:
        from phiforge.run.plan import print_plan
        from phiforge.train.distributed import launched_env

        if launched_env().is_main:  # under torchrun one plan, not one per rank
            print_plan(recipe, recipe_path, only, start)
        return 0
    from phiforge.run.pipeline import run_pipeline
    from phiforge.train.distributed import launched_env

    run_dir = run_pipeline(recipe, only=only, start=start, log=_log)
    if launched_env().is_main:  # under torchrun, rank 0 speaks for the run
        print(f"phiforge: run finished: {run_dir}" + (f" (report: {run_dir / 'report.html'})"
                                                      if (run_dir / "report.html").exists() else ""))
    return 0


def _log(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
