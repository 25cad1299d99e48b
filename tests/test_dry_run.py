"""claire.train dry_run=true: exact parameter counts on the meta device, a GPU memory estimate, no run folder."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import CONF, compose_train

from claire import ClaireError, train
from claire.training import dry_run


def planned(capsys, *overrides: str) -> tuple[dict, str]:
    """plan.run on a composed config; returns its numbers and what it printed."""
    result = dry_run.run(compose_train(*overrides))
    return result, capsys.readouterr().out


@pytest.mark.parametrize(
    ("model", "lora", "trainable", "short", "total"),
    [  # the founding report's table 4.1 prints 35M, 74M and 80M
        ("0.5b", "r64", 35_192_832, "35.2M", 494_032_768),
        ("1.5b", "r64", 73_859_072, "73.9M", 1_543_714_304),
        ("7b", "r32", 80_740_352, "80.7M", 7_615_616_512),
    ],
)
def test_the_reports_parameter_counts(capsys, model, lora, trainable, short, total):
    result, out = planned(capsys, f"model={model}", f"lora={lora}")
    assert (result["trainable_params"], result["total_params"]) == (trainable, total)
    assert f"{trainable:,} trainable ({short}," in out and f"of {total:,}" in out
    assert result["architecture"] == f"claire/training/architectures/qwen2.5-{model}.json"


def test_every_shipped_model_has_its_architecture():
    models = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    names = {compose_train(f"model={m}").model.name for m in models}
    assert names == {p.stem for p in dry_run.ARCHITECTURES.glob("*.json")}
    for name in names:
        config = json.loads((dry_run.ARCHITECTURES / f"{name}.json").read_text())
        assert config["model_type"] in ("qwen2", "llama") and config["torch_dtype"] == "bfloat16"


def test_full_fine_tuning_trains_every_parameter(capsys):
    result, out = planned(capsys, "model=0.5b", "lora=none", "trainer=l4")
    assert result["trainable_params"] == result["total_params"] == 494_032_768
    assert "(494M, 100.00%)" in out and "full fine-tuning" in out
    assert result["memory"]["4bit"] is None  # QLoRA trains an adapter, never the 4-bit weights
    assert result["fits"]["L4 24 GB"] == {"bf16": True, "4bit": None}
    bf16 = result["memory"]["bf16"]
    assert bf16["gradients + AdamW"] == 3 * bf16["weights"]  # bf16 weights: bf16 gradient and AdamW moments


def test_4bit_is_smaller_and_the_gpu_verdicts(capsys):
    result, out = planned(capsys, "model=7b", "lora=r32", "trainer=l4")
    bf16, nf4 = result["memory"]["bf16"], result["memory"]["4bit"]
    assert 15.0e9 < bf16["weights"] < 15.5e9 and 5.0e9 < nf4["weights"] < 6.0e9
    assert nf4["total"] < bf16["total"] and nf4["activations"] == bf16["activations"]
    # the l4 preset (4 x 2048 tokens, activation checkpointing): 7B in bf16 is over an L4's 24 GB, 4-bit is ~14 GB
    # (conf/trainer/l4.yaml: "7B needs quant=4bit here")
    assert 25e9 < bf16["total"] < 26.5e9 and 13e9 < nf4["total"] < 15e9
    assert result["fits"] == {
        "L4 24 GB": {"bf16": False, "4bit": True},
        "A100 40 GB": {"bf16": True, "4bit": True},
        "A100/H100 80 GB": {"bf16": True, "4bit": True},
    }
    assert "L4 24 GB: bf16 does not fit, 4-bit fits\nA100 40 GB: bf16 fits, 4-bit fits\n" in out
    assert "activation checkpointing on" in out
    # the backward pass's gradients, at their peak in one layer's MLP: 4 x 2048 tokens x (6 x 18944 + 4 x 3584) bytes
    assert 0.3e9 < bf16["backward temporaries"] == nf4["backward temporaries"] < 3e9
    assert bf16["backward temporaries"] == 4 * 2048 * (6 * 18944 + 4 * 3584)


def test_without_checkpointing_7b_activations_dominate(capsys):
    # every layer's activations kept: 4 x 2048 tokens x 28 layers x ~297 kB is ~68 GB, so at full length (the worst
    # case the estimate takes) bf16 is over an 80 GB card and 4-bit just under; weights stay ~15 GB in bf16
    result, out = planned(capsys, "model=7b", "lora=r32", "trainer=a100", "trainer.activation_checkpointing=false")
    bf16 = result["memory"]["bf16"]
    assert 15.0e9 < bf16["weights"] < 15.5e9 and 64e9 < bf16["activations"] < 72e9
    assert 90e9 < bf16["total"] < 100e9 and 80e9 < result["memory"]["4bit"]["total"] < 85.9e9
    assert result["fits"]["A100 40 GB"] == {"bf16": False, "4bit": False}
    assert result["fits"]["A100/H100 80 GB"] == {"bf16": False, "4bit": True}
    assert "activation checkpointing off" in out and not result["checkpointing_chosen"]


def test_null_checkpointing_is_chosen_by_the_estimate(capsys):
    # null (the a100 preset's): off for a 0.5B, which fits an A100 40 GB without; on for a 7B, which would not
    small, out = planned(capsys, "model=0.5b", "lora=r64", "trainer=a100", "trainer.activation_checkpointing=null")
    assert (small["checkpointing"], small["checkpointing_chosen"]) == (False, True)
    assert "activation checkpointing off (GB" in out and "so off here (it fits an A100 40 GB in bf16" in out
    result = dry_run.plan(
        compose_train("model=7b", "lora=r32", "trainer=a100", "trainer.activation_checkpointing=null")
    )
    assert (result["checkpointing"], result["checkpointing_chosen"]) == (True, True)
    assert 90e9 < result["off_bytes"] < 100e9 and 25e9 < result["memory"]["bf16"]["total"] < 26.5e9
    assert "so on here (off would need 9" in dry_run.render(result)


def test_the_estimate_adds_up(capsys):
    result, out = planned(capsys, "model=0.5b")
    for terms in result["memory"].values():
        assert terms["total"] == pytest.approx(sum(v for k, v in terms.items() if k != "total"))
        assert terms["CUDA context (assumed)"] == 1e9
        allocated = terms["total"] - terms["CUDA context (assumed)"] - terms["fragmentation (assumed 10%)"]
        assert terms["fragmentation (assumed 10%)"] == pytest.approx(0.1 * allocated)  # of what the allocator holds
    assert "GPU memory for batch 4 x 1024 tokens" in out  # the default trainer=cpu preset's batch and length


def test_a_local_config_json_wins(tmp_path, capsys):
    config = json.loads((dry_run.ARCHITECTURES / "qwen2.5-0.5b.json").read_text()) | {"num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result, out = planned(capsys, "model=0.5b", "lora=r64", f"model.id={tmp_path}")
    assert result["architecture"] == str(tmp_path) and f"architecture from {tmp_path}" in out
    per_layer = (494_032_768 - 151_936 * 896 - 896) // 24  # Qwen2.5-0.5B's tied embeddings, final norm, 24 layers
    assert result["total_params"] == 151_936 * 896 + 896 + 2 * per_layer
    assert result["trainable_params"] == 35_192_832 // 24 * 2


def test_an_unknown_model_fails_in_one_line():
    cfg = compose_train("model.id=nobody/no-such-model", "model.name=no-such-model")
    with pytest.raises(ClaireError, match="could not read the architecture of model.id=nobody/no-such-model") as error:
        dry_run.run(cfg)
    assert "\n" not in str(error.value) and "config.json" in str(error.value)


def test_bad_config_fails_before_planning():
    with pytest.raises(ClaireError, match="lora.r=0 must be a number above 0"):
        train.run(compose_train("lora.r=0", "dry_run=true"))


def test_train_dry_run_needs_no_data(capsys):
    assert math.isnan(train.run(compose_train("model=7b", "lora=r32", "data=v2", "dry_run=true")))  # data/ absent
    assert "80,740,352 trainable" in capsys.readouterr().out


def saved_bytes(layers: int, batch: int, lora: dict | None, attention: str) -> int:
    """Bytes autograd keeps for the backward of a tiny random Qwen2 in bf16 (storages other than parameters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        hidden_size=128, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attention)
    if lora is not None:
        model = get_peft_model(model, LoraConfig(**lora))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, 256, (batch, LENGTH))
    mask = torch.ones_like(ids)
    mask[0, LENGTH - 16 :] = 0  # a padded batch, as training has them
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        backbone = model.get_base_model().model if lora else model.model
        out = backbone(input_ids=ids, attention_mask=mask)
    assert out.last_hidden_state.requires_grad
    return sum(kept.values())


ADAPTER = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
LENGTH = 64


@pytest.mark.parametrize(
    ("lora", "attention", "cpu_only"),
    [
        (None, "sdpa", 0),
        (ADAPTER, "sdpa", 0),
        (ADAPTER, "eager", 0),
        (ADAPTER | {"lora_dropout": 0.05}, "sdpa", 3),
    ],
    ids=["full", "lora", "lora-eager", "lora-dropout"],
)
def test_activation_formula_matches_what_autograd_keeps(lora, attention, cpu_only):
    # per decoder layer and token: two models differing by 2 layers, at two batch sizes (the LoRA weights' bf16 copies
    # are per layer, not per token). Dropout keeps a float32 mask on CPU where CUDA keeps a bool one: 3 bytes more
    # per element of each adapted layer's input, the one term of the estimate (made for CUDA) that CPU measures apart.
    torch.set_num_threads(1)
    kept = {(n, b): saved_bytes(n, b, lora, attention) for n in (1, 3) for b in (2, 4)}
    measured = (kept[3, 4] - kept[1, 4] - kept[3, 2] + kept[1, 2]) / 2 / (2 * LENGTH)
    from peft import LoraConfig
    from transformers import Qwen2Config

    config = Qwen2Config(
        hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256,
    )  # fmt: skip

    c = dry_run.counts(config, LoraConfig(**lora) if lora else None, "native", attention)
    assert dry_run.layer_bytes(c, LENGTH) + cpu_only * c.adapter_inputs == pytest.approx(measured, rel=0.01)


def test_dry_run_leaves_no_run_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "claire.train", "model=7b", "lora=r32", "dry_run=true"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "80,740,352 trainable (80.7M" in done.stdout and "7,615,616,512" in done.stdout
    assert "L4 24 GB: bf16 " in done.stdout and "A100 40 GB: bf16 " in done.stdout
    assert not (tmp_path / "experiments").exists() and list(tmp_path.iterdir()) == []


SEVEN_B = ("model=7b", "lora=r32", "trainer=a100")  # 4 x 2048 tokens


def test_fit_turns_checkpointing_on_where_the_card_needs_it(caplog):
    # a training run on an A100 80 GB: a 7B at 4 x 2048 would need ~96 GB without checkpointing, ~26 GB with it
    cfg = compose_train(*SEVEN_B, "trainer.activation_checkpointing=null")
    with caplog.at_level("INFO", logger="claire.train"):
        assert dry_run.fit(cfg, 85.9e9, "NVIDIA A100-SXM4-80GB") is True
    said = [r.getMessage() for r in caplog.records if r.name == "claire.train"]
    assert len(said) == 1 and said[0].startswith("activation checkpointing on: the dry-run estimate is 9")
    assert " GB without it, 25." in said[0] and "on this NVIDIA A100-SXM4-80GB (85.9 GB)" in said[0]


def test_fit_leaves_checkpointing_off_where_it_fits_without(caplog):
    cfg = compose_train("model=0.5b", "lora=r64", "trainer=a100", "trainer.activation_checkpointing=null")
    with caplog.at_level("INFO", logger="claire.train"):
        assert dry_run.fit(cfg, 85.9e9, "NVIDIA A100-SXM4-80GB") is False
    assert not [r for r in caplog.records if r.name == "claire.train"]


def test_fit_keeps_an_explicit_setting_or_stops_in_one_line():
    cfg = compose_train(*SEVEN_B, "trainer.activation_checkpointing=false")
    with pytest.raises(
        ClaireError, match=r"the dry-run estimate for this run is 9\d\.\d GB \(bf16, batch 4 x 2048, "
    ) as e:
        dry_run.fit(cfg, 42.9e9, "NVIDIA A100-SXM4-40GB")
    message = str(e.value)
    assert "activation checkpointing off) but this NVIDIA A100-SXM4-40GB has 42.9 GB; " in message
    assert "use trainer.activation_checkpointing=true, quant=4bit, a smaller " in message
    assert message.endswith("or memory_check=false to try anyway") and "\n" not in message
    # 4-bit with checkpointing: ~14 GB, within an L4
    assert dry_run.fit(compose_train(*SEVEN_B, "trainer.activation_checkpointing=true", "quant=4bit"), 24e9, "L4")


def test_fit_stops_when_even_checkpointing_is_not_enough():
    cfg = compose_train(*SEVEN_B, "trainer.activation_checkpointing=null")
    with pytest.raises(
        ClaireError, match=r"is 25\.\d GB \(bf16, batch 4 x 2048, activation checkpointing on\) but"
    ) as e:
        dry_run.fit(cfg, 24e9, "NVIDIA L4")
    assert "use quant=4bit, a smaller" in str(e.value) and "activation_checkpointing=true" not in str(e.value)
