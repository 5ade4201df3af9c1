"""Everything on the Blender side that is not an operator or a panel: the code that
touches ``bpy`` (and stdlib, numpy and ``core``), never torch, never the backend.

A sweep reads in one direction: the scene (``sweeping.resolve_cameras``) -> its control
passes (``capture``) -> the jobs (``sweeping.prepare_jobs``, ``core.sweep``) -> the
client and the backend it launches (``backend``) -> the images in Blender (``results``).
Operators and panels call into this package; nothing here imports them.
"""
