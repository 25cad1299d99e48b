"""Configs as data: resolved and masked for saving, compared key by key, and which keys define an experiment."""

import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# The config folder of the four commands: claire/conf in an installed wheel (setup.py copies it there), else the
# checkout's top-level conf/ (a checkout or an editable install; the design keeps conf/ at the top of the repository).
PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONFIG_DIR: str = str(PACKAGED_CONF if PACKAGED_CONF.is_dir() else Path(__file__).resolve().parents[1] / "conf")
# secret-looking keys (hf_token, api_key, ...), not the names of tokens (end_token, max_tokens)
SECRET_KEY = re.compile(r"secret|password|api_?key|^(?:hf_|hub_|auth_|access_|api_)?token$", re.IGNORECASE)
# values that look like credentials: the prefixes of OpenAI, Hugging Face, GitHub, Slack, AWS and wandb keys
SECRET_VALUE = re.compile(
    r"(?:sk-|hf_|gh[pousr]_|github_pat_|xox[abpr]-|wandb_v1_)[A-Za-z0-9_\-]{16,}|AKIA[0-9A-Z]{16}|[0-9a-f]{40}"
)
# where and how a run was started, not what it computes: a resumed run may differ from its record in these
HOW_STARTED = ("output_dir", "resume", "dry_run", "memory_check")
# runs differing only in these (and HOW_STARTED) are seeds of one experiment: same settings, same measurement
NOT_THE_EXPERIMENT = (*HOW_STARTED, "seed", "threads", "tracking", "preview_examples", "push_to_hub")


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data with interpolations resolved and anything secret-looking masked."""
    return mask(OmegaConf.to_container(cfg, resolve=True))


def mask(tree: Any) -> Any:
    """Plain data with the values of secret-looking keys replaced by ***."""
    if isinstance(tree, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) and v else mask(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [mask(v) for v in tree]
    return tree


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}


def differences(saved: dict, now: dict, ignored: tuple[str, ...] = HOW_STARTED, shared_only: bool = False) -> list[str]:
    """Dotted keys whose values differ between two plain configs, leaving out the top-level keys `ignored`;
    shared_only: only keys both have (a key only one has was added or removed by another version of Claire)."""
    flat_saved, flat_now = flatten(saved), flatten(now)
    keys = set(flat_saved) & set(flat_now) if shared_only else set(flat_saved) | set(flat_now)
    return sorted(k for k in keys if k.split(".")[0] not in ignored and flat_saved.get(k) != flat_now.get(k))


def experiment(config: dict) -> dict:
    """The part of a run's config that defines its experiment (everything but NOT_THE_EXPERIMENT)."""
    return {k: v for k, v in config.items() if k not in NOT_THE_EXPERIMENT}


def same_experiment(a: dict, b: dict) -> bool:
    """Whether two runs' configs define one experiment: equal on every setting both have, seeds and places aside
    (so a run saved before a newer Claire added a setting still joins the runs saved after)."""
    return not differences(a, b, ignored=NOT_THE_EXPERIMENT, shared_only=True)


def mask_text(text: str) -> str:
    """Text with anything that looks like a credential replaced by ***."""
    return SECRET_VALUE.sub("***", text)


def secret_override(overrides: list[str]) -> str | None:
    """Why the first command-line override carrying a secret is refused (the value is never repeated), else None."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        name = key.split(".")[-1]
        if name == "key_env" and SECRET_VALUE.search(value):
            return f"{key}= takes the name of the variable holding the key, not the key itself; {key}=OPENAI_API_KEY"
        if SECRET_KEY.search(name) and value not in ("", "null") or SECRET_VALUE.search(value):
            stored = "where shell history and run records keep it"
            return f"{key}=... puts a secret on the command line, {stored}; {where_secrets_go(key)}"
    return None


def where_secrets_go(key: str) -> str:
    """Which environment variable a secret passed as `key` belongs in."""
    group = key.rsplit(".", 1)[0] if "." in key else None
    if "token" in key.lower() and group is None:
        return "export HF_TOKEN instead (Claire reads secrets only from the environment)"
    if group in ("api", "judge", "backend"):
        return f"export it and name the variable with {group}.key_env (e.g. OPENAI_API_KEY)"
    return "export it as an environment variable instead (Claire reads secrets only from the environment)"


class RefuseSecrets(Callback):
    """Hydra callback: refuse a secret on the command line before Hydra or Claire writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before a single run."""
        self.refuse(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before a sweep."""
        self.refuse(config)

    @staticmethod
    def refuse(config: DictConfig) -> None:
        """Exit with one line when an override carries a secret."""
        reason = secret_override(list(config.hydra.overrides.task))
        if reason:
            raise SystemExit(f"claire.{config.hydra.job.name}: error: {reason}")


def recomposed(config_name: str, *extra: str) -> DictConfig:
    """Inside a Hydra run: this run's config composed again with the same overrides plus `extra`."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    return compose(config_name=config_name, overrides=[*HydraConfig.get().overrides.task, *extra])
