"""The causal graph a model writes in its <causality> block, read back and scored against the gold graph.

Edges are read from arrows (`A -> C`, `A → C`, `A => C`, chains `A -> B -> C`, reversed `C <- A`) and from
"A causes C" / "A directly causes C" / "C is caused by A" sentences; a negated one ("A does not cause C")
adds no edge, nor does a negated arrow ("there is no arrow A -> C").
With the gold variable names given, multi-word names ("wet grass") are matched, longest first; without
them, a node is the word next to the arrow. Lists on one side of an arrow ("A, B -> C") are not read.
"""

import re
from collections.abc import Iterable

Edge = tuple[str, str]

# The block in the raw format, in the native ChatML format, or as decoded with special tokens skipped.
BLOCK_PATTERNS = (
    re.compile(r"<causality>(.*?)(?:</causality>|$)", re.DOTALL),
    re.compile(r"<\|im_start\|>causality(.*?)(?:<\|im_start\|>|<\|im_end\|>|$)", re.DOTALL),
    re.compile(r"^causality\s*$(.*?)(?:^(?:think|answer)\s*$|\Z)", re.DOTALL | re.MULTILINE),
)
ARROW = re.compile(r"\s*(-+>|→|⟶|⇒|=+>|<-+|←)\s*")
CAUSES = re.compile(
    r"\b(?P<neg>(?:does|do|did)\s*(?:not|n't)\s+|(?:is|are|was|were)\s+not\s+|never\s+)?(?:directly\s+)?"
    r"(?:(?P<passive>caused\s+by)|causes?|caused)\b(?!\s+of\b)",  # "the causes of E" is a noun, not an edge
    re.IGNORECASE,
)
NEGATION = re.compile(r"\b(?:no|not|never|without)\b|n't\b", re.IGNORECASE)  # "there is no arrow H -> A"
WORD = re.compile(r"[A-Za-z0-9_']+")
FILLER = {"the", "a", "an", "and", "so", "then", "also", "which", "that", "directly", "is", "are", "was", "were"}


def causality_block(output: str) -> str:
    """The text of the model's <causality> block(s); the whole output when it has none."""
    for pattern in BLOCK_PATTERNS:
        blocks = pattern.findall(output)
        if blocks:
            return "\n".join(blocks)
    return output


def parse_edges(text: str, names: Iterable[str] | None = None) -> set[Edge]:
    """Directed edges written in text, as (cause, effect) pairs of lower-case names."""
    known = sorted({n.lower() for n in names}, key=len, reverse=True) if names else None
    edges: set[Edge] = set()
    for line in re.split(r"[\n;.]+", text):
        edges |= _arrow_edges(line, known) | _sentence_edges(line, known)
    return {(a, b) for a, b in edges if a != b}


def _arrow_edges(line: str, known: list[str] | None) -> set[Edge]:
    parts = ARROW.split(line)  # node, arrow, node, arrow, node ...
    edges = set()
    for i in range(1, len(parts) - 1, 2):
        left, right = _node(parts[i - 1], known, last=True), _node(parts[i + 1], known, last=False)
        if left and right and not NEGATION.search(parts[i - 1]):
            edges.add((right, left) if parts[i].startswith(("<", "←")) else (left, right))
    return edges


def _sentence_edges(line: str, known: list[str] | None) -> set[Edge]:
    edges = set()
    matches = list(CAUSES.finditer(line))
    for i, match in enumerate(matches):
        start = matches[i - 1].end() if i else 0
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        left, right = _node(line[start : match.start()], known, True), _node(line[match.end() : end], known, False)
        if left and right and not match.group("neg"):
            edges.add((right, left) if match.group("passive") else (left, right))
    return edges


def _node(segment: str, known: list[str] | None, last: bool) -> str | None:
    """The name nearest the arrow: the last one in the segment before it, or the first one after it."""
    if known:
        lowered = segment.lower()
        found = [m for name in known for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", lowered)]
        if not found:
            return None  # "wet grass" wins over "grass" at either end
        pick = (
            max(found, key=lambda m: (m.end(), len(m[0])))
            if last
            else min(found, key=lambda m: (m.start(), -len(m[0])))
        )
        return pick[0]
    words = [w for w in WORD.findall(segment) if w.isupper() or w.lower() not in FILLER]  # "A" is a name, "a" not
    return (words[-1] if last else words[0]).lower() if words else None


def score(predicted: set[Edge], gold: set[Edge]) -> dict[str, float]:
    """Precision, recall and F1 of the directed edges, and the structural Hamming distance."""
    hits = len(predicted & gold)
    precision = hits / len(predicted) if predicted else float(not gold)
    recall = hits / len(gold) if gold else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "shd": shd(predicted, gold)}


def shd(predicted: set[Edge], gold: set[Edge]) -> int:
    """Structural Hamming distance: edges to add, delete or reverse to turn predicted into gold (a reversal is 1)."""
    pairs = {frozenset(edge) for edge in predicted | gold}
    return sum(_between(pair, predicted) != _between(pair, gold) for pair in pairs)


def _between(pair: frozenset, edges: set[Edge]) -> set[Edge]:
    return {edge for edge in edges if frozenset(edge) == pair}


def graph_metrics(output: str, gold_edges: Iterable[Iterable[str]], names: Iterable[str] | None = None) -> dict:
    """Score the graph in a model's output against the gold edge list."""
    gold = {(str(a).lower(), str(b).lower()) for a, b in gold_edges}
    return score(parse_edges(causality_block(output), names), gold)
