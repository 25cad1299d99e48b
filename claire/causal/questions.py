"""A small deterministic generator of causal questions with exact answers: the embedded sample data.

Each row is a random DAG over 3-6 lettered variables (topological order shuffled against the alphabet),
a question about it, the gold answer computed from the graph, and a reference trace in the raw Claire
format: <think> ... <causality> the edges and the reasoning </causality> ... </think> answer.
The sample's query types: direct_causes, root_cause, intervention (yes/no, balanced), confounder.
The structure tier of the causal task suite adds ancestors, descendants, direct_or_indirect, mediators,
colliders and d_separation over graphs of 3-8 variables (`queries=structure` or `all`).
Data sets are made with `python -m claire.generate source=causal ...`; `python -m claire.causal` rewrites the
shipped sample (claire/data/causal_sample.jsonl: 240 rows, seed 0, the sample's query types).
"""

import itertools
import json
import math
import random
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

SAMPLE_PATH = Path(__file__).parents[1] / "data" / "causal_sample.jsonl"
SAMPLE_ROWS = 240
QUERY_TYPES = ("direct_causes", "root_cause", "intervention", "confounder")
STRUCTURE_TYPES = ("ancestors", "descendants", "direct_or_indirect", "mediators", "colliders", "d_separation")
QUERY_SETS = {"sample": QUERY_TYPES, "structure": STRUCTURE_TYPES, "all": QUERY_TYPES + STRUCTURE_TYPES}
LADDER_TYPES = ("association", "intervention_effect", "intervention_raises", "counterfactual")
QUERY_SETS["ladder"] = LADDER_TYPES
QUERY_SETS["all"] = QUERY_TYPES + STRUCTURE_TYPES + LADDER_TYPES
RUNGS = {"association": 1, "intervention": 2, "intervention_effect": 2, "intervention_raises": 2, "counterfactual": 3}
SIZES = {"sample": (3, 6), "structure": (3, 8), "ladder": (3, 5), "all": (3, 8)}
CPT_VALUES = [Fraction(k, 10) for k in range(1, 10)]
Edge = tuple[str, str]


def random_dag(rng: random.Random, sizes: tuple[int, int] = (3, 6)) -> tuple[list[str], list[Edge]]:
    """sizes[0]-sizes[1] variables; each after the first has at least one cause earlier in a shuffled order."""
    names = rng.sample("ABCDEFGH", rng.randint(*sizes))
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


def children(node: str, edges: list[Edge]) -> list[str]:
    """Direct effects of node, sorted."""
    return sorted(b for a, b in edges if a == node)


def descendants(node: str, edges: list[Edge]) -> list[str]:
    """Every variable node has a directed path into, sorted."""
    return ancestors(node, [(b, a) for a, b in edges])


def d_separated(x: str, y: str, given: list[str], edges: list[Edge]) -> tuple[bool, list[str], list[Edge]]:
    """Lauritzen's criterion: X and Y are d-separated by Z when the moral graph of the ancestral set of
    {X, Y} + Z, with Z removed, does not connect them. Returns the verdict, the ancestral set and the moral edges."""
    keep = sorted({x, y, *given} | {a for v in (x, y, *given) for a in ancestors(v, edges)})
    kept = [(a, b) for a, b in edges if a in keep and b in keep]
    married = {tuple(sorted((p, q))) for v in keep for p in parents(v, kept) for q in parents(v, kept) if p < q}
    moral = sorted({tuple(sorted(e)) for e in kept} | married)
    reached, frontier = {x}, [x]
    while frontier:
        node = frontier.pop()
        for a, b in moral:
            other = b if a == node else a if b == node else None
            if other and other not in reached and other not in given:
                reached.add(other)
                frontier.append(other)
    return y not in reached, keep, moral


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


# Reference reasoning is spelled out one copyable step at a time ("Into X: A -> X, B -> X."): a small model
# trained on bare conclusions ("The arrows into X start at A") learned the format but guessed the conclusion.
def arrows_into(node: str, edges: list[Edge]) -> str:
    """'Into X: A -> X, B -> X.' (or 'Into X: none.'), the graph's lines that end at node."""
    return f"Into {node}: {', '.join(f'{a} -> {node}' for a in parents(node, edges)) or 'none'}."


def arrows_out_of(node: str, edges: list[Edge]) -> str:
    """'Out of X: X -> A, X -> B.' (or 'Out of X: none.'), the graph's lines that start at node."""
    return f"Out of {node}: {', '.join(f'{node} -> {b}' for b in children(node, edges)) or 'none'}."


def walk(node: str, edges: list[Edge], back: bool) -> list[str]:
    """A breadth-first search written out: one 'Into V' (or 'Out of V') line per variable reached, then the set."""
    step, next_of = (arrows_into, parents) if back else (arrows_out_of, children)
    lines, found, queue = [], [], [node]
    while queue:
        current = queue.pop(0)
        lines.append(step(current, edges))
        for other in next_of(current, edges):
            if other not in found and other != node:
                found.append(other)
                queue.append(other)
    direction = "back" if back else "forward"
    lines.append(f"Reached {direction} from {node}: {listed(sorted(found))}.")
    return lines


def describe(names: list[str], edges: list[Edge]) -> str:
    """The graph in words, as the question states it."""
    links = "; ".join(f"{a} causes {b}" for a, b in edges)
    return f"A causal system has the variables {', '.join(names)}. Its direct causal links are: {links}."


def direct_causes(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which variables directly cause X?"""
    x = rng.choice([n for n in names if parents(n, edges)])
    found = parents(x, edges)
    reasoning = f"{arrows_into(x, edges)}\nThe direct causes of {x} are {', '.join(found)}."
    return f"Which variables directly cause {x}?", reasoning, ", ".join(found)


def root_cause(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which of X's ancestors have no causes themselves?"""
    x = rng.choice([n for n in names if ancestors(n, edges)])
    up = ancestors(x, edges)
    roots = [a for a in up if not parents(a, edges)]
    verb = "has" if len(roots) == 1 else "have"
    reasoning = "\n".join(walk(x, edges, back=True))
    reasoning += f"\nOf these, {' and '.join(roots)} {verb} no incoming arrow."
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
    reasoning = "\n".join([*walk(x, edges, back=False), reasoning])
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
    reasoning = f"{arrows_into(x, edges)}\n{arrows_into(y, edges)}\nOnly {z} has an arrow into both."
    question = f"Which variable is a common cause (a confounder) of {x} and {y}, directly causing both?"
    return question, reasoning, z


def listed(names: list[str]) -> str:
    """Variables as an answer: 'A, C', or 'none'."""
    return ", ".join(names) if names else "none"


def ancestors_query(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which variables cause X, directly or through others?"""
    x = rng.choice([n for n in names if ancestors(n, edges)])
    found = ancestors(x, edges)
    reasoning = "\n".join(walk(x, edges, back=True))
    return f"Which variables cause {x}, directly or through other variables?", reasoning, listed(found)


def descendants_query(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which variables does X affect, directly or through others?"""
    x = rng.choice([n for n in names if children(n, edges)])
    found = descendants(x, edges)
    reasoning = "\n".join(walk(x, edges, back=False))
    return f"Which variables are affected by {x}, directly or through other variables?", reasoning, listed(found)


def direct_or_indirect(
    rng: random.Random, names: list[str], edges: list[Edge], want_direct: bool
) -> tuple[str, str, str] | None:
    """Is X a direct or only an indirect cause of Y? (asked where X is a cause of Y)"""
    pairs = [(a, d) for d in names for a in ancestors(d, edges) if ((a, d) in edges) == want_direct]
    if not pairs:
        return None
    x, y = rng.choice(sorted(pairs))
    step = arrows_out_of(x, edges)
    if want_direct:
        reasoning = f"{step}\nThere is an arrow {x} -> {y}, so {x} causes {y} without any variable in between."
    else:
        reasoning = f"{step}\nThere is no arrow {x} -> {y}; {x} acts through the path {' -> '.join(path(x, y, edges))}."
    question = f"Is {x} a direct cause of {y} or only an indirect one? Answer direct or indirect."
    return question, reasoning, "direct" if want_direct else "indirect"


def mediators(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which variables lie on a directed path from X to Y? (asked where there is at least one)"""
    pairs = [
        (x, y) for x in names for y in descendants(x, edges) if set(descendants(x, edges)) & set(ancestors(y, edges))
    ]
    if not pairs:
        return None
    x, y = rng.choice(pairs)
    between = sorted(set(descendants(x, edges)) & set(ancestors(y, edges)))
    reasoning = "\n".join(
        [*walk(x, edges, back=False), *walk(y, edges, back=True), f"Reached both ways: {listed(between)}."]
    )
    question = f"Which variables mediate the effect of {x} on {y}, lying on a directed path from {x} to {y}?"
    return question, reasoning, listed(between)


def colliders(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str] | None:
    """Which variables are directly caused by both X and Y? (asked where at least one is)"""
    pairs = [
        (x, y) for i, x in enumerate(names) for y in names[i + 1 :] if set(children(x, edges)) & set(children(y, edges))
    ]
    if not pairs:
        return None
    x, y = rng.choice(pairs)
    common = sorted(set(children(x, edges)) & set(children(y, edges)))
    reasoning = f"{arrows_out_of(x, edges)}\n{arrows_out_of(y, edges)}\nBoth arrows reach {', '.join(common)}."
    question = f"Which variables are colliders of {x} and {y}, that is, directly caused by both?"
    return question, reasoning, listed(common)


def d_separation(rng: random.Random, names: list[str], edges: list[Edge], want: bool) -> tuple[str, str, str] | None:
    """Are X and Y independent given Z (d-separated)? Balanced yes/no by the caller."""
    candidates = []
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            others = [n for n in names if n not in (x, y)]
            for k in range(min(2, len(others)) + 1):
                for given in itertools.combinations(others, k):
                    if d_separated(x, y, list(given), edges)[0] == want:
                        candidates.append((x, y, list(given)))
    if not candidates:
        return None
    x, y, given = rng.choice(candidates)
    separated, keep, moral = d_separated(x, y, given, edges)
    links = ", ".join(f"{a} - {b}" for a, b in moral)
    observed = f"given {', '.join(given)}" if given else "with nothing observed"
    reasoning = (
        f"Keep {x}, {y}{', ' + ', '.join(given) if given else ''} and their ancestors: {', '.join(keep)}. "
        f"Join parents of a common child and drop directions: {links}. "
        f"With {', '.join(given) or 'nothing'} removed, {x} and {y} are {'not ' if separated else ''}connected."
    )
    condition = f" once we know {', '.join(given)}" if given else ""
    question = f"Are {x} and {y} independent{condition} ({x} and {y} d-separated {observed})? Answer yes or no."
    return question, reasoning, "yes" if separated else "no"


# Rungs 1 and 2: binary variables, P(V=1 | parents) given as tenths; answers by exact enumeration (Fraction).
Cpt = dict[str, dict[tuple[int, ...], Fraction]]


def random_cpt(rng: random.Random, names: list[str], edges: list[Edge]) -> Cpt:
    """P(V=1 | each assignment of V's parents, in sorted order), drawn from 0.1 ... 0.9."""
    return {
        v: {bits: rng.choice(CPT_VALUES) for bits in itertools.product((0, 1), repeat=len(parents(v, edges)))}
        for v in names
    }


def joint(names: list[str], edges: list[Edge], cpt: Cpt, do: dict[str, int] | None = None) -> dict[tuple, Fraction]:
    """The joint distribution by the chain rule over the graph; do={X: x} truncates X's factor (Pearl)."""
    do = do or {}
    table = {}
    for values in itertools.product((0, 1), repeat=len(names)):
        world = dict(zip(names, values, strict=True))
        if any(world[x] != v for x, v in do.items()):
            continue
        p = Fraction(1)
        for v in names:
            if v not in do:
                p1 = cpt[v][tuple(world[u] for u in parents(v, edges))]
                p *= p1 if world[v] else 1 - p1
        table[values] = p
    return table


def probability(names: list[str], table: dict[tuple, Fraction], event: dict[str, int]) -> Fraction:
    """P(event) from a joint table."""
    index = {v: i for i, v in enumerate(names)}
    return sum((p for w, p in table.items() if all(w[index[v]] == x for v, x in event.items())), Fraction(0))


def decimal(p: Fraction, places: int = 4) -> str:
    """An exact decimal when the fraction terminates within `places`, else rounded with '≈'."""
    scaled = p * 10**places
    rounded = math.floor(scaled + Fraction(1, 2))  # half up, as people round (round() on a Fraction goes to even)
    text = f"{rounded / 10**places:.{places}f}".rstrip("0").rstrip(".") or "0"
    return text if scaled.denominator == 1 else f"≈{text}"


def describe_cpt(names: list[str], edges: list[Edge], cpt: Cpt) -> str:
    """The given probabilities, one sentence per variable."""
    sentences = []
    for v in names:
        ps = parents(v, edges)
        if not ps:
            sentences.append(f"P({v}=1) = {decimal(cpt[v][()])}.")
            continue
        terms = [
            f"P({v}=1 | {', '.join(f'{u}={b}' for u, b in zip(ps, bits, strict=True))}) = {decimal(p)}"
            for bits, p in sorted(cpt[v].items(), reverse=True)
        ]
        sentences.append("; ".join(terms) + ".")
    return "All variables are 0 or 1. " + " ".join(sentences)


def small_binary_graph(names: list[str], edges: list[Edge]) -> bool:
    """Numeric questions stay readable: at most 5 variables with at most 2 causes each."""
    return len(names) <= 5 and all(len(parents(v, edges)) <= 2 for v in names)


def association(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str, str] | None:
    """Rung 1: P(Y=1 | X=x) from the given probabilities."""
    if not small_binary_graph(names, edges):
        return None
    cpt = random_cpt(rng, names, edges)
    x, y = rng.sample(names, 2)
    value = rng.choice((0, 1))
    table = joint(names, edges, cpt)
    both, marginal = probability(names, table, {x: value, y: 1}), probability(names, table, {x: value})
    answer = decimal(both / marginal, 3).lstrip("≈")
    reasoning = (
        f"Multiply the given probabilities along the graph and sum over the other variables: "
        f"P({x}={value}, {y}=1) = {decimal(both, 6)} and P({x}={value}) = {decimal(marginal, 6)}, "
        f"so P({y}=1 | {x}={value}) = {decimal(both, 6)} / {decimal(marginal, 6)} = {decimal(both / marginal, 3)}."
    )
    question = f"What is P({y}=1 | {x}={value}), the chance of {y}=1 among cases where {x}={value}? Give 3 decimals."
    return question, reasoning, answer, describe_cpt(names, edges, cpt)


def adjusted(names: list[str], edges: list[Edge], cpt: Cpt, x: str, y: str, value: int) -> tuple[Fraction, list]:
    """Back-door adjustment over X's parents: sum_pa P(Y=1 | X=x, pa) P(pa), with its terms."""
    table, adjust = joint(names, edges, cpt), parents(x, edges)
    total, terms = Fraction(0), []
    for bits in itertools.product((0, 1), repeat=len(adjust)):
        pa = dict(zip(adjust, bits, strict=True))
        p_pa = probability(names, table, pa)
        p_y = probability(names, table, {**pa, x: value, y: 1}) / probability(names, table, {**pa, x: value})
        total += p_y * p_pa
        terms.append((pa, p_y, p_pa))
    return total, terms


def explain_adjustment(x: str, y: str, value: int, total: Fraction, terms: list) -> str:
    """The adjustment formula with its numbers."""
    if not terms[0][0]:
        return f"{x} has no parents, so P({y}=1 | do({x}={value})) = P({y}=1 | {x}={value}) = {decimal(total, 4)}."
    pa_names = ", ".join(terms[0][0])
    parts = [f"({_assignment(pa)}) {decimal(p_y, 4)} x {decimal(p_pa, 4)}" for pa, p_y, p_pa in terms]
    return (
        f"Adjust for the parents of {x} ({pa_names}), which block every back-door path: "
        f"P({y}=1 | do({x}={value})) = sum over {pa_names} of P({y}=1 | {x}={value}, {pa_names}) P({pa_names}) "
        f"= {' + '.join(parts)} = {decimal(total, 4)}."
    )


def _assignment(values: dict[str, int]) -> str:
    return ", ".join(f"{v}={b}" for v, b in values.items())


def intervention_pair(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, Cpt] | None:
    """A cause X of Y (preferably confounded) on a small binary graph, with probabilities."""
    if not small_binary_graph(names, edges):
        return None
    pairs = [(x, y) for y in names for x in ancestors(y, edges)]
    confounded = [(x, y) for x, y in pairs if set(ancestors(x, edges)) & set(ancestors(y, edges))]
    if not pairs:
        return None
    x, y = rng.choice(confounded or pairs)
    return x, y, random_cpt(rng, names, edges)


def intervention_effect(rng: random.Random, names: list[str], edges: list[Edge]) -> tuple[str, str, str, str] | None:
    """Rung 2: P(Y=1 | do(X=x)) by back-door adjustment."""
    chosen = intervention_pair(rng, names, edges)
    if not chosen:
        return None
    x, y, cpt = chosen
    value = rng.choice((0, 1))
    total, terms = adjusted(names, edges, cpt, x, y, value)
    question = (
        f"If we force {x}={value} by intervention, what is the chance that {y}=1, "
        f"P({y}=1 | do({x}={value}))? Give 3 decimals."
    )
    return (
        question,
        explain_adjustment(x, y, value, total, terms),
        decimal(total, 3).lstrip("≈"),
        describe_cpt(names, edges, cpt),
    )


def intervention_raises(
    rng: random.Random, names: list[str], edges: list[Edge], want: bool
) -> tuple[str, str, str, str] | None:
    """Rung 2, yes/no: does forcing X=1 rather than X=0 raise the chance of Y=1? (balanced by the caller)"""
    chosen = intervention_pair(rng, names, edges)
    if not chosen:
        return None
    x, y, cpt = chosen
    (on, on_terms), (off, off_terms) = (adjusted(names, edges, cpt, x, y, v) for v in (1, 0))
    if on == off or (on > off) != want:
        return None
    reasoning = (
        f"{explain_adjustment(x, y, 1, on, on_terms)} {explain_adjustment(x, y, 0, off, off_terms)} "
        f"{decimal(on, 4)} is {'more' if on > off else 'less'} than {decimal(off, 4)}."
    )
    question = f"Does forcing {x}=1 rather than {x}=0 (do({x})) raise the chance that {y}=1? Answer yes or no."
    return question, reasoning, "yes" if on > off else "no", describe_cpt(names, edges, cpt)


# Rung 3: deterministic boolean structural equations; the roots are observed, so abduction is reading them off.
Rule = tuple[str, list[tuple[str, bool]]]  # ("or" | "and", [(parent, negated), ...])


def random_rules(rng: random.Random, names: list[str], edges: list[Edge]) -> dict[str, Rule]:
    """Each caused variable is the OR or the AND of its parents, some of them negated."""
    return {
        v: (rng.choice(("or", "and")), [(u, rng.random() < 0.25) for u in parents(v, edges)])
        for v in names
        if parents(v, edges)
    }


def solve(names: list[str], edges: list[Edge], rules: dict[str, Rule], roots: dict[str, bool], do: dict) -> dict:
    """Every variable's value, in causal order, with do() overriding a variable's own rule."""
    values: dict[str, bool] = {}
    pending = list(names)
    while pending:
        v = next(u for u in pending if all(p in values for p in parents(u, edges)))
        pending.remove(v)
        if v in do:
            values[v] = do[v]
        elif v in roots:
            values[v] = roots[v]
        else:
            op, terms = rules[v]
            bits = [values[u] != negated for u, negated in terms]
            values[v] = any(bits) if op == "or" else all(bits)
    return values


def rule_text(v: str, rule: Rule) -> str:
    """'D = C or not B'."""
    op, terms = rule
    return f"{v} = " + f" {op} ".join(f"not {u}" if negated else u for u, negated in terms)


def truth(values: dict[str, bool], order: list[str]) -> str:
    return ", ".join(f"{v}={int(values[v])}" for v in order)


def counterfactual(rng: random.Random, names: list[str], edges: list[Edge], want: bool) -> tuple | None:
    """Rung 3: given what happened, had X been otherwise, would Y have been true? (balanced by the caller)"""
    if len(names) > 6:
        return None
    rules = random_rules(rng, names, edges)
    roots = {v: rng.random() < 0.5 for v in names if not parents(v, edges)}
    actual = solve(names, edges, rules, roots, {})
    pairs = [(x, y) for x in names for y in descendants(x, edges)]
    options = []
    for x, y in pairs:
        imagined = solve(names, edges, rules, roots, {x: not actual[x]})
        if imagined[y] == want:
            options.append((x, y, imagined))
    if not options:
        return None
    x, y, imagined = rng.choice(options)
    order = _causal_order(names, edges)
    kept = sorted(v for v in roots if v != x)
    given = (
        "Each variable is 1 (true) or 0 (false). The rules are: "
        + "; ".join(rule_text(v, rules[v]) for v in order if v in rules)
        + f". What actually happened: {truth(actual, [v for v in order if v in roots])}."
    )
    downstream = [v for v in order if v in descendants(x, edges)]
    reasoning = (
        f"Actual world from the rules: {truth(actual, order)}. "
        + (f"Keep the observed {truth(actual, kept)}, set " if kept else "Set ")
        + f"{x}={int(not actual[x])} and recompute what {x} affects: {truth(imagined, downstream)}."
    )
    question = f"{y} was {int(actual[y])}. Had {x} been {int(not actual[x])}, would {y} have been 1? Answer yes or no."
    return question, reasoning, "yes" if imagined[y] else "no", given


def _causal_order(names: list[str], edges: list[Edge]) -> list[str]:
    done: list[str] = []
    while len(done) < len(names):
        done.append(next(u for u in sorted(names) if u not in done and all(p in done for p in parents(u, edges))))
    return done


# Verbalisations. Everyday stories use a graph people know; anti-commonsense ones reverse every arrow of it,
# so a model must read the given graph instead of answering from memory. Names never contain one another.
STORIES: dict[str, list[Edge]] = {
    "garden": [
        ("season", "rain"),
        ("season", "sprinkler"),
        ("rain", "wet grass"),
        ("sprinkler", "wet grass"),
        ("wet grass", "slippery path"),
    ],
    "alarm": [
        ("burglary", "alarm"),
        ("earthquake", "alarm"),
        ("alarm", "neighbour calls"),
        ("earthquake", "radio report"),
    ],
    "smoking": [
        ("genotype", "smoking"),
        ("smoking", "tar deposits"),
        ("tar deposits", "lung cancer"),
        ("genotype", "lung cancer"),
    ],
    "exam": [
        ("stress", "sleep"),
        ("sleep", "exam score"),
        ("studying", "knowledge"),
        ("knowledge", "exam score"),
        ("exam score", "graduation"),
    ],
    "traffic": [
        ("rain", "accident"),
        ("rain", "traffic jam"),
        ("accident", "traffic jam"),
        ("traffic jam", "late arrival"),
    ],
    "wildfire": [
        ("lightning", "forest fire"),
        ("drought", "forest fire"),
        ("forest fire", "smoke"),
        ("smoke", "poor air quality"),
    ],
    "winter": [
        ("cold weather", "heating use"),
        ("heating use", "energy bill"),
        ("cold weather", "flu cases"),
        ("flu cases", "sick days"),
    ],
    "orchard": [
        ("sunlight", "plant growth"),
        ("watering", "plant growth"),
        ("plant growth", "harvest"),
        ("harvest", "income"),
    ],
}
VERBALISATIONS = ("letters", "everyday", "anti")
PLACEHOLDERS = "BCDEFGHJ"  # stand-ins while a story is built: never a word of the templates (unlike A or I)


def story_graph(rng: random.Random, anti: bool) -> tuple[str, list[str], list[Edge], dict[str, str]]:
    """A story's graph over placeholder letters, arrows reversed when anti; returns the letter -> name map."""
    story = rng.choice(sorted(STORIES))
    variables = sorted({v for edge in STORIES[story] for v in edge})
    # sorted letters to sorted names: every list sorted by letter comes out sorted by name
    mapping = dict(zip(sorted(rng.sample(PLACEHOLDERS, len(variables))), variables, strict=True))
    letter = {name: key for key, name in mapping.items()}
    edges = sorted((letter[b], letter[a]) if anti else (letter[a], letter[b]) for a, b in STORIES[story])
    return story, sorted(mapping), edges, mapping


def verbalise(value: object, mapping: dict[str, str]) -> object:
    """Placeholder letters -> story names, in text and in nested lists."""
    if isinstance(value, str):
        return re.sub(rf"\b([{PLACEHOLDERS}])\b", lambda m: mapping.get(m[1], m[1]), value)
    if isinstance(value, list):
        return [verbalise(v, mapping) for v in value]
    return value


def trace(names: list[str], edges: list[Edge], reasoning: str, answer: str) -> str:
    """The reference trace in the raw Claire format."""
    graph = "\n".join(f"{a} -> {b}" for a, b in edges)
    return (
        f"<think>\nI write down the causal graph over {', '.join(names)}, then follow the arrows the question needs.\n"
        f"<causality>\n{graph}\n{reasoning}\n</causality>\nThat settles it.\n</think>\nThe answer is {answer}."
    )


def make_row(index: int, seed: int, eval_every: int, queries: str = "sample", verbalisation: str = "letters") -> dict:
    """Row `index`: its own seeded RNG, query type by index, graphs redrawn until the query fits."""
    rng = random.Random(seed * 1_000_003 + index)
    types = QUERY_SETS[queries]
    query_type = types[index % len(types)]
    yes = (index // len(types)) % 2 == 0  # yes/no and direct/indirect questions alternate: balanced answers
    makers: dict[str, Callable] = {
        "direct_causes": direct_causes,
        "root_cause": root_cause,
        "intervention": lambda r, n, e: intervention(r, n, e, want=yes),
        "confounder": confounder,
        "ancestors": ancestors_query,
        "descendants": descendants_query,
        "direct_or_indirect": lambda r, n, e: direct_or_indirect(r, n, e, want_direct=yes),
        "mediators": mediators,
        "colliders": colliders,
        "d_separation": lambda r, n, e: d_separation(r, n, e, want=yes),
        "association": association,
        "intervention_effect": intervention_effect,
        "intervention_raises": lambda r, n, e: intervention_raises(r, n, e, want=yes),
        "counterfactual": lambda r, n, e: counterfactual(r, n, e, want=yes),
    }
    if verbalisation == "mixed":
        verbalisation = VERBALISATIONS[(index // (2 * len(types))) % len(VERBALISATIONS)]
    story, mapping = None, {}
    for _ in range(1000):
        if verbalisation == "letters":
            names, edges = random_dag(rng, SIZES[queries])
        else:
            story, names, edges, mapping = story_graph(rng, anti=verbalisation == "anti")
        made = makers[query_type](rng, names, edges)
        if made:
            break
    else:
        raise ValueError(f"no {verbalisation} graph fits a {query_type} question; use verbalisation=letters")
    question, reasoning, answer, *numbers = made
    given = " ".join([describe(names, edges), *numbers])
    row = {
        "id": f"causal-{index:06d}",
        "split": "eval" if index % eval_every == eval_every - 1 else "train",
        "question": f"{given} {question}",
        "response": trace(names, edges, reasoning, answer),
        "answer": answer,
        "query_type": query_type,
        "rung": RUNGS.get(query_type, 0),
        "given": given,
        "edges": [list(e) for e in edges],
        "verbalisation": verbalisation,
        "story": story,
        "seed": seed,
    }
    return {key: verbalise(value, mapping) for key, value in row.items()} if mapping else row


def generate_rows(
    n: int, seed: int = 0, eval_fraction: float = 1 / 6, queries: str = "sample", verbalisation: str = "letters"
) -> list[dict]:
    """n rows of the query set `queries`, every round(1/eval_fraction)-th one in the eval split."""
    if queries not in QUERY_SETS:
        raise ValueError(f"queries={queries!r} is not a query set; choose one of {sorted(QUERY_SETS)}")
    if verbalisation not in (*VERBALISATIONS, "mixed"):
        raise ValueError(f"verbalisation={verbalisation!r} is not known; choose one of {[*VERBALISATIONS, 'mixed']}")
    if n < 0 or not 0 < eval_fraction < 1:
        raise ValueError(f"n={n}, eval_fraction={eval_fraction}: need n >= 0 and 0 < eval_fraction < 1")
    return [make_row(i, seed, max(2, round(1 / eval_fraction)), queries, verbalisation) for i in range(n)]


def write_jsonl(rows: list[dict], path: Path) -> None:
    """One JSON object per line."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_sample() -> None:
    """Rewrite the shipped sample from its fixed settings (deterministic: the file is the same on every machine)."""
    write_jsonl(generate_rows(SAMPLE_ROWS, seed=0), SAMPLE_PATH)
    print(f"wrote {SAMPLE_ROWS} rows to {SAMPLE_PATH}")
