"""A domain read from an xl.cfg file as stock xl builds it: ``rmrrd plan`` and
``rmrrd check`` with ``--xl-config FILE``.

The file is read as xl 4.17 reads it and turned into the domain libxl would build
(:func:`rmrrd.core.libxl_domain.from_xl_config`, docs/xl-config.md); what xl ignores
or mishandles in it (the ``rdm=`` policy bug among them) goes to stderr, one
``rmrrd COMMAND: warning: FILE:LINE: KEY: ...`` line each, before the command's answer.
"""

from __future__ import annotations

import os
import sys

from rmrrd.core.libxl_domain import LibxlDomain, from_xl_config
from rmrrd.core.xlcfg_file import load_xl_config


def read_xl_config(path: str | os.PathLike[str], command: str) -> LibxlDomain:
    """The domain stock xl and libxl make of ``path``, its warnings printed for ``command``.

    Raises :class:`~rmrrd.errors.InputError` naming file, line and key where xl itself
    would stop; what libxl would refuse is in the domain's ``refusals``.
    """
    prediction = from_xl_config(load_xl_config(path))
    for warning in prediction.warnings:
        print(f"rmrrd {command}: warning: {warning}", file=sys.stderr)
    return prediction.domain
