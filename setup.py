"""The design keeps conf/ at the top of the repository; the wheel carries it as claire/conf (claire.configs.CONFIG_DIR).

Metadata lives in pyproject.toml; this file only adds that copy to build_py. An editable install copies nothing and
keeps reading the repository's conf/.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    """build_py, plus every conf/**/*.yaml copied to <build_lib>/claire/conf."""

    def conf_files(self) -> dict[Path, Path]:
        """Source -> destination of each config file."""
        target = Path(self.build_lib) / "claire" / "conf"
        return {path: target / path.relative_to(CONF) for path in sorted(CONF.rglob("*.yaml"))}

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (CONF / "train.yaml").is_file():
            raise FileNotFoundError(f"{CONF} has no train.yaml: build from a checkout (or an sdist) that has conf/")
        for source, destination in self.conf_files().items():
            self.mkpath(str(destination.parent))
            self.copy_file(str(source), str(destination))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [str(d) for d in self.conf_files().values()]


setup(cmdclass={"build_py": BuildPyWithConf})
