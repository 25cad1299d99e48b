"""The embedded sample generator: reproducible, well-formed, and every answer right by brute force."""

import itertools
import json
import re
from collections import Counter
from fractions import Fraction

import pytest

from claire.causal.questions import SAMPLE_PATH, SAMPLE_ROWS, STORIES, STRUCTURE_TYPES, generate_rows
from claire.traces import split_trace

ROWS = [json.loads(line) for line in SAMPLE_PATH.read_text().splitlines()]


def closure(edges):
    """Transitive closure by repeated composition: the (ancestor, descendant) pairs."""
    reach = {tuple(e) for e in edges}
    while True:
        more = {(a, d) for (a, b), (c, d) in itertools.product(reach, reach) if b == c} - reach
        if not more:
            return reach
        reach |= more


def variables(row):
    return sorted(row["question"].split("the variables ")[1].split(".")[0].split(", "))


def test_the_shipped_file_is_what_the_generator_writes(tmp_path):
    from claire.causal.questions import write_jsonl

    write_jsonl(generate_rows(SAMPLE_ROWS, seed=0), tmp_path / "s.jsonl")
    assert (tmp_path / "s.jsonl").read_bytes() == SAMPLE_PATH.read_bytes()


def test_seeds():
    assert generate_rows(20, seed=1) == generate_rows(20, seed=1)
    assert generate_rows(20, seed=1) != generate_rows(20, seed=2)


def test_splits_ids_and_balance():
    assert Counter(r["split"] for r in ROWS) == {"train": 200, "eval": 40}
    assert len({r["id"] for r in ROWS}) == len(ROWS)
    types = Counter(r["query_type"] for r in ROWS)
    assert set(types) == {"direct_causes", "root_cause", "intervention", "confounder"}
    assert min(types.values()) >= 0.15 * len(ROWS)
    yes_no = Counter(r["answer"] for r in ROWS if r["query_type"] == "intervention")
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.2 * sum(yes_no.values())


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_row_is_well_formed_and_right(row):
    parts = split_trace(row["response"])  # raises on any malformed trace
    assert parts["answer"] == f"The answer is {row['answer']}."
    edges = [tuple(e) for e in row["edges"]]
    names = variables(row)
    assert 3 <= len(names) <= 6 and {v for e in edges for v in e} <= set(names)
    reach = closure(edges)
    assert not any((v, v) in reach for v in names)  # acyclic
    graph_lines = [line for line in parts["causality"].splitlines() if " -> " in line and len(line) <= 6]
    assert graph_lines == [f"{a} -> {b}" for a, b in edges]
    for a, b in edges:
        assert f"{a} causes {b}" in row["question"]
    q, answer = row["question"], row["answer"]
    if row["query_type"] == "direct_causes":
        x = q.rsplit("directly cause ", 1)[1].rstrip("?")
        assert answer == ", ".join(sorted(a for a, b in edges if b == x))
    elif row["query_type"] == "root_cause":
        x = q.rsplit("root causes of ", 1)[1].split(",")[0]
        roots = sorted(a for a, d in reach if d == x and not any(e[1] == a for e in edges))
        assert answer == ", ".join(roots) and roots
    elif row["query_type"] == "intervention":
        x, y = q.split("(do(")[1].split(")")[0], q.split("can that change ")[1].split("?")[0]
        assert answer == ("yes" if (x, y) in reach else "no")
    else:
        x, y = q.split("confounder) of ")[1].split(",")[0].split(" and ")
        common = {a for a, b in edges if b == x} & {a for a, b in edges if b == y}
        assert common == {answer}


STRUCTURE = generate_rows(600, seed=7, queries="structure")


def d_separated_by_paths(x, y, given, edges):
    """Independent check: every undirected path from x to y is blocked (a collider outside Z and its
    descendants, or a non-collider in Z)."""
    reach = closure(edges)
    neighbours = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)

    def blocked(route):
        for prev, mid, nxt in zip(route, route[1:], route[2:], strict=False):
            collider = (prev, mid) in edges and (nxt, mid) in edges
            opened = mid in given or any((mid, d) in reach for d in given)
            if (collider and not opened) or (not collider and mid in given):
                return True
        return False

    def routes(route):
        if route[-1] == y:
            yield route
            return
        for n in sorted(neighbours.get(route[-1], ())):
            if n not in route:
                yield from routes([*route, n])

    return all(blocked(r) for r in routes([x]))


def answer_set(row):
    return set() if row["answer"] == "none" else set(row["answer"].split(", "))


@pytest.mark.parametrize("row", STRUCTURE, ids=[r["id"] for r in STRUCTURE])
def test_structure_row_is_right_by_brute_force(row):
    split_trace(row["response"])
    edges = [tuple(e) for e in row["edges"]]
    reach = closure(edges)
    names = variables(row)
    assert 3 <= len(names) <= 8
    q, kind = row["question"], row["query_type"]
    if kind == "ancestors":
        x = q.split("Which variables cause ")[1].split(",")[0]
        assert answer_set(row) == {a for a, d in reach if d == x}
    elif kind == "descendants":
        x = q.split("affected by ")[1].split(",")[0]
        assert answer_set(row) == {d for a, d in reach if a == x}
    elif kind == "direct_or_indirect":
        x, y = q.split("Is ")[1].split(" a direct cause of ")
        y = y.split(" or ")[0]
        assert (x, y) in reach and row["answer"] == ("direct" if (x, y) in edges else "indirect")
    elif kind == "mediators":
        x, y = q.split("effect of ")[1].split(",")[0].split(" on ")
        assert answer_set(row) == {m for m in names if (x, m) in reach and (m, y) in reach} != set()
    elif kind == "colliders":
        x, y = q.split("colliders of ")[1].split(",")[0].split(" and ")
        assert answer_set(row) == {c for c in names if (x, c) in edges and (y, c) in edges} != set()
    else:
        x, y = q.split("Are ")[1].split(" independent")[0].split(" and ")
        given = q.split("once we know ")[1].split(" (")[0].split(", ") if "once we know" in q else []
        assert row["answer"] == ("yes" if d_separated_by_paths(x, y, given, edges) else "no")


STEP = re.compile(r"^(Into|Out of) (\w+): (.*)\.$")
REACHED = re.compile(r"^Reached (back|forward) from (\w+): (.*)\.$")


@pytest.mark.parametrize("row", [*ROWS, *STRUCTURE], ids=[r["id"] for r in [*ROWS, *STRUCTURE]])
def test_every_written_step_of_the_reasoning_is_true(row):
    """The reference derivation a model copies: each 'Into V' / 'Out of V' line lists exactly V's arrows, and each
    'Reached' line is the full set of ancestors or descendants (by transitive closure, not the generator's search)."""
    edges = {tuple(e) for e in row["edges"]}
    reach = closure(edges)
    steps = 0
    for line in split_trace(row["response"])["causality"].splitlines():
        if m := STEP.match(line):
            kind, v, listed = m.groups()
            arrows = set() if listed == "none" else {tuple(a.split(" -> ")) for a in listed.split(", ")}
            assert arrows == {e for e in edges if e[1 if kind == "Into" else 0] == v}, line
            steps += 1
        elif m := REACHED.match(line):
            way, v, listed = m.groups()
            found = set() if listed == "none" else set(listed.split(", "))
            assert found == {a if way == "back" else d for a, d in reach if (d if way == "back" else a) == v}, line
    assert steps or row["query_type"] == "d_separation"  # every other sample and structure query shows its arrows


def test_structure_answers_are_balanced():
    for kind in ("d_separation", "direct_or_indirect"):
        answers = Counter(r["answer"] for r in STRUCTURE if r["query_type"] == kind)
        assert len(answers) == 2 and max(answers.values()) - min(answers.values()) <= 1
    assert Counter(r["query_type"] for r in STRUCTURE) == {t: 100 for t in STRUCTURE_TYPES}


def test_bad_generator_parameters_say_what_is_allowed():
    with pytest.raises(ValueError, match="queries='rung9' is not a query set; choose one of"):
        generate_rows(5, queries="rung9")
    with pytest.raises(ValueError, match="need n >= 0 and 0 < eval_fraction < 1"):
        generate_rows(5, eval_fraction=1.5)


LADDER = generate_rows(300, seed=11, queries="ladder")


def cpt_from_text(question):
    """The given probabilities read back from the question: {(var, ((parent, bit), ...)): p}."""
    table = {}
    for var, condition, p in re.findall(r"P\((\w)=1(?: \| ([^)]*))?\) = ([0-9]+(?:\.[0-9]+)?)", question):
        bits = tuple(sorted((u, int(b)) for u, b in re.findall(r"(\w)=(\d)", condition or "")))
        table[(var, bits)] = Fraction(p)
    return table


def enumerate_worlds(names, edges, cpt, do=None):
    """Brute force over all 0/1 worlds, mutilating the graph for do(): P(world)."""
    do = do or {}
    for values in itertools.product((0, 1), repeat=len(names)):
        world = dict(zip(names, values, strict=True))
        if any(world[x] != v for x, v in do.items()):
            continue
        p = Fraction(1)
        for v in names:
            if v in do:
                continue
            p1 = cpt[(v, tuple(sorted((a, world[a]) for a, b in edges if b == v)))]
            p *= p1 if world[v] else 1 - p1
        yield world, p


def chance(names, edges, cpt, event, given=None, do=None):
    worlds = list(enumerate_worlds(names, edges, cpt, do))
    given = given or {}
    hits = sum(p for w, p in worlds if all(w[k] == v for k, v in {**event, **given}.items()))
    return hits / sum(p for w, p in worlds if all(w[k] == v for k, v in given.items()))


NUMERIC = [r for r in LADDER if r["rung"] in (1, 2)]


@pytest.mark.parametrize("row", NUMERIC, ids=[r["id"] for r in NUMERIC])
def test_ladder_row_is_right_by_enumeration(row):
    split_trace(row["response"])
    edges, names, q = [tuple(e) for e in row["edges"]], variables(row), row["question"]
    cpt = cpt_from_text(q)
    assert len(cpt) == sum(2 ** sum(b == v for _, b in edges) for v in names)  # every number is given
    if row["query_type"] == "association":
        y, x, value = re.search(r"What is P\((\w)=1 \| (\w)=(\d)\)", q).groups()
        expected = chance(names, edges, cpt, {y: 1}, given={x: int(value)})
        assert row["rung"] == 1 and abs(float(row["answer"]) - float(expected)) <= 0.0005
    elif row["query_type"] == "intervention_effect":
        y, x, value = re.search(r"P\((\w)=1 \| do\((\w)=(\d)\)\)\?", q).groups()
        expected = chance(names, edges, cpt, {y: 1}, do={x: int(value)})  # the mutilated graph, no adjustment
        assert row["rung"] == 2 and abs(float(row["answer"]) - float(expected)) <= 0.0005
    else:
        x, y = re.search(r"Does forcing (\w)=1 rather than \w=0 \(do\(\w\)\) raise the chance that (\w)=1", q).groups()
        on, off = (chance(names, edges, cpt, {y: 1}, do={x: v}) for v in (1, 0))
        assert row["rung"] == 2 and row["answer"] == ("yes" if on > off else "no") and on != off


def test_ladder_yes_no_is_balanced_and_confounding_is_common():
    for kind in ("intervention_raises", "counterfactual"):
        answers = Counter(r["answer"] for r in LADDER if r["query_type"] == kind)
        assert abs(answers["yes"] - answers["no"]) <= 1
    assert Counter(r["rung"] for r in LADDER) == {1: 75, 2: 150, 3: 75}
    adjusted = [r for r in LADDER if r["rung"] == 2 and "back-door" in r["response"]]
    assert len(adjusted) >= 0.5 * sum(r["rung"] == 2 for r in LADDER)


def test_association_differs_from_intervention_under_confounding():
    # the point of rung 2: with a confounder, seeing X is not doing X
    names, edges = ["X", "Y", "Z"], [("X", "Y"), ("Z", "X"), ("Z", "Y")]
    cpt = {
        ("Z", ()): Fraction(1, 2),
        ("X", (("Z", 0),)): Fraction(1, 10),
        ("X", (("Z", 1),)): Fraction(9, 10),
        **{("Y", (("X", x), ("Z", z))): Fraction(1 + 2 * z + x, 10) for x in (0, 1) for z in (0, 1)},
    }
    seen = chance(names, edges, cpt, {"Y": 1}, given={"X": 1})
    done = chance(names, edges, cpt, {"Y": 1}, do={"X": 1})
    assert seen == Fraction(2 * 9 * 4 + 2 * 1 * 2, 10 * 20) and done == Fraction(3, 10) and seen != done


def evaluate_rules(question, edges, roots, do):
    """Independent reading of the structural equations from the question text, evaluated to a fixed point."""
    rules = dict(re.findall(r"(\w) = ([\w ]+?)(?=;|\. What)", question))
    values = {**roots, **do}
    for _ in range(len(rules) + 1):
        for v, expr in rules.items():
            if v in do:
                continue
            terms = re.split(r" (and|or) ", expr)
            op = terms[1] if len(terms) > 1 else "or"
            known = [t for t in terms[::2] if t.removeprefix("not ") in values]
            if len(known) == len(terms[::2]):
                bits = [values[t[4:]] == 0 if t.startswith("not ") else values[t] == 1 for t in known]
                values[v] = int(any(bits) if op == "or" else all(bits))
    return values


@pytest.mark.parametrize("row", [r for r in LADDER if r["query_type"] == "counterfactual"])
def test_counterfactual_row_is_right_by_its_equations(row):
    q, edges = row["question"], [tuple(e) for e in row["edges"]]
    roots = {v: int(b) for v, b in re.findall(r"(\w)=(\d)", q.split("What actually happened: ")[1].split(".")[0])}
    y, y_actual, x, x_new = re.search(r"(\w) was (\d)\. Had (\w) been (\d)", q).groups()
    actual = evaluate_rules(q, edges, roots, {})
    assert actual[y] == int(y_actual) and actual[x] != int(x_new)
    imagined = evaluate_rules(q, edges, {k: v for k, v in roots.items() if k != x}, {x: int(x_new)})
    assert row["rung"] == 3 and row["answer"] == ("yes" if imagined[y] else "no")
    assert set(evaluate_rules(q, edges, roots, {})) == set(variables(row))  # every variable has a rule or a value


VERBAL = {v: generate_rows(240, seed=5, queries="all", verbalisation=v) for v in ("everyday", "anti")}


def unverbalise(row):
    """Story names back to letters (longest first), so the letter checks above apply unchanged."""
    letters = dict(zip(sorted({v for edge in STORIES[row["story"]] for v in edge}), "BCDEFGHJ", strict=False))
    names = sorted(letters, key=len, reverse=True)

    def back(value):
        if isinstance(value, list):
            return [back(v) for v in value]
        if not isinstance(value, str):
            return value
        for name in names:
            value = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", letters[name], value)
        return value

    return {key: back(value) for key, value in row.items()}


@pytest.mark.parametrize("verbalisation", ["everyday", "anti"])
def test_verbalised_rows_are_right(verbalisation):
    rows = VERBAL[verbalisation]
    assert {r["verbalisation"] for r in rows} == {verbalisation} and len({r["story"] for r in rows}) >= 6
    for row in rows:
        letters = unverbalise(row)
        if row["rung"] == 3:
            test_counterfactual_row_is_right_by_its_equations(letters)
        elif row["rung"] in (1, 2) and row["query_type"] != "intervention":
            test_ladder_row_is_right_by_enumeration(letters)
        elif row["query_type"] in STRUCTURE_TYPES:
            test_structure_row_is_right_by_brute_force(letters)
        else:
            test_row_is_well_formed_and_right(letters)


def test_anti_commonsense_reverses_every_everyday_arrow():
    for verbalisation, flip in (("everyday", False), ("anti", True)):
        for row in VERBAL[verbalisation]:
            everyday = set(STORIES[row["story"]])
            assert {(b, a) if flip else (a, b) for a, b in row["edges"]} == everyday, row["id"]


def test_mixed_verbalisation_cycles_through_all_three():
    rows = generate_rows(120, seed=1, queries="structure", verbalisation="mixed")
    assert Counter(r["verbalisation"] for r in rows) == {"letters": 48, "everyday": 36, "anti": 36}
