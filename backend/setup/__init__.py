"""Setting the backend up and checking it.

* ``requirements.txt``: what Set up Backend (core/backend_setup.py) installs into the
  backend's venv after torch; ``requirements-nodeps.txt``: controlnet_aux, installed with
  ``--no-deps`` (the Makefile does the same for the project venv).
* ``torch_check.py``: run as a script by Set up Backend in the new venv; imports nothing of
  this package.
* :mod:`.probe`: ``python -m archviz_controlnet.backend.setup.probe``, run by ``archviz
  doctor`` (core/doctor.py) in the backend's Python.

May import: core, backend.models, backend.cli.models.
"""
