"""The server: the HTTP API and what stands behind it.

* :mod:`.app`: the FastAPI app (``create_app``), routes under ``/v1``, JSON and PNG only.
* :mod:`.worker`: job records, the queue, and the one worker thread that owns the GPU.
* :mod:`.connections`: uvicorn's protocol with request-head timeouts and a connection cap.
* :mod:`.outputs`: output folders, PNGs with metadata, the manifest and contact sheet.
* :mod:`.picture`: a photo or sketch sent for a sweep, checked and fitted to a model's size.

May import: core, backend.engine, backend.models.
"""
