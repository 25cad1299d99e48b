"""The GPU paths on first contact (issue 17), tested here by simulating the machine: the trainer preset follows the
card, a card too small stops before loading, several GPUs need torchrun, quantization needs bitsandbytes, and the
ranks of one torchrun job share one run folder and one global batch."""

import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from conftest import ROOT, compose_train
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import claire.train
from claire import ClaireError, datafiles, machine, run_folders
from claire.training import checks, preprocess

A100_80 = machine.Gpu("NVIDIA A100-SXM4-80GB", 85_899_345_920, 1, True)
L4 = machine.Gpu("NVIDIA L4", 23_034_920_960, 1, True)
T4 = machine.Gpu("Tesla T4", 15_828_320_256, 1, False)


def dry_run_main(monkeypatch, capsys, card: machine.Gpu | None, *overrides: str) -> str:
    """`python -m claire.train OVERRIDES dry_run=true` in this process on a simulated card; returns what it printed."""
    monkeypatch.setattr(machine, "gpu", lambda: card)
    monkeypatch.setattr(sys, "argv", ["claire.train", *overrides, "dry_run=true"])
    try:
        claire.train.main()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # later tests run without a Hydra run, as a test's compose does
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("card", "batch_line"),
    [(None, "batch 4 x 1024 tokens"), (A100_80, "batch 4 x 2048 tokens"), (L4, "batch 4 x 2048 tokens")],
)
def test_the_default_trainer_follows_the_machine(monkeypatch, capsys, card, batch_line):
    out = dry_run_main(monkeypatch, capsys, card, "model=0.5b")
    assert batch_line in out
    assert ("CPU trainer's" in out) == (card is None)  # the dry run's note that a CPU preset planned the run
    if card is L4:  # trainer=l4 checkpoints activations
        assert "activation checkpointing on" in out


def test_an_explicit_trainer_wins_over_the_machine(monkeypatch, capsys):
    out = dry_run_main(monkeypatch, capsys, A100_80, "model=0.5b", "trainer=cpu")
    assert "batch 4 x 1024 tokens" in out


def test_a_card_without_bf16_names_the_settings_to_pass(monkeypatch):
    with pytest.raises(SystemExit, match=r"Tesla T4 has no bf16.*trainer=l4 trainer.bf16=false trainer.fp16=true"):
        dry_run_main(monkeypatch, None, T4, "model=0.5b")


def test_quantization_needs_bitsandbytes_a_gpu_and_a_gpu_trainer(monkeypatch):
    cfg = compose_train("quant=4bit", "trainer=l4")
    real_find_spec = checks.importlib.util.find_spec
    monkeypatch.setattr(
        checks.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real_find_spec(name)
    )
    with pytest.raises(ClaireError, match=r"needs bitsandbytes, which is not installed: pip install -e '\.\[gpu\]'"):
        checks.check_machine(cfg, A100_80)
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ClaireError, match="needs a CUDA GPU; use quant=none"):
        checks.check_machine(cfg, None)
    with pytest.raises(ClaireError, match="trainer=cpu trains on the CPU; use trainer=l4 or trainer=a100"):
        checks.check_machine(compose_train("quant=4bit", "trainer=cpu"), A100_80)
    checks.check_machine(cfg, A100_80)  # bitsandbytes, a GPU and a GPU trainer: nothing to say


def test_one_process_on_several_gpus_is_refused_with_the_ways_that_work(monkeypatch):
    four = machine.Gpu("NVIDIA H100 80GB HBM3", 85_520_809_984, 4, True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ClaireError, match=r"sees 4 GPUs.*CUDA_VISIBLE_DEVICES=0.*torchrun --nproc_per_node=4"):
        checks.check_machine(compose_train(), four)
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun each process drives one GPU
    checks.check_machine(compose_train(), four)


def test_a_run_the_card_cannot_hold_stops_before_loading(monkeypatch, tmp_path):
    a100_40 = machine.Gpu("NVIDIA A100-SXM4-40GB", 42_949_672_960, 1, True)
    monkeypatch.setattr(machine, "gpu", lambda: a100_40)
    cfg = compose_train("model=7b", "lora=r32", "trainer=a100", "trainer.activation_checkpointing=false",
                        f"output_dir={tmp_path / 'run'}")  # fmt: skip
    with pytest.raises(ClaireError, match=r"dry-run estimate .* GB.*memory_check=false"):
        claire.train.run(cfg)
    assert not (tmp_path / "run").exists()


def test_activation_checkpointing_left_to_the_plan_is_decided_before_training(monkeypatch):
    checked = {"SFTConfig": {}}
    cfg = compose_train("trainer=gpu", "memory_check=false")
    claire.train.plan_memory(cfg, checked, A100_80)  # no estimate asked for on a GPU: on, the safe side
    assert checked["SFTConfig"]["activation_checkpointing"] is True and cfg.trainer.activation_checkpointing is True
    cfg = compose_train("trainer=gpu")
    claire.train.plan_memory(cfg, checked, None)  # on a CPU: off
    assert checked["SFTConfig"]["activation_checkpointing"] is False


@pytest.mark.parametrize(("world", "steps", "expected"), [("1", 4, 4), ("2", 4, 2), ("4", 4, 1), ("3", 4, None)])
def test_the_global_batch_stays_16_across_processes(monkeypatch, world, steps, expected):
    monkeypatch.setenv("WORLD_SIZE", world)
    cfg = compose_train(f"trainer.gradient_accumulation_steps={steps}")
    if expected is None:
        with pytest.raises(ClaireError, match="does not divide among 3 processes.*keep_global_batch=false"):
            checks.trainer_values(cfg, "out")
        return
    assert checks.trainer_values(cfg, "out")["gradient_accumulation_steps"] == expected
    larger = compose_train(f"trainer.gradient_accumulation_steps={steps}", "keep_global_batch=false")
    assert checks.trainer_values(larger, "out")["gradient_accumulation_steps"] == steps


def resolve_folder(rank: int, port: int, answer: Path) -> None:
    """One rank of a two-process CPU group: resolve its own folder name, write the one all ranks agree on."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="true")
    answer.write_text(run_folders.same_on_every_rank(f"experiments/run/2026-12-04_10-00-0{rank}"))
    import torch.distributed as dist

    dist.barrier()  # leave the group together: rank 0 holds its store, and a rank left behind aborts at exit
    dist.destroy_process_group()


def test_every_rank_of_a_torchrun_job_writes_rank_0s_folder(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")
    ranks = [spawn.Process(target=resolve_folder, args=(r, port, tmp_path / f"rank{r}")) for r in (0, 1)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=120)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    assert {(tmp_path / f"rank{r}").read_text() for r in (0, 1)} == {"experiments/run/2026-12-04_10-00-00"}


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_the_shipped_accelerate_configs_load(name):
    config = ClusterConfig.from_yaml_file(ROOT / "accelerate_configs" / f"{name}.yaml")
    assert config.distributed_type == ("MULTI_GPU" if name == "ddp" else "FSDP") and config.mixed_precision == "bf16"


def test_gpu_check_refuses_a_machine_without_cuda():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "gpu_check: no CUDA device" in done.stderr


def test_gpu_check_rows_fill_the_length_and_are_well_formed(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    rows = tmp_path / "rows.jsonl"
    length = gpu_check.long_rows(tiny_model_dir, rows, 512, train=3, evaluate=1)
    assert 512 - 80 <= length <= 512 - 16  # the dry run's worst case: every row nearly max_length
    cfg = compose_train(f"data.path={rows}")
    raw = datafiles.load_raw(cfg.data)
    kept, dropped = preprocess.prepare_split(raw["train"], cfg.data, cfg.model.markers)
    assert (len(kept), len(raw["eval"]), sum(dropped.values())) == (3, 1, 0)


def test_gpu_check_estimates_the_config_a_run_saved():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    saved = ROOT / "experiments" / "report" / "claire-7b-v1"  # the report's 7B run: a100, checkpointing on
    assert 20 < gpu_check.estimate(saved, True, "bf16") < 30 < gpu_check.estimate(saved, False, "bf16")
