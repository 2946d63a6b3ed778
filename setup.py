"""The one build step pyproject.toml cannot declare: the man page and bash completion.

Both are generated from the argparse parser (rmrrd/cli_docs.py) into build/cli-docs
before the wheel, or an editable install, is assembled; pyproject.toml's data-files
installs them as share/man/man1/rmrrd.1 and share/bash-completion/completions/rmrrd.
Importing the parser imports the commands, hence the runtime dependencies among the
build requirements.
"""

import sys
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

ROOT = Path(__file__).resolve().parent
GENERATED = ROOT / "build" / "cli-docs"


class build_cli_docs(Command):
    """Write rmrrd.1 and the bash completion from the argparse definitions."""

    description = __doc__
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        sys.path.insert(0, str(ROOT))
        from rmrrd.cli import build_parser
        from rmrrd.cli.docs import write_cli_docs

        write_cli_docs(build_parser(), GENERATED)


class build_with_cli_docs(build):
    sub_commands = [("build_cli_docs", None), *build.sub_commands]


setup(cmdclass={"build": build_with_cli_docs, "build_cli_docs": build_cli_docs})
