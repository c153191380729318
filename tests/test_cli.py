import subprocess
import sys
from pathlib import Path

from phiforge import cli

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "phiforge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = _cli("run", "recipes/tiny.toml", "--dry-run", f"run.out_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    for needle in ("stages:", "pretrain", "parameters:", "tokens", "epochs", "textbook", "midtrain mixture"):
        assert needle in out.stdout
    assert not any(tmp_path.iterdir())


def test_default_recipe_is_tiny(tmp_path):
    out = _cli("run", "--dry-run", f"run.out_dir={tmp_path}")
    assert out.returncode == 0 and "recipes/tiny.toml" in out.stdout


def test_bad_key_is_a_clear_error_without_traceback():
    out = _cli("run", "--dry-run", "pretrain.lrr=3")
    assert out.returncode == 2
    assert "pretrain.lrr: unknown key" in out.stderr and "Traceback" not in out.stderr


def test_stage_subcommands_exist_and_dry_run(tmp_path):
    for stage in cli.STAGE_COMMANDS:
        args = cli.build_parser().parse_args([stage, "--dry-run"])
        assert args.command == stage
    out = _cli("pretrain", "--dry-run", f"run.out_dir={tmp_path}")
    assert out.returncode == 0 and "pretrain" in out.stdout


def test_stage_commands_match_the_pipeline():
    from phiforge.run.pipeline import stage_names
    assert list(cli.STAGE_COMMANDS) == stage_names()


def test_presets_command():
    out = _cli("presets")
    assert out.returncode == 0 and "phi4-14b" in out.stdout and "14659.51M" in out.stdout


def test_missing_data_file_is_reported(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ngenerator = "none"\n[[data.sources]]\nname = "web"\npaths = ["missing.jsonl"]\n'
                      '[pretrain]\nmixture = { web = 1.0 }\n[midtrain]\nenabled = false\n')
    out = _cli("run", str(recipe), "--dry-run", f"run.out_dir={tmp_path}")
    assert out.returncode == 0 and "not on this machine: missing.jsonl" in out.stdout  # the plan still prints
    out = _cli("run", str(recipe), f"run.out_dir={tmp_path}")
    assert out.returncode == 2 and "missing.jsonl" in out.stderr  # the real run stops at the data stage


def test_models_command_lists_roles_and_checks_an_http_model(tmp_path):
    from phiforge.testing.http import ScriptedOpenAIServer

    out = _cli("models", "models.judge.backend=http", "models.judge.base_url=http://127.0.0.1:9",
               "models.judge.model=big")
    assert out.returncode == 0, out.stderr
    assert "teacher    local bundled" in out.stdout and "judge      http http://127.0.0.1:9 model=big" in out.stdout
    with ScriptedOpenAIServer() as srv:
        args = ["models.teacher.backend=http", f"models.teacher.base_url={srv.url}", "models.teacher.model=m",
                f"run.out_dir={tmp_path}", "models.judge.backend=http", f"models.judge.base_url={srv.url}",
                "models.judge.model=m"]
        assert cli.main(["models", "--check", *args]) == 0
    assert len(srv.requests) >= 2 + 6  # one reply per role, after the auto profile's probe


def test_dry_run_lists_models():
    out = _cli("run", "--dry-run")
    assert "models (by role):" in out.stdout and "policy" in out.stdout
