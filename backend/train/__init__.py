"""Training your own ControlNet: :mod:`.controlnet` (``archviz train-controlnet``) trains one
on the pairs ``archviz dataset`` renders, frozen base, zero convolutions.

May import: core, backend.engine, backend.models, backend.server.outputs.
"""
