"""Claire's trace format: the tags a teacher writes, the markers a model is trained on, and the conversion between them.

A raw trace is `<think> A <causality> B </causality> C </think> D` (the founding report, section 3.2). The report's
preprocessing turns the tags into ChatML markers (`<|im_start|>think`, `<|im_start|>causality`) and drops the closing
ones (markers=native); markers=special keeps the tags as added special tokens instead (the Llama configs).
"""

TRACE_TAGS = ("<think>", "</think>", "<causality>", "</causality>")  # also the special tokens of markers=special
NATIVE_MARKERS = {"think": "<|im_start|>think", "causality": "<|im_start|>causality", "answer": "<|im_start|>answer"}
MARKER_STYLES = ("native", "special")


class MalformedTrace(ValueError):
    """A raw trace that cannot be converted; its message is the drop reason."""


def split_trace(response: str) -> dict[str, str]:
    """Cut '<think>A<causality>B</causality>C</think>D' into its parts; raise MalformedTrace(reason)."""
    if not response or not response.strip():
        raise MalformedTrace("empty")
    counts = {tag: response.count(tag) for tag in TRACE_TAGS}
    if any(n > 1 for n in counts.values()) or len(set(counts.values())) > 1:
        raise MalformedTrace("unbalanced_tags")
    if counts["<think>"] == 0:
        raise MalformedTrace("missing_tags")
    positions = [response.index(tag) for tag in ("<think>", "<causality>", "</causality>", "</think>")]
    if positions != sorted(positions) or response[: positions[0]].strip():
        raise MalformedTrace("misnested_tags")
    before, rest = response.split("<think>", 1)[1].split("<causality>", 1)
    causality, rest = rest.split("</causality>", 1)
    after, answer = rest.split("</think>", 1)
    if not answer.strip():
        raise MalformedTrace("no_answer")
    if not causality.strip():
        raise MalformedTrace("empty_causality")
    return {
        k: v.strip()
        for k, v in zip(("think", "causality", "after", "answer"), (before, causality, after, answer), strict=True)
    }


def convert_trace(response: str, markers: str = "native") -> str:
    """The report's conversion: tags become ChatML markers (native) or stay as new special tokens (special)."""
    parts = split_trace(response)
    if markers == "special":
        lines = ["<think>", parts["think"], "<causality>", parts["causality"], "</causality>", parts["after"]]
        lines += ["</think>", parts["answer"]]
    else:
        lines = [NATIVE_MARKERS["think"], parts["think"], NATIVE_MARKERS["causality"], parts["causality"]]
        lines += [parts["after"], NATIVE_MARKERS["answer"], parts["answer"]]
    return "\n".join(line for line in lines if line)
