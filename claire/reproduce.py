"""claire.reproduce: rerun a run from its frozen config and compare the new metrics with the saved ones.

    python -m claire.reproduce experiments/<run_name>/<time> [key=value ...] [--output-dir DIR] [--rtol 0]

The run's resolved config.yaml is the primary config of a new `claire.train` process (Hydra's
`--config-path <run> --config-name config`), written to a new folder: experiments/<run_name>/<time> unless
--output-dir says otherwise; nothing of the old run is touched. Then every number both metrics.json files hold is
compared (timings aside), and the training and evaluation losses (and a GRPO run's reward and KL) step by step;
reproduction.json in the new folder records the comparison. Exit status 0: identical (within --rtol), 1: some
differ, 2: bad input. For a reference run of a published report (reference.json, no metrics.json) the published
trainable-parameter count is compared.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from claire import ClaireError, configs, datafiles, run_folders

TIMINGS = ("runtime", "per_second", "wall_time", "tracker_run_id")  # they differ from run to run on any machine


def check_folder(folder: Path) -> dict:
    """The saved numbers to compare with: metrics.json, else a reference's published counts."""
    if not (folder / "config.yaml").is_file():
        raise ClaireError(f"{folder} has no config.yaml; pass a run folder written by claire.train")
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    if (folder / "reference.json").is_file():
        reference = json.loads((folder / "reference.json").read_text())
        return {"trainable_params": reference.get("trainable_params", {}).get("value")}
    raise ClaireError(f"{folder} has no metrics.json (the run did not finish) nor reference.json; nothing to compare")


def masked_keys(config: dict, prefix: str = "") -> list[str]:
    """Keys whose value the run folder hid as *** (secrets): they must be given again."""
    found = []
    for key, value in config.items():
        if isinstance(value, dict):
            found += masked_keys(value, f"{prefix}{key}.")
        elif value == "***":
            found.append(f"{prefix}{key}")
    return found


def new_folder(folder: Path, output_dir: str | None) -> Path:
    """Where the rerun goes: a fresh folder, never one that exists."""
    config = OmegaConf.load(folder / "config.yaml")
    target = Path(output_dir or f"experiments/{config.get('run_name') or folder.name}/{run_folders.STARTED}")
    if target.exists():
        raise ClaireError(f"--output-dir {target} exists; reproduce into a new folder")
    return target


def rerun(folder: Path, target: Path, overrides: list[str]) -> None:
    """claire.train in a new process, composed from the run's frozen config.yaml."""
    command = [sys.executable, "-m", "claire.train", "--config-path", str(folder.resolve()), "--config-name", "config"]
    # the frozen config has no defaults list: Claire's Hydra settings (conf/hydra/default.yaml) are added back
    command += ["--config-dir", configs.CONFIG_DIR, "+hydra=default", f"output_dir={target}", "resume=false"]
    command += overrides
    print("claire.reproduce:", " ".join(command), flush=True)
    done = subprocess.run(command)
    if done.returncode:
        raise ClaireError(f"the rerun failed (exit {done.returncode}); its folder is {target}")


def comparable(metrics: dict) -> dict[str, float]:
    """The numbers of a metrics.json that a reproduction must match: no timings; losses per step from the history."""
    found = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not any(t in k for t in TIMINGS)}
    for entry in metrics.get("history", []):
        for key in ("loss", "eval_loss", "grad_norm", "reward", "kl"):  # reward and kl: a GRPO run's
            if key in entry and "step" in entry:
                found[f"history.{key}@{entry['step']}"] = entry[key]
    return {k: v for k, v in found.items() if not isinstance(v, bool)}


def compare(saved: dict, new: dict, rtol: float) -> list[dict]:
    """One row per number either run has: saved, new, and whether they agree within rtol."""
    old, now = comparable(saved), comparable(new)
    rows = []
    for key in sorted(set(old) | set(now)):
        a, b = old.get(key), now.get(key)
        same = a is not None and b is not None and (math.isclose(a, b, rel_tol=rtol) or math.isnan(a) and math.isnan(b))
        rows.append({"key": key, "saved": a, "new": b, "same": same or a == b})
    return rows


def table(rows: list[dict]) -> str:
    """The comparison as Markdown, differing rows first."""
    lines = ["| metric | saved | new | same |", "|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["same"], r["key"])):
        lines.append(f"| {row['key']} | {row['saved']} | {row['new']} | {'yes' if row['same'] else 'NO'} |")
    return "\n".join(lines)


def reproduce(folder: Path, overrides: list[str], output_dir: str | None = None, rtol: float = 0.0) -> dict:
    """Rerun the run and compare; returns what reproduction.json holds."""
    saved = check_folder(folder)
    masked = masked_keys(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")))
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    if set(masked) - given:
        raise ClaireError(f"{folder}/config.yaml hides {sorted(set(masked) - given)} as ***; pass them as key=value")
    target = new_folder(folder, output_dir)
    rerun(folder, target, overrides)
    new = json.loads((target / "metrics.json").read_text())
    rows = compare(saved, new, rtol)
    if (folder / "reference.json").is_file():
        rows = [r for r in rows if r["saved"] is not None]  # a reference publishes only some numbers
    result = {"original": str(folder), "rerun": str(target), "overrides": overrides, "rtol": rtol}
    result |= {"identical": all(r["same"] for r in rows), "compared": rows}
    datafiles.write_json(target / "reproduction.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: rerun, print the comparison, exit 0 when identical."""
    parser = argparse.ArgumentParser(prog="python -m claire.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (config.yaml + metrics.json) or a reference run")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the frozen config (e.g. threads=2)")
    parser.add_argument("--output-dir", default=None, help="the new run's folder (experiments/<run_name>/<time>)")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance; 0 = bit-identical numbers")
    opts = parser.parse_args(argv)
    try:
        result = reproduce(opts.run, opts.overrides, opts.output_dir, opts.rtol)
    except ClaireError as error:
        print(f"claire.reproduce: error: {error}", file=sys.stderr)
        return 2
    print(table(result["compared"]))
    differ = sum(not r["same"] for r in result["compared"])
    verdict = "identical" if result["identical"] else f"{differ} of {len(result['compared'])} numbers differ"
    print(f"claire.reproduce: {verdict}; the rerun is {result['rerun']} (reproduction.json)")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
