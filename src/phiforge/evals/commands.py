"""``phiforge eval MODEL [MODEL ...] --tasks ...``: evaluate models outside a recipe."""

from __future__ import annotations

import contextlib
from pathlib import Path

from phiforge.errors import ConfigError
from phiforge.evals.suite import model_dir_name, model_ref, parse_tasks, run_suite
from phiforge.evals.table import markdown


def eval_models(args, log) -> int:
    """Every model on every task; a Table-1-style comparison when more than one model is given."""
    if not args.args:
        raise ConfigError("phiforge eval --tasks ... needs at least one MODEL: a model folder, 'bundled', "
                          "or http(s)://host:port#served-name")
    specs = parse_tasks(args.tasks, repeats=args.repeats, temperature=args.temperature, max_items=args.max_items,
                        max_tokens=args.max_tokens, seed=args.seed, params=args.param)
    refs = [(m, model_ref(m, device=args.device, batch_size=args.batch_size, api_key_env=args.api_key_env))
            for m in args.args]
    flags = _flags(args.contamination)
    out = Path(args.out)
    results = {}
    with contextlib.ExitStack() as stack:
        grader = _grader(stack, args)
        for spec, ref in refs:
            from phiforge.backends.registry import open_backend

            log(f"eval: {spec} ({ref.describe()})")
            backend = stack.enter_context(open_backend(ref, run_dir=None, role="eval"))
            folder = out / model_dir_name(spec)
            results[model_dir_name(spec)] = run_suite(backend, specs, folder, grader=grader, flags=flags,
                                                      overwrite=args.overwrite, log=log)["tasks"]
    table = markdown(results)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    log(f"eval: results under {out}/ (samples.jsonl and summary.json per model and task; table.md)")
    return 0


def _grader(stack: contextlib.ExitStack, args):
    if not args.grader:
        return None
    from phiforge.backends.registry import open_backend

    ref = model_ref(args.grader, device=args.device, batch_size=args.batch_size, api_key_env=args.api_key_env)
    return stack.enter_context(open_backend(ref, run_dir=None, role="grader"))


def _flags(path: str | None):
    if not path:
        return None
    from phiforge.evals.contamination import read_flags

    return read_flags(path)
