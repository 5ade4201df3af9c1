"""The ``archviz`` commands that run in the backend's Python: ``serve``, ``models``,
``upscale`` and ``presets``, one module each with ``add_arguments(parser)`` and
``run(args)`` (cli.py's COMMANDS finds them by name).

May import: core, backend.engine, backend.models, backend.server, distributed.options.
"""
