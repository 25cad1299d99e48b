"""`python -m claire.train ... dry_run=true`: plan a run without loading weights or data.

The model is built on the meta device from its architecture alone (model.id's config.json when it is a local
folder, else the copy shipped in claire/training/architectures/<model.name>.json, else the hub's), the adapter is
applied as training applies it, and the parameters are counted. GPU memory is then estimated term by term, for bf16 and
for 4-bit (QLoRA nf4, double quant) weights, at the configured batch and length. A training run on a CUDA GPU asks
`fit` the same estimate for its own card before loading anything.
"""

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from claire import ClaireError, models
from claire.training import checks

ARCHITECTURES = Path(__file__).parent / "architectures"
GB = 1e9  # decimal gigabytes, as GPUs are sold
# the cards' total memory in bytes (what CUDA itself keeps of it is the estimate's CUDA context term)
GPUS = {"L4 24 GB": 24e9, "A100 40 GB": 42.9e9, "A100/H100 80 GB": 85.9e9}
CHOOSING_GPU = "A100 40 GB"  # where the printout decides a null activation_checkpointing (bf16 weights)
PRECISIONS = {"bf16": "bf16", "4bit": "4-bit"}
CUDA_CONTEXT = 1 * GB  # assumption: CUDA context, cuBLAS workspace, 4-bit dequantized tiles
FRAGMENTATION = 0.10  # assumption: what PyTorch's caching allocator holds beyond its tensors (5-15% is usual)
# bitsandbytes nf4 with double quant: 4-bit codes, one 8-bit absmax per block of 64, one float32 per 256 blocks
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# trl's fused LM head (trl.kernels.chunked_logprob): the logits are projected in tiles of 4096 tokens x 32768 columns
HEAD_TILE = (4096, 32768)

log = logging.getLogger("claire.train")
CHOSEN = (
    "activation checkpointing on: the dry-run estimate is %.1f GB without it, %.1f GB with it, on this %s (%.1f GB)"
)


@dataclass(frozen=True)
class Counts:
    """What the estimate needs to know of the built model."""

    total: int  # parameters of the model itself (the adapter's not included)
    trainable: int
    trainable_bytes: int  # trainable parameters times their size as training holds them (peft: float32 adapters)
    upcast: int  # trainable parameters in float32: autocast keeps a bf16 copy of each for the step
    quantized: int  # weights bitsandbytes turns 4-bit: every linear layer but the LM head
    layers: int
    hidden: int
    intermediate: int
    q: int  # width of q and of the attention output: heads x head dim
    kv: int  # width of k and of v: key-value heads x head dim
    heads: int
    attention: str  # how attention runs: flash, sdpa or eager (model.attn_implementation)
    vocab: int
    adapter_inputs: int  # sum of in_features over the adapted linear layers, per decoder layer
    adapter_ranks: int  # sum of their ranks, per decoder layer
    dropout: bool  # lora_dropout > 0
    full: bool  # no adapter: every weight trains
    head_trainable: bool  # lm_head.weight gets a gradient (full fine-tuning, markers=special)


def architecture(model: DictConfig) -> tuple[Any, str]:
    """The model's transformers config and where it was read: local folder, shipped copy, or the hub."""
    from transformers import AutoConfig

    local = Path(str(model.id))
    shipped = ARCHITECTURES / f"{model.name}.json"
    try:
        if (local / "config.json").is_file():
            return AutoConfig.from_pretrained(local, trust_remote_code=model.trust_remote_code), str(local)
        if shipped.is_file():
            shipped_name = f"claire/training/architectures/{shipped.name}"
            return AutoConfig.for_model(**json.loads(shipped.read_text())), shipped_name
        kwargs = {"revision": model.revision, "trust_remote_code": model.trust_remote_code}
        if model.gguf_file and not model.gguf_package:
            kwargs["gguf_file"] = model.gguf_file
        return AutoConfig.from_pretrained(str(model.id), **kwargs), f"the hub ({model.id})"
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClaireError(
            f"could not read the architecture of model.id={model.id} ({reason}); pass model.id=DIR, a folder "
            f"holding its config.json (`hf download {model.id} config.json --local-dir DIR`), or add "
            f"claire/training/architectures/{model.name}.json"
        ) from error


def build(config: Any) -> Any:
    """The causal LM on the meta device, in bf16: shapes and dtypes without memory or weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def adapt(model: Any, config: Any, lora: Any, markers: str) -> Any:
    """The model with the adapter applied as training applies it (the model itself without one)."""
    if lora is None:
        return model
    import torch
    from peft import get_peft_model

    if markers == "special":  # as training does; the 4 added tokens' rows (< 0.01%) are left out
        models.train_marker_embeddings(lora, config.get_text_config())
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft still asks transformers' deprecated checkpointing flag
        return get_peft_model(model, lora)  # as trl's SFTTrainer calls it


def counts(config: Any, lora: Any, markers: str, attention: str = "sdpa") -> Counts:
    """Parameter counts and the shapes the estimate needs, from the model built on the meta device."""
    import torch
    from peft.tuners.lora import LoraLayer

    model = build(config)
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters())
    quantized = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    model = adapt(model, config, lora, markers)
    text = config.get_text_config()
    layers, heads = text.num_hidden_layers, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapted = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return Counts(
        total=total,
        trainable=sum(p.numel() for p in trainable),
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        upcast=sum(p.numel() for p in trainable if p.dtype == torch.float32),
        quantized=quantized,
        layers=layers,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        q=heads * head_dim,
        kv=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
        heads=heads,
        attention="flash" if "flash" in attention else "eager" if attention == "eager" else "sdpa",
        vocab=text.vocab_size,
        adapter_inputs=sum(m.in_features for m in adapted) // layers,
        adapter_ranks=sum(sum(m.r.values()) for m in adapted) // layers,
        dropout=lora is not None and lora.lora_dropout > 0,
        full=lora is None,
        head_trainable=any(p.requires_grad for p in model.get_output_embeddings().parameters()),
    )


def layer_bytes(c: Counts, length: int) -> float:
    """Activation bytes one decoder layer keeps for the backward pass, per token of a padded batch, in bf16 (checked
    in the tests); the same under 4-bit weights: bitsandbytes' 4-bit matmul keeps only the weight for its backward."""
    h, i = c.hidden, c.intermediate
    kept = 8 * h + 8  # the two RMSNorms keep their input upcast to float32, and its rsqrt
    if c.attention == "flash":  # flash_attention_2: q, k, v, the output, a float32 logsumexp per head; no mask
        kept += 4 * c.q + 4 * c.kv + 4 * c.heads
    elif c.attention == "sdpa":  # as flash, but with k and v repeated to every head (transformers does so when a
        # padding mask is passed), and that mask, which sdpa turns into a bf16 bias per layer (batch x length^2)
        kept += 8 * c.q + 4 * c.heads + 2 * length
    else:  # eager: q, k and v repeated, the attention probabilities in float32 and bf16 (heads x length^2)
        kept += 6 * c.q + 6 * c.heads * length
    kept += 6 * i  # the MLP's gate and up outputs and silu(gate)
    if c.full:
        kept += 8 * h + 2 * i  # the projections' inputs, for their weight gradients
    # LoRA: each adapted layer keeps its dropout mask (1 byte) and the bf16 input of A (2 bytes), and A's output
    kept += (3 if c.dropout else 2) * c.adapter_inputs + 2 * c.adapter_ranks
    return kept


def backward_bytes(c: Counts, length: int) -> float:
    """Gradient bytes per token that one decoder layer's backward pass holds at its peak, beside what the layer kept
    (with checkpointing, the layer recomputed for it is in the activations term)."""
    # the larger of the MLP's (bf16 gradients of silu(gate) x up, of silu(gate) and of up, the size of the MLP's part
    # of layer_bytes) and attention's (q, k and v repeated, and the output; eager: the probabilities, float32 and bf16)
    attention = 6 * c.heads * length if c.attention == "eager" else 8 * c.q
    return max(6 * c.intermediate, attention) + 4 * c.hidden  # and the residual stream's gradient, in and summed


def head_bytes(c: Counts, tokens: int) -> float:
    """Bytes of the final norm, trl's fused LM head and its loss: the full logits are never built on a GPU."""
    kept = tokens * 6 * c.hidden  # final RMSNorm: float32 input and bf16 output
    kept += tokens * (2 * c.hidden + 28)  # the fused head keeps the hidden states and 7 float32 statistics per token
    kept += tokens * 6 * c.hidden  # its backward: float32 gradient of those hidden states and its bf16 cast
    kept += min(tokens, HEAD_TILE[0]) * min(c.vocab, HEAD_TILE[1]) * 2  # one bf16 tile of logits at a time
    if c.head_trainable:
        kept += c.vocab * c.hidden * 4  # float32 accumulator of lm_head.weight's gradient
    return kept


def full_logits_bytes(c: Counts, tokens: int) -> float:
    """What the logits would take with the model's own loss (on CPU, or other trainers): bf16 plus a float32 copy."""
    return tokens * c.vocab * (2 + 4)


def estimate(c: Counts, batch: int, length: int, checkpointing: bool) -> dict[str, dict[str, float] | None]:
    """GPU memory in bytes per term, for bf16 and 4-bit weights ("4bit" is None without an adapter: QLoRA needs one)."""
    tokens = batch * length  # every row max_length long: the worst case
    memory: dict[str, dict[str, float] | None] = {}
    for precision in PRECISIONS:
        quantized = precision == "4bit"
        if quantized and c.full:
            memory[precision] = None  # 4-bit weights cannot be trained themselves
            continue
        # weights: bf16, 2 bytes per parameter; 4-bit: nf4 linear layers, embeddings, LM head and norms in bf16
        weights = 2 * c.total if not quantized else NF4_BYTES * c.quantized + 2 * (c.total - c.quantized)
        # trainable parameters as held: peft upcasts adapters to float32; trl casts them to bf16 under QLoRA
        held = 2 * c.trainable if quantized else c.trainable_bytes
        layer = layer_bytes(c, length) * tokens
        kept = c.layers * 2 * c.hidden * tokens + layer if checkpointing else c.layers * layer
        terms = {
            "weights": weights,
            # full fine-tuning trains the weights themselves; float32 adapters get a bf16 copy from autocast
            "adapter weights": 0 if c.full else held + (0 if quantized else 2 * c.upcast),
            "gradients + AdamW": 3 * held,  # a gradient and AdamW's two moments, each the parameter's dtype
            # without checkpointing every layer keeps its activations; with it, only each layer's bf16 input is kept
            # and one layer's activations are recomputed at a time during the backward pass
            "activations": kept,
            "backward temporaries": backward_bytes(c, length) * tokens,  # ~1 GB for a 7B at 4 x 2048 tokens
            "LM head + loss": head_bytes(c, tokens),
        }
        terms["fragmentation (assumed 10%)"] = FRAGMENTATION * sum(terms.values())  # of the allocator's tensors
        terms["CUDA context (assumed)"] = CUDA_CONTEXT
        memory[precision] = terms | {"total": sum(terms.values())}
    return memory


def verdicts(memory: dict[str, dict[str, float] | None]) -> dict[str, dict[str, bool | None]]:
    """For each GPU and precision: whether the estimated total fits its usable memory (None: not applicable)."""
    return {
        gpu: {p: None if terms is None else terms["total"] <= size for p, terms in memory.items()}
        for gpu, size in GPUS.items()
    }


def short(n: int) -> str:
    """A parameter count to three significant figures: 35.2M, 494M, 7.62B."""
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def render(plan: dict[str, Any]) -> str:
    """The dry run's printout: parameters, a table of memory terms x precisions, one verdict line per GPU."""
    c, memory = plan["counts"], plan["memory"]
    adapter = f"LoRA r={plan['lora_r']} on {plan['lora_targets']}" if plan["lora_r"] else "full fine-tuning"
    width = max(len(term) for term in memory["bf16"]) + 2
    lines = [
        f"claire.train dry run: {plan['model']} ({plan['model_id']}), architecture from {plan['architecture']}; "
        "no weights, data or run folder",
        f"parameters: {c['trainable']:,} trainable ({short(c['trainable'])}, {c['trainable'] / c['total']:.2%}) "
        f"of {c['total']:,} ({short(c['total'])}); {adapter}",
        f"GPU memory for batch {plan['batch']} x {plan['length']} tokens, activation checkpointing "
        f"{'on' if plan['checkpointing'] else 'off'} (GB = 1e9 bytes):",
        f"  {'':{width}}{'bf16':>8}{'4-bit':>8}",
    ]
    for term in memory["bf16"]:
        cells = ["n/a" if memory[p] is None else f"{memory[p][term] / GB:.2f}" for p in PRECISIONS]
        lines.append(f"  {term:{width}}" + "".join(f"{cell:>8}" for cell in cells))
    for gpu, fits in plan["fits"].items():
        said = {True: "fits", False: "does not fit", None: "n/a (QLoRA needs an adapter)"}
        lines.append(f"{gpu}: " + ", ".join(f"{PRECISIONS[p]} {said[f]}" for p, f in fits.items()))
    if plan["checkpointing_chosen"]:
        lines.append(chosen_line(plan))
    lines.append(
        f"assumptions: every row max_length tokens; {plan['counts']['attention']} attention; AdamW; trl's fused LM "
        f"head (the full logits would take {plan['full_logits_bytes'] / GB:.2f} GB more); 4-bit = nf4, double quant"
    )
    if plan.get("cpu_trainer"):
        lines.append("batch, length and checkpointing are the CPU trainer's; for a GPU run's pass trainer=a100 or l4")
    if plan.get("method", "sft") != "sft":
        lines.append(
            f"method={plan['method']}: this is the training step's estimate; generation adds its KV cache (and vLLM's "
            "share of the card), and beta > 0 a forward pass of the reference policy"
        )
    return "\n".join(lines)


def chosen_line(plan: dict[str, Any]) -> str:
    """How a null trainer.activation_checkpointing was decided for the printout."""
    why = (
        f"on here (off would need {plan['off_bytes'] / GB:.2f} GB in bf16, more than an {CHOOSING_GPU} has)"
        if plan["checkpointing"]
        else f"off here (it fits an {CHOOSING_GPU} in bf16 without)"
    )
    return f"activation checkpointing: null in the config, so {why}; a training run decides for its own card"


def configured(trainer: DictConfig) -> bool | None:
    """The trainer's activation checkpointing: True, False, or None where the memory estimate decides."""
    setting = trainer.get("activation_checkpointing")
    if setting is None:  # transformers' old name, where a config still sets it
        setting = trainer.get("gradient_checkpointing")
    return None if setting is None else bool(setting)


def plan(cfg: DictConfig, checkpointing: bool | None = None) -> dict[str, Any]:
    """Check the config, build the model on the meta device, return its counts and memory estimate (checkpointing:
    instead of the trainer's activation_checkpointing)."""
    checked = checks.check(cfg, f"{cfg.output_dir}/checkpoints")
    values = checked["LoraConfig"]
    config, source = architecture(cfg.model)
    lora = checks.build("LoraConfig", "lora", values) if values is not None else None
    c = counts(config, lora, cfg.model.markers, cfg.model.attn_implementation)
    trainer = cfg.trainer
    batch, length = trainer.per_device_train_batch_size, trainer.max_length
    setting = configured(trainer) if checkpointing is None else checkpointing
    memory, off_bytes = estimate(c, batch, length, bool(setting)), None
    if setting is None and memory["bf16"]["total"] > GPUS[CHOOSING_GPU]:  # null: on where off would not fit
        memory, off_bytes = estimate(c, batch, length, True), memory["bf16"]["total"]
    return {
        "model": cfg.model.name,
        "model_id": str(cfg.model.id),
        "architecture": source,
        "lora_r": values["r"] if values else None,
        "lora_targets": values.get("target_modules") if values else None,
        "trainable_params": c.trainable,
        "total_params": c.total,
        "counts": asdict(c),
        "batch": batch,
        "length": length,
        "checkpointing": bool(setting) or off_bytes is not None,
        "checkpointing_chosen": setting is None,
        "off_bytes": off_bytes,  # bf16 total without checkpointing, where that is why it was chosen
        "memory": memory,
        "fits": verdicts(memory),
        "full_logits_bytes": full_logits_bytes(c, batch * length),
        "cpu_trainer": bool(trainer.get("use_cpu")),
        "method": cfg.method.name if "method" in cfg else "sft",
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Print the plan of a run (python -m claire.train ... dry_run=true) and return it."""
    result = plan(cfg)
    print(render(result))
    return result


def needed(memory: dict[str, dict[str, float] | None], precision: str) -> float:
    """The estimated total at a precision (bf16's where 4-bit does not apply: training refuses that run itself)."""
    return (memory[precision] or memory["bf16"])["total"]


def fit(cfg: DictConfig, card_bytes: float, card_name: str) -> bool:
    """Whether to train with activation checkpointing on this card: as the trainer sets it, or, where that is null,
    on only if the estimate needs it; a ClaireError where the estimate exceeds the card's memory."""
    precision = "4bit" if cfg.quant is not None else "bf16"  # quant=8bit too: its weights counted at half size
    setting = configured(cfg.trainer)
    result = plan(cfg, checkpointing=bool(setting))
    on, total = bool(setting), needed(result["memory"], precision)
    if setting is None and total > card_bytes:
        off, on = total, True
        total = needed(estimate(Counts(**result["counts"]), result["batch"], result["length"], True), precision)
        if total <= card_bytes:
            log.info(CHOSEN, off / GB, total / GB, card_name, card_bytes / GB)
    if total > card_bytes:
        raise too_big(result, precision, on, total, card_name, card_bytes)
    return on


def too_big(
    result: dict[str, Any], precision: str, on: bool, total: float, card: str, card_bytes: float
) -> ClaireError:
    """The one-line refusal of a run whose estimate exceeds its card, with what would make it fit."""
    fixes = [] if on else ["trainer.activation_checkpointing=true"]
    fixes += ["quant=4bit"] if precision == "bf16" else []
    fixes.append(
        "a smaller trainer.per_device_train_batch_size or trainer.max_length (keep the global batch with "
        "trainer.gradient_accumulation_steps)"
    )
    return ClaireError(
        f"the dry-run estimate for this run is {total / GB:.1f} GB ({PRECISIONS[precision]}, batch {result['batch']} x "
        f"{result['length']}, activation checkpointing {'on' if on else 'off'}) but this {card} has "
        f"{card_bytes / GB:.1f} GB; use {', '.join(fixes)}, or memory_check=false to try anyway"
    )
