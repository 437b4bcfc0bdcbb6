"""Tooling for this repository, not part of the installed library: doc-section writing for ``bench/`` and
``experiments/``, the teacher probe of ``experiments/study.py``. May import ``hdhkd_monai``; the library never imports
this package."""
