"""A small deterministic generator of causal questions with exact answers: the embedded sample data.

Each row is a random DAG over 3-6 lettered variables (topological order shuffled against the alphabet),
a question about it, the gold answer computed from the graph, and a reference trace in the raw Claire
format: <think> ... <causality> the edges and the reasoning </causality> ... </think> answer.
Query types: direct_causes, root_cause, intervention (yes/no, balanced), confounder.
    python -m claire.causal [--n 240] [--seed 0] [--out claire/data/causal_sample.jsonl]
"""

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

SAMPLE_PATH = Path(__file__).parent / "data" / "causal_sample.jsonl"
QUERY_TYPES = ("direct_causes", "root_cause", "intervention", "confounder")
Edge = tuple[str, str]


def random_dag(rng: random.Random) -> tuple[list[str], list[Edge]]:
    """3-6 variables; every variable after the first has at least one cause earlier in a shuffled order."""
    names = rng.sample("ABCDEFGH", rng.randint(3, 6))
    edges = set()
    for j in range(1, len(names)):
        edges.add((names[rng.randrange(j)], names[j]))
        edges.update((names[i], names[j]) for i in range(j) if rng.random() < 0.3)
    return sorted(names), sorted(edges)


def parents(node: str, edges: list[Edge]) -> list[str]:
    """Direct causes of node, sorted."""
    return sorted(a for a, b in edges if b == node)


def ancestors(node: str, edges: list[Edge]) -> list[str]:
    """Every variable with a directed path into node, sorted."""
    found, frontier = set(), [node]
    while frontier:
        for parent in parents(frontier.pop(), edges):
            if parent not in found:
                found.add(parent)
                frontier.append(parent)
    return sorted(found)


def path(source: str, target: str, edges: list[Edge]) -> list[str] | None:
    """One directed path source -> ... -> target (shortest, ties broken alphabetically), or None."""
    routes = {source: [source]}
    frontier = [source]
    while frontier:
        node = frontier.pop(0)
        for a, b in edges:
            if a == node and b not in routes:
                routes[b] = [*routes[node], b]
                frontier.append(b)
    return routes.get(target)


def describe(names: list[str], edges: list[Edge]) -> str:
    """The graph in words, as the question states it."""
    links = "; ".join(f"{a} causes {b}" for a, b in edges)
    return f"A causal system has the variables {', '.join(names)}. Its direct causal links are: {links}."


def direct_causes(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which variables directly cause X?"""
    x = rng.choice([n for n in names if parents(n, edges)])
    found = parents(x, edges)
    reasoning = f"The arrows into {x} start at {' and '.join(found)}."
    return f"Which variables directly cause {x}?", reasoning, ", ".join(found)


def root_cause(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which of X's ancestors have no causes themselves?"""
    x = rng.choice([n for n in names if ancestors(n, edges)])
    up = ancestors(x, edges)
    roots = [a for a in up if not parents(a, edges)]
    verb = "has" if len(roots) == 1 else "have"
    reasoning = f"The ancestors of {x} are {', '.join(up)}; of these, {' and '.join(roots)} {verb} no incoming arrow."
    question = f"Which variables are root causes of {x}, that is, ancestors of {x} with no causes of their own?"
    return question, reasoning, ", ".join(roots)


def intervention(rng: random.Random, names: list[str], edges: list[Edge], want: bool) -> tuple[str, str, str] | None:
    """If we set X by intervention, can Y change? Yes exactly when a directed path X -> ... -> Y exists."""
    pairs = [(x, y) for x in names for y in names if x != y and (path(x, y, edges) is not None) == want]
    if not pairs:
        return None
    x, y = rng.choice(pairs)
    route = path(x, y, edges)
    if route:
        reasoning = (
            f"do({x}) cuts the arrows into {x} but keeps those out of it; the path {' -> '.join(route)} remains."
        )
    else:
        reasoning = f"No directed path leads from {x} to {y}, so setting {x} cannot reach {y}."
    question = f"If we intervene and set {x} to a new value (do({x})), can that change {y}? Answer yes or no."
    return question, reasoning, "yes" if route else "no"


def confounder(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which single variable directly causes both X and Y? Asked only where exactly one does."""
    pairs = [
        (x, y)
        for i, x in enumerate(names)
        for y in names[i + 1 :]
        if len(set(parents(x, edges)) & set(parents(y, edges))) == 1
    ]
    if not pairs:
        return None
    x, y = rng.choice(pairs)
    (z,) = set(parents(x, edges)) & set(parents(y, edges))
    reasoning = (
        f"{x} is caused by {', '.join(parents(x, edges))}; {y} by {', '.join(parents(y, edges))}; only {z} is in both."
    )
    question = f"Which variable is a common cause (a confounder) of {x} and {y}, directly causing both?"
    return question, reasoning, z


def trace(names: list[str], edges: list[Edge], reasoning: str, answer: str) -> str:
    """The reference trace in the raw Claire format."""
    graph = "\n".join(f"{a} -> {b}" for a, b in edges)
    return (
        f"<think>\nI write down the causal graph over {', '.join(names)}, then follow the arrows the question needs.\n"
        f"<causality>\n{graph}\n{reasoning}\n</causality>\nThat settles it.\n</think>\nThe answer is {answer}."
    )


def make_row(index: int, seed: int, eval_every: int) -> dict:
    """Row `index`: its own seeded RNG, query type by index, graphs redrawn until the query fits."""
    rng = random.Random(seed * 1_000_003 + index)
    query_type = QUERY_TYPES[index % len(QUERY_TYPES)]
    makers: dict[str, Callable] = {
        "direct_causes": direct_causes,
        "root_cause": root_cause,
        "intervention": lambda r, n, e: intervention(r, n, e, want=(index // len(QUERY_TYPES)) % 2 == 0),
        "confounder": confounder,
    }
    while True:
        names, edges = random_dag(rng)
        made = makers[query_type](rng, names, edges)
        if made:
            break
    question, reasoning, answer = made
    return {
        "id": f"causal-{index:06d}",
        "split": "eval" if index % eval_every == eval_every - 1 else "train",
        "question": f"{describe(names, edges)} {question}",
        "response": trace(names, edges, reasoning, answer),
        "answer": answer,
        "query_type": query_type,
        "edges": [list(e) for e in edges],
        "seed": seed,
    }


def generate_rows(n: int, seed: int = 0, eval_fraction: float = 1 / 6) -> list[dict]:
    """n rows, every round(1/eval_fraction)-th one in the eval split."""
    return [make_row(i, seed, max(2, round(1 / eval_fraction))) for i in range(n)]


def write_jsonl(rows: list[dict], path: Path) -> None:
    """One JSON object per line."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def main() -> None:
    """Regenerate the shipped sample (or another file)."""
    parser = argparse.ArgumentParser(description="Write causal questions with exact answers as JSONL.")
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH)
    opts = parser.parse_args()
    write_jsonl(generate_rows(opts.n, opts.seed), opts.out)
    print(f"wrote {opts.n} rows to {opts.out}")


if __name__ == "__main__":
    main()
