"""claire.chat: talk to a Claire model in the terminal; each answer shown as its thinking, its causal world model (the
<causality> block read as edges, optionally drawn) and its answer.

    python -m claire.chat run=experiments/<run_name>/<timestamp>          # an interactive session
    python -m claire.chat run=<run> 'question="Let A cause C, ..."'        # one question, then exit (scripts)
"""

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from transformers import TextStreamer

from claire import ClaireError, answers, completions, configs, decoding, graphs, resolvers, run_folders

resolvers.register()
RULE = "──"


def check(cfg: DictConfig) -> None:
    """One-line errors for a bad config, before any model loads; a run's own model settings replace model.*."""
    decoding.check(cfg.decode)
    if cfg.run:
        cfg.model = run_folders.trained_model(Path(cfg.run), cfg.merged, cfg.model.trust_remote_code)
        if cfg.system_prompt is None:  # the system prompt the run was trained with, if any
            cfg.system_prompt = OmegaConf.load(Path(cfg.run) / "config.yaml").get("data", {}).get("system_prompt")
    elif cfg.merged:
        raise ClaireError("merged=true needs run=<a claire.train run folder>")
    if cfg.question is not None and not str(cfg.question).strip():
        raise ClaireError("question= is empty; give one, e.g. 'question=\"What is the root cause of C?\"', or drop it")


def ask(model: Any, tokenizer: Any, cfg: DictConfig, question: str, out: Any = None) -> list[str]:
    """Generate the completion(s) of one question, streaming tokens to out (stdout); returns their text."""
    import torch

    out = out or sys.stdout
    messages = [{"role": "user", "content": question}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    ends = model.generation_config.eos_token_id
    kwargs = decoding.generate_kwargs(cfg.decode, tokenizer, prompt_length, cfg.model.markers, ends)
    if cfg.stream and kwargs.get("num_return_sequences", 1) == 1:
        kwargs["streamer"] = Streamer(tokenizer, out)
    with torch.no_grad():
        generated = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **kwargs)
    if "streamer" in kwargs:
        out.write("\n")
    return [completions.decode(tokenizer, ids[prompt_length:]) for ids in generated]


class Streamer(TextStreamer):
    """transformers' TextStreamer writing to a chosen stream, decoding as claire.completions does (markers kept)."""

    def __init__(self, tokenizer: Any, out: Any) -> None:
        super().__init__(KeepMarkers(tokenizer), skip_prompt=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Write the text as it is finalized."""
        self.out.write(text)
        self.out.flush()


class KeepMarkers:
    """The tokenizer, decoding as claire.completions does: every special token dropped but Claire's trace markers."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def decode(self, ids: Any, **_: Any) -> str:
        """The text of ids, markers kept."""
        return completions.decode(self.tokenizer, ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def majority(texts: list[str]) -> tuple[str | None, int, int]:
    """The answer most completions give, in the form the causal suite compares (claire.answers.causal_key; lm-eval's
    majority_vote filter counts), its count, and the first completion giving it."""
    from lm_eval.filters.selection import MajorityVoteFilter

    keys = [answers.causal_key(text) for text in texts]
    votes = [key for key in keys if key]
    if not votes:
        return None, 0, 0
    (winner,) = next(iter(MajorityVoteFilter().apply([votes], None)))
    return winner, votes.count(winner), keys.index(winner)


def show(texts: list[str], cfg: DictConfig, number: int, out: Any = None) -> dict[str, Any]:
    """Print the answer's three parts (with several samples: those of the first giving the majority answer, and the
    vote); return them."""
    out = out or sys.stdout
    winner, count, first = majority(texts) if len(texts) > 1 else (None, 0, 0)
    shown = completions.parts(texts[first])
    edges = sorted(graphs.parse_edges(shown["causality"] or ""))
    lines = [f"{RULE} thinking", shown["thinking"] or "(none)", f"{RULE} causal world model"]
    lines += [f"  {a} -> {b}" for a, b in edges] or ["(no <causality> block)"]
    lines += [f"{RULE} answer", shown["answer"] or "(no answer section)"]
    result = {**shown, "edges": edges, "text": texts[first]}
    if len(texts) > 1:
        lines += [f"{RULE} vote: {winner} ({count} of {len(texts)} samples)" if winner else f"{RULE} vote: no answer"]
        result["vote"] = winner
    if cfg.graph_png and edges:
        result["graph_png"] = str(draw(edges, Path(cfg.graphs_dir) / f"graph-{number}.png"))
        lines.append(f"(graph drawn in {result['graph_png']})")
    out.write("\n".join(lines) + "\n")
    return result


def draw(edges: Iterable[tuple[str, str]], path: Path) -> Path:
    """The causal graph as a PNG: causes above their effects."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = nx.DiGraph(list(edges))
    for layer, nodes in enumerate(nx.topological_generations(graph) if nx.is_directed_acyclic_graph(graph) else []):
        for node in nodes:
            graph.nodes[node]["layer"] = layer
    layout = (
        nx.multipartite_layout(graph, subset_key="layer", align="horizontal", scale=-1)
        if all("layer" in d for _, d in graph.nodes(data=True))
        else nx.spring_layout(graph, seed=0)
    )
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    nx.draw_networkx(graph, layout, ax=ax, node_color="#dde6f5", node_size=900, arrowsize=18, font_size=11)
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def questions(cfg: DictConfig) -> Iterable[str]:
    """The one question= question, or each line typed until an empty line, `exit` or end of input."""
    if cfg.question is not None:
        yield str(cfg.question)
        return
    print("claire.chat: ask a causal question (empty line or Ctrl-D to leave); each question is answered on its own.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return
        if not line or line in ("exit", "quit"):
            return
        yield line


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Check, load the model once, answer each question; returns what was shown."""
    check(cfg)
    import torch
    from transformers import set_seed

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    set_seed(cfg.seed)
    from claire import models

    model, tokenizer = models.load_for_inference(cfg.model, cfg.run, cfg.merged)
    shown = []
    for number, question in enumerate(questions(cfg), start=1):
        shown.append(show(ask(model, tokenizer, cfg, question), cfg, number))
    return shown


@hydra.main(version_base="1.3", config_path=configs.CONFIG_DIR, config_name="chat")
def main(cfg: DictConfig) -> None:
    """Hydra entrypoint: `python -m claire.chat run=<run folder> ['question="..."']`."""
    try:
        run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.chat: error: {error}") from None


if __name__ == "__main__":
    main()
