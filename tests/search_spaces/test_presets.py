"""The preset contract, parametrised over every registered preset and its CPU form
(Optuna's style: one suite, every component), plus the space, grid and loader."""

import dataclasses
import importlib
import itertools
import math

import optuna
import pytest

import nfnet.config as nfconfig
import search_spaces
from nfnet.variants import SMALL_VARIANTS, get_variant
from search_spaces import (
    Preset,
    define_space,
    get_preset,
    grid,
    known_presets,
    normalise_point,
    parse_point,
)
from search_spaces.space import DistinctCellSampler, GridCellSampler
from tuner.errors import TunerError
from tuner.study.planner import snap_to_grid

optuna.logging.set_verbosity(optuna.logging.WARNING)

MODULES = {"paper": "search_spaces.paper", "cpu-fashion": "search_spaces.cpu_fashion",
           "cpu-scaling": "search_spaces.cpu_scaling", "cpu-smoke": "search_spaces.cpu_smoke"}
ALL_FORMS = [(name, cpu) for name in known_presets() for cpu in (False, True)]


def small_preset(**changes) -> Preset:
    fields = dict(name="tiny", summary="a test study", command="python -m tuner.sweep --preset tiny",
                  cost="seconds", variants=("nano", "nano-w2"), epochs=(0.5, 1), lr_exponents=(0, 1),
                  batch_size=64, dataset="digits", resolution=16)
    fields.update(changes)
    return Preset(**fields)


def test_every_preset_module_is_registered():
    assert set(known_presets()) == set(MODULES)
    for name, module in MODULES.items():
        assert importlib.import_module(module).PRESET is get_preset(name)


@pytest.mark.parametrize("name", known_presets())
def test_module_docstring_opens_with_the_command_and_says_the_cost(name):
    doc = importlib.import_module(MODULES[name]).__doc__
    preset = get_preset(name)
    first_block = doc.split("\n\n")[1].strip()
    assert first_block.startswith(f"python -m tuner.sweep --preset {name}")
    assert "Cost:" in doc or "cost:" in doc.lower()
    assert preset.command.startswith(f"python -m tuner.sweep --preset {name}")
    assert preset.cost and "TBD" not in preset.cost and "TBD" not in doc


@pytest.mark.parametrize("name,cpu", ALL_FORMS)
def test_preset_builds_a_full_grid_of_valid_cells(name, cpu):
    preset = get_preset(name, cpu=cpu)
    cells = grid(preset)
    assert len(cells) == len(preset.variants) * len(preset.epochs) * len(preset.lr_exponents)
    assert len({(c.label, c.epochs, c.lr) for c in cells}) == len(cells)
    for cell in cells:
        assert get_variant(cell.variant, cell.width_mult, cell.depth_mult).label == cell.label
    # The LR grid is the planner's: factor-2 steps anchored at 1.6 × batch/4096.
    for lr in preset.lrs:
        assert snap_to_grid(lr, preset.batch_size) == pytest.approx(lr)
    ratios = [b / a for a, b in itertools.pairwise(preset.lrs)]
    assert all(r == pytest.approx(2.0) or r > 2.0 for r in ratios)


@pytest.mark.parametrize("name,cpu", ALL_FORMS)
def test_a_sampled_trial_is_a_cell_and_a_valid_train_config(name, cpu):
    preset = get_preset(name, cpu=cpu)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    cells = {(c.variant, c.width_mult, c.depth_mult, c.epochs, c.lr) for c in grid(preset)}
    dataset = preset.dataset if not preset.dataset_required else "parquet:/data/shards"
    for _ in range(5):
        trial = study.ask()
        config = define_space(trial, preset)
        assert set(trial.params) == {"variant", "epochs", "lr"}
        assert (config["variant"], config["width_mult"], config["depth_mult"], config["epochs"],
                config["lr"]) in cells
        train_config = nfconfig.TrainConfig(**preset.base_config(dataset=dataset), **config)
        nfconfig.validate(train_config)
        study.tell(trial, 1.0)


@pytest.mark.parametrize("name", known_presets())
def test_cpu_form_is_cpu_sized_and_runs_here(name):
    cpu = get_preset(name, cpu=True)
    assert cpu.cpu_sized and cpu.cpu() is cpu
    assert all(get_variant(label).name in SMALL_VARIANTS for label in cpu.variants)
    assert not cpu.dataset_required and cpu.resolution <= 32
    assert cpu.command.startswith(f"python -m tuner.sweep --preset {name}")


def test_paper_preset_is_the_papers_grid_and_its_cpu_form_keeps_the_shape():
    paper = get_preset("paper")
    assert paper.variants == ("F0", "F1", "F3", "F3+", "F7", "F7+")
    assert paper.epochs == (0.25, 0.5, 1, 2, 4, 8)
    assert paper.batch_size == 4096 and max(paper.lrs) == pytest.approx(1.6)
    assert paper.dataset_required
    cpu = paper.cpu()
    assert cpu.name == "paper-cpu"
    assert len(cpu.variants) == len(paper.variants) and cpu.epochs == paper.epochs
    assert len(cpu.lrs) == len(paper.lrs)
    # "+" variants stay wider than their base in the CPU form.
    assert get_variant("mini-w1.5").widths[0] > get_variant("mini").widths[0]


def test_grid_sampler_over_the_space_visits_every_cell_once():
    preset = small_preset()
    study = optuna.create_study(sampler=GridCellSampler(preset, seed=0))
    seen = []
    for _ in range(len(grid(preset))):
        trial = study.ask()
        config = define_space(trial, preset)
        seen.append((trial.params["variant"], config["epochs"], config["lr"]))
        study.tell(trial, 0.0)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(seen) == sorted((c.label, c.epochs, c.lr) for c in grid(preset))


def test_the_label_keeps_multipliers_in_optuna_and_splits_them_for_the_trainer():
    preset = small_preset(variants=("nano-w2",))
    trial = optuna.create_study().ask()
    config = define_space(trial, preset)
    assert trial.params["variant"] == "nano-w2"
    assert (config["variant"], config["width_mult"], config["depth_mult"]) == ("nano", 2.0, 1.0)


def test_distinct_cell_sampler_repeats_no_cell_until_the_grid_is_exhausted():
    preset = small_preset()
    n = len(grid(preset))
    repeats = {}
    for wrap in (False, True):
        tpe = optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
        study = optuna.create_study(sampler=DistinctCellSampler(tpe, seed=0) if wrap else tpe)
        cells = []

        def objective(trial):
            config = define_space(trial, preset)
            cells.append((trial.params["variant"], config["epochs"], config["lr"]))
            return config["lr"]  # TPE is drawn to the lowest LR, and repeats it

        study.optimize(objective, n_trials=n)
        repeats[wrap] = n - len(set(cells))
    assert repeats[False] > 0
    assert repeats[True] == 0


def test_start_points_are_snapped_to_the_grid_or_rejected():
    preset = small_preset()
    lr = preset.lrs[1]
    point = parse_point(f"nano-w2,1,{lr:.6f}", preset)
    assert point == {"variant": "nano-w2", "epochs": 1.0, "lr": lr}
    assert parse_point(f"variant=nano,epochs=0.5,lr={preset.lrs[0]}", preset)["variant"] == "nano"
    with pytest.raises(TunerError, match="not on preset tiny's grid"):
        normalise_point({"variant": "nano", "epochs": 1, "lr": 0.3}, preset)
    with pytest.raises(TunerError, match="not in preset tiny"):
        parse_point("micro,1,0.1", preset)
    with pytest.raises(TunerError, match="VARIANT,EPOCHS,LR"):
        parse_point("nano,1", preset)


def test_unknown_preset_is_one_line_naming_the_known_ones():
    with pytest.raises(TunerError) as info:
        get_preset("cpu-fashon")
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in known_presets())


def test_a_preset_of_your_own_loads_from_a_file_or_a_module(tmp_path, monkeypatch):
    source = (
        "from search_spaces import Preset\n"
        "WIDE = Preset(name='wide', summary='s', command='python -m tuner.sweep --preset wide.py:WIDE',\n"
        "              cost='minutes', variants=('nano', 'nano-w2'), epochs=(1,), lr_exponents=(0, 1),\n"
        "              batch_size=64, dataset='digits', resolution=16)\n"
    )
    path = tmp_path / "my_presets.py"
    path.write_text(source)
    assert get_preset(f"{path}:WIDE").name == "wide"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_preset("my_presets:WIDE").variants == ("nano", "nano-w2")
    with pytest.raises(TunerError, match="has no Preset named PRESET"):
        get_preset(str(path))
    with pytest.raises(TunerError, match="does not exist"):
        get_preset(str(tmp_path / "missing.py"))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"variants": ("nano", "F99")}, "unknown variant 'F99'"),
        ({"epochs": ()}, "epochs is empty"),
        ({"epochs": (1, 1)}, "repeated values"),
        ({"epochs": (0,)}, "must be positive"),
        ({"overrides": {"lr": 0.1}}, "may not set lr"),
        ({"overrides": {"batch_size": 32}}, "as preset fields"),
        ({"grace_period": 1.5}, "grace_period"),
        ({"resolution": 8}, r"resolution must be a whole number of px >= 16 .*got 8"),
        ({"eval_resolution": 12}, r"eval_resolution must be a whole number of px >= 16"),
        ({"cpu_changes": {"colour": "red"}}, "unknown preset fields colour"),
        ({"name": "a b"}, "preset name"),
        ({"only_cells": (("nano", 0.5, 7),)}, r"only_cells lists \(nano, 0.5, 7\), which is not a cell"),
        ({"only_cells": (("micro", 1, 0),)}, "not a cell of its grid"),
        ({"only_cells": (("nano", 1, 0), ("nano", 1.0, 0))}, "lists a cell twice"),
        ({"only_cells": ("nano",)}, "holds \\(variant, epochs, lr exponent\\) triples"),
    ],
)
def test_a_bad_preset_is_a_one_line_tuner_error(changes, message):
    with pytest.raises(TunerError, match=message) as info:
        small_preset(**changes)
    assert "\n" not in str(info.value)


def test_only_cells_keeps_just_those_cells_in_grid_order():
    preset = small_preset(only_cells=(("nano-w2", 1, 0), ("nano", 0.5, 1)))
    assert [(c.label, c.epochs, c.lr) for c in preset.cells()] == [
        ("nano", 0.5, preset.lrs[1]), ("nano-w2", 1.0, preset.lrs[0])]
    assert preset.cells()[1].width_mult == 2.0
    assert "2 cells" in preset.describe()
    assert len(small_preset().cells()) == 8  # no only_cells: the whole product


def test_presets_are_frozen_hashable_and_picklable():
    import pickle

    preset = small_preset(overrides={"evals_per_run": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.batch_size = 3
    assert pickle.loads(pickle.dumps(preset)) == preset
    assert hash(preset) == hash(small_preset(overrides={"evals_per_run": 2}))
    assert preset.trainer_overrides() == {"evals_per_run": 2}


def test_base_config_carries_everything_but_the_cell():
    preset = small_preset(eval_resolution=24, overrides={"evals_per_run": 2})
    base = preset.base_config(seed=3, data_dir=None)
    assert base == {"batch_size": 64, "dataset": "digits", "resolution": 16, "eval_resolution": 24,
                    "evals_per_run": 2, "seed": 3}
    with pytest.raises(TunerError, match="set per trial"):
        preset.base_config(lr=0.1)
    assert math.isclose(search_spaces.base_lr(4096), 1.6)
