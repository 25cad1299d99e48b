"""claire.generate with the causal source: splits with unseen graph shapes, a card, never overwriting."""

import json
import re
import subprocess
import sys

import datasets
import pytest
from conftest import CONF, ROOT, compose_train
from hydra import compose, initialize_config_dir

from claire import ClaireError, datafiles
from claire.causal.suite import shape
from claire.generate import run
from claire.training import preprocess


def compose_generate(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("generate", overrides=["source=causal", *overrides])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "causal"
    run(compose_generate("n=1200", f"out={out}"))
    return out


def test_splits_hold_unseen_shapes_only_in_test(generated):
    dd = datasets.load_from_disk(str(generated))
    assert set(dd) == {"train", "eval", "test"} and sum(len(s) for s in dd.values()) == 1200
    seen = set(dd["train"]["shape"]) | set(dd["eval"]["shape"])
    unseen = {s for s, flag in zip(dd["test"]["shape"], dd["test"]["unseen_shape"], strict=True) if flag}
    assert unseen and not unseen & seen  # held-out shapes never reach train or eval
    assert any(not flag for flag in dd["test"]["unseen_shape"])  # and the test split also has seen shapes
    assert not any(dd["train"]["unseen_shape"]) and len(dd["eval"]) > 50
    assert len(set(dd["train"]["id"]) & set(dd["test"]["id"])) == 0
    # the stories repeat questions; a question drawn twice must never be on both sides of the split
    text = {name: {" ".join(q.lower().split()) for q in dd[name]["question"]} for name in dd}
    assert not text["train"] & text["test"] and not text["train"] & text["eval"] and not text["eval"] & text["test"]


def test_card_and_config_are_saved(generated):
    card = (generated / "README.md").read_text()
    assert "Test rows on graph shapes never seen in train or eval" in card and "| counterfactual |" in card


def test_same_seed_same_dataset(generated, tmp_path):
    again = run(compose_generate("n=1200", f"out={tmp_path / 'again'}"))
    for split in ("train", "test"):
        assert datasets.load_from_disk(str(again))[split]["id"] == datasets.load_from_disk(str(generated))[split]["id"]


def test_the_data_option_reads_it(generated):
    cfg = compose_train("data=causal", f"data.path={generated}")
    loaded = datafiles.load_raw(cfg.data)
    assert len(loaded["train"]) > 750 and len(loaded["eval"]) > 50
    kept, dropped = preprocess.prepare_split(loaded["eval"], cfg.data, "native")
    assert len(kept) == len(loaded["eval"]) and not dropped


def test_shape_ignores_labels():
    assert shape([["A", "B"], ["B", "C"]]) == shape([["rain", "wet grass"], ["wet grass", "slippery path"]])
    assert shape([["A", "B"], ["B", "C"]]) != shape([["A", "B"], ["C", "B"]])  # chain vs collider


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n=0", "n=0 must be a whole number above 0"),
        ("queries=rung9", "queries=rung9 is not a query set; choose one of"),
        ("verbalisation=pirate", "verbalisation=pirate is not known; choose one of"),
        ("eval_fraction=0.95", "eval_fraction + test_fraction must stay below 1"),
    ],
)
def test_bad_parameters(override, message, tmp_path):
    with pytest.raises(ClaireError, match=re.escape(message)):
        run(compose_generate(override, f"out={tmp_path / 'x'}"))


def test_cli_never_overwrites(generated):
    before = json.loads((generated / "dataset_dict.json").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "claire.generate", "source=causal", "n=10", f"out={generated}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1 and "already holds a dataset" in done.stderr
    assert json.loads((generated / "dataset_dict.json").read_text()) == before
    assert len(datasets.load_from_disk(str(generated))["train"]) > 750


def test_an_unknown_source_lists_the_sources():
    done = subprocess.run(
        [sys.executable, "-m", "claire.generate", "source=web"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 1 and "Could not find 'source/web'" in done.stderr
    assert "api" in done.stderr and "causal" in done.stderr
