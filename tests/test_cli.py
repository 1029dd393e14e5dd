"""The training jobs' command line: help that shows the preset in force, the recipe a
--dataset brings, and a start line that names the preset and what was changed from it."""
import argparse
import re
import runpy

import pytest

from csg.cli import get_args_parser, parse_config, summary
from csg.config import PRESETS
from csg.store.run_record import start_line
from tests.helpers import REPO, job_main, make_imagefolder


def _help_of(out: str, flag: str) -> str:
    """One option's entry of a --help text, on one line."""
    start = out.index(f"\n  {flag} ")
    end = out.find("\n  -", start + 1)
    return " ".join(out[start:end if end > 0 else None].split())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_help_under_a_preset_shows_that_presets_values(preset, capsys):
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--preset", preset, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name, value in PRESETS[preset].items():
        assert f"(default: {value})" in _help_of(out, "--" + name.replace("_", "-")), (name, value)


def test_help_names_each_default_once_and_never_none(capsys):
    with pytest.raises(SystemExit):
        job_main("train_cifar")(["--help"])
    raw = capsys.readouterr().out
    out = " ".join(raw.split())
    assert "(default: None)" not in out and not re.search(r"\(default: [^)]*\) \(default:", out)
    assert "(default: 200)" in _help_of(raw, "--epochs")  # cifar10-resnet20, the job's preset
    assert "unset, --lr" in _help_of(raw, "--csg-lr") and "(default:" not in _help_of(raw, "--csg-lr")


def test_an_imagefolder_tree_brings_the_generic_recipe_unless_the_job_has_one(tmp_path):
    tree = make_imagefolder(tmp_path / "tree")
    argv = ["--dataset", "imagefolder", "--data", str(tree), "--batch-size", "6", "--g-density", "0.5"]
    cfg, _, _ = parse_config(get_args_parser("cifar10-resnet20", "d"), argv)
    assert cfg.preset == "imagefolder-resnet18" and cfg.model == "resnet18" and cfg.epochs == 60
    cfg, _, _ = parse_config(get_args_parser("imagenet-resnet18", "d"), argv)
    assert cfg.preset == "imagenet-resnet18" and cfg.epochs == 120


def test_the_start_line_names_the_preset_and_every_option_changed_from_it():
    cfg, info, _ = parse_config(get_args_parser("cifar10-resnet20", "d"),
                                ["--dataset", "digits", "--epochs", "3", "--no-nesterov", "--lambda2", "0.15"])
    line = start_line("r1", cfg, info)
    assert re.search(r"preset digits-resnet20, changed: --epochs 3 --no-nesterov$", line), line
    cfg, info, _ = parse_config(get_args_parser("digits-resnet20", "d"), [])
    assert start_line("r2", cfg, info).endswith("preset digits-resnet20, changed: nothing")


@pytest.mark.parametrize("script", sorted(f"{folder}/{p.name}" for folder in ("jobs", "bench")
                                           for p in (REPO / folder).glob("*.py")))
def test_every_jobs_and_benchmarks_help_opens_with_its_whole_first_paragraph(script, capsys):
    module = runpy.run_path(str(REPO / script))
    with pytest.raises(SystemExit) as exit_info:
        module["main"](["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert summary(module["__doc__"]).endswith(".") and summary(module["__doc__"]) in " ".join(out.split())
    assert "(default: None)" not in out and "(default: --" not in out  # each default once, as it applies


def test_every_analysis_subcommands_help_shows_each_default_once(capsys):
    analyze = runpy.run_path(str(REPO / "jobs" / "analyze.py"))
    commands = next(a for a in analyze["get_args_parser"]()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(commands.choices) >= 8
    for name, parser in commands.choices.items():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: --" not in text, (name, text)
