"""Build hook: ship the repository's ``prompts/*.yaml`` inside the package as ``mtrec/prompts/default/``.

The top-level ``prompts/`` folder stays the one copy people edit; every build (wheel, ``pip install
.``) copies it into the built package, so an installed mtrec finds its templates with
``importlib.resources``. An editable install reads ``prompts/`` in the checkout directly. Everything
else about the build is declared in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROMPTS = Path(__file__).resolve().parent / "prompts"
TARGET = ("mtrec", "prompts", "default")


class build_py_with_prompts(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # the checkout's prompts/ is read in place
            return
        target = Path(self.build_lib, *TARGET)
        self.mkpath(str(target))
        for src in self._prompt_files():
            self.copy_file(str(src), str(target / src.name), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        target = Path(self.build_lib, *TARGET)
        return super().get_outputs(include_bytecode) + [str(target / p.name) for p in self._prompt_files()]

    @staticmethod
    def _prompt_files() -> list[Path]:
        files = sorted(PROMPTS.glob("*.yaml"))
        if not files:
            raise SystemExit(f"error: no prompt templates in {PROMPTS}; the package would ship without them")
        return files


setup(cmdclass={"build_py": build_py_with_prompts})
