"""The backend: the separate process that turns control images into pictures. It never
imports bpy; it runs in its own interpreter (a venv Set up Backend makes, any Python with
torch, or a remote server).

Its rooms, each a package whose docstring says what lives there and what it may import
(tests/test_layering.py holds every room to its "May import" line):

* :mod:`.engine`: the sweep core every model family shares, one module per family
  (``engine/families/``), memory profiles, previews, tiled upscaling.
* :mod:`.models`: which weights a job needs and loading them (the registry), the Hugging
  Face hub, the photo/sketch detectors' weights, and the ``tiny`` test models
  (``models/tiny/``, one module per family).
* :mod:`.server`: the HTTP API, the job queue and its worker, connections, output folders,
  pictures sent for a sweep.
* :mod:`.cli`: the ``archviz`` commands that run here: serve, models, upscale, presets.
* :mod:`.train`: training your own ControlNet (``archviz train-controlnet``).
* :mod:`.setup`: what Set up Backend installs (``requirements*.txt``), the torch check it
  runs, and the probe ``archviz doctor`` runs in the backend's Python.

``archviz_controlnet.backend.engine`` still gives ``Engine``, ``EngineOptions``,
``to_uint8`` and the other names ``backend/engine.py`` had (they live in
``engine/runner.py`` now).

May import: core, distributed.
"""
