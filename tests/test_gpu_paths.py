"""GPU-only paths simulated on CPU: merging after QLoRA, 4-bit parameter counts, memory freed after each trial,
CPU threads per process."""

import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from claire.train import run
from claire.training import sft


def read(path):
    return json.loads(path.read_text())


QUICK = ("trainer.max_steps=2", "data.max_train_rows=16", "data.max_eval_rows=4")  # seconds, not a real run


@pytest.fixture
def tiny_peft(tiny_model_dir):
    """The tiny model with a LoRA r8 adapter, as trl's SFTTrainer builds it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return get_peft_model(base, LoraConfig(r=8, target_modules="all-linear"))


class Watch:
    """Weak references to the trained model and one of its weights, taken inside the trainer."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref] = []

    def take(self, model) -> None:
        if not self.refs:
            self.refs = [weakref.ref(model), weakref.ref(next(model.parameters()))]

    def alive(self) -> list:
        gc.collect()
        return [r() for r in self.refs if r() is not None]


@pytest.fixture
def watched(monkeypatch) -> Watch:
    """Weak references to the model each run trains, taken at its first step."""
    watch = Watch()

    class Look(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **_):
            watch.take(model)

    original = sft.build_trainer

    def build(cfg, checked):
        trainer, *rest = original(cfg, checked)
        trainer.add_callback(Look())
        return trainer, *rest

    monkeypatch.setattr(sft, "build_trainer", build)
    return watch


@pytest.mark.parametrize("markers", ["native", "special"])
def test_quantized_run_merges_a_reloaded_base(tiny_cfg, tmp_path, monkeypatch, watched, markers):
    # The tiny model is not 4-bit; taken for one, the run must merge into a fresh float32 copy of the base
    monkeypatch.setattr(sft, "is_quantized", lambda model: True)
    reload, trained_alive = sft.reloaded, []
    monkeypatch.setattr(sft, "reloaded", lambda *a: trained_alive.extend(watched.alive()) or reload(*a))
    cfg = tiny_cfg("merge=true", "schedule.learning_rate=0.05", f"model.markers={markers}", *QUICK)
    run(cfg)
    out = tmp_path / "run"
    metrics = read(out / "metrics.json")
    assert metrics["merged_from"] == "float32 reload" and metrics["merge_max_logit_diff"] < 1e-4
    assert watched.refs and trained_alive == []  # the trained (4-bit) model was freed before the reload
    base = load_file(f"{cfg.model.id}/model.safetensors")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    merged = load_file(out / "merged" / "model.safetensors")
    config = read(out / "adapter" / "adapter_config.json")
    scale = config["lora_alpha"] / (config["r"] ** 0.5 if config["use_rslora"] else config["r"])
    name = "model.layers.0.self_attn.q_proj"
    a, b = (adapter[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
    assert b.abs().max() > 0  # the adapter learned something...
    expected = base[f"{name}.weight"] + scale * b @ a
    torch.testing.assert_close(merged[f"{name}.weight"], expected, atol=1e-6, rtol=1e-5)  # ...merged exactly
    if markers == "special":  # the trained embeddings, the markers' new rows among them, replace the base's
        trained = adapter["base_model.model.model.embed_tokens.modules_to_save.weight"]
        torch.testing.assert_close(merged["model.embed_tokens.weight"], trained)


def test_unquantized_run_merges_the_trained_weights(tiny_cfg, tmp_path):
    run(tiny_cfg("merge=true", *QUICK))
    assert read(tmp_path / "run" / "metrics.json")["merged_from"] == "trained weights"


def test_parameter_counts_are_peft_counts(tiny_peft):
    trainable, total = sft.parameter_counts(tiny_peft)
    assert (trainable, total) == tiny_peft.get_nb_trainable_parameters()
    assert total == sum(p.numel() for p in tiny_peft.parameters())  # the adapter included, as before
    assert trainable == sum(p.numel() for p in tiny_peft.parameters() if p.requires_grad)


def test_a_packed_4bit_weight_counts_as_the_weight_it_packs(tiny_peft):
    class Params4bit(torch.nn.Parameter):  # peft knows bitsandbytes' 4-bit weights by their class name
        pass

    _, total = sft.parameter_counts(tiny_peft)
    layer = tiny_peft.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    packed = layer.weight.numel() // 2  # two 4-bit values per byte
    layer.weight = Params4bit(torch.zeros(packed, 1, dtype=torch.uint8), requires_grad=False)
    assert sum(p.numel() for p in tiny_peft.parameters()) == total - packed  # the plain count: half the weight
    assert sft.parameter_counts(tiny_peft)[1] == total


def test_quantized_is_told_as_peft_tells_it(tiny_peft):
    assert not sft.is_quantized(tiny_peft)
    tiny_peft.get_base_model().is_loaded_in_4bit = True  # what transformers sets on a bitsandbytes 4-bit model
    assert sft.is_quantized(tiny_peft) and sft.is_quantized(tiny_peft.get_base_model())


def test_full_fine_tuning_counts_every_parameter(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.model.norm.weight.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    assert sft.parameter_counts(model) == (total - model.model.norm.weight.numel(), total)


def test_a_failed_trial_leaves_no_model_behind(tiny_cfg, monkeypatch):
    watch = Watch()

    def out_of_memory(self, model, inputs, num_items_in_batch=None):
        watch.take(model)
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(sft.ClaireSFTTrainer, "training_step", out_of_memory)
    with pytest.raises(RuntimeError, match="simulated") as caught:
        run(tiny_cfg(*QUICK))
    kept = caught.value  # as Hydra keeps a failed job's exception in its result
    assert watch.refs and kept.__traceback__ is not None
    assert watch.alive() == []


def test_a_pruned_trial_leaves_no_model_behind(tiny_cfg, monkeypatch):
    import optuna

    watch = Watch()

    class Prune(TrainerCallback):
        pruned = True

        def on_step_end(self, args, state, control, model=None, **_):
            watch.take(model)
            control.should_training_stop = True

    def pruning(trainer, cfg):
        trainer.add_callback(callback := Prune())
        return callback

    monkeypatch.setenv("CLAIRE_SWEEP_TRIAL", "0")
    monkeypatch.setattr(sft, "sweep_callback", pruning)
    with pytest.raises(optuna.TrialPruned, match="pruned at step 1") as caught:
        run(tiny_cfg(*QUICK))
    kept = caught.value
    assert watch.refs and kept.__traceback__ is not None
    assert watch.alive() == []


def test_a_finished_run_leaves_no_model_behind(tiny_cfg, watched):
    run(tiny_cfg(*QUICK))
    assert watched.refs and watched.alive() == []


@pytest.mark.parametrize(
    ("configured", "processes", "cores", "threads"),
    [
        (3, "4", 16, 3),
        (None, None, 16, 16),
        (None, "4", 16, 4),
        (None, "3", 16, 5),
        (None, "8", 4, 1),
        (None, "2", None, 1),
    ],
)
def test_cpu_threads_share_the_cores_among_local_processes(monkeypatch, configured, processes, cores, threads):
    if processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    monkeypatch.setattr(sft.os, "cpu_count", lambda: cores)
    assert sft.cpu_threads(configured) == threads


def test_the_sweeper_keeps_a_stopped_trials_error_as_text_alone(tmp_path):
    import optuna
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.claire_sweeper.claire_sweeper import ClaireSweeper

    refs = []

    def holding(error: Exception):
        def task():
            weights = torch.zeros(8)  # the trial's model, held by this frame of the error's traceback
            refs.append(weakref.ref(weights))
            raise error

        return task

    def job(task) -> JobReturn:  # as Hydra's run_job keeps a job's outcome
        result = JobReturn(status=JobStatus.UNKNOWN)
        try:
            result.return_value, result.status = task(), JobStatus.COMPLETED
        except Exception as error:
            result.return_value, result.status = error, JobStatus.FAILED
        return result

    class Launcher:
        def launch(self, batch, initial_job_idx):
            oom, pruned = RuntimeError("CUDA out of memory (simulated)"), optuna.TrialPruned("pruned at step 1")
            return [job(lambda: 1.5), job(holding(oom)), job(holding(pruned))]

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    sweeper = ClaireSweeper(n_trials=3, study_name="s", pruner={}, heartbeat_interval=60)
    sweeper.launcher = Launcher()
    asked = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(3)]
    results = sweeper.launch(study, url, asked, [])  # the sweeper keeps these until the sweep ends
    gc.collect()
    assert len(refs) == 2 and all(r() is None for r in refs)
    failed, pruned = results[1]._return_value, results[2]._return_value
    assert str(failed) == "RuntimeError: CUDA out of memory (simulated)" and failed.__traceback__ is None
    assert isinstance(pruned, optuna.TrialPruned) and str(pruned) == "pruned at step 1" and not pruned.__traceback__
    found = study.get_trials()
    assert [t.state.name for t in found] == ["COMPLETE", "FAIL", "PRUNED"] and found[0].value == 1.5
    assert found[1].user_attrs["error"] == "RuntimeError: CUDA out of memory (simulated)"
