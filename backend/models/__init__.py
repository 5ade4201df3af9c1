"""Models: which weights a job needs, where they come from, and loading them.

* :mod:`.registry`: a job's model spec -> concrete references (hub ids, local folders,
  single files), :class:`~.registry.ModelCache` (warm pipelines and ControlNets, evicted by
  a memory budget), the ``archviz models`` catalog.
* :mod:`.hub`: whole Hugging Face snapshots, only the files the pipeline loads, with a disk
  check and progress.
* :mod:`.preprocess`: the detectors that turn a photo or a sketch into a control image, and
  their weights. :mod:`.qwen_processor`: Qwen-Image-Edit's picture processor.
* :mod:`.tiny`: the tiny test models (seeded random weights, the real architectures shrunk),
  the store and the SD 1.5 / SDXL / FLUX.1 builders in the package, one module per other
  family (:mod:`.tiny.qwen`, :mod:`.tiny.zimage`, :mod:`.tiny.edit`) and fast mode's
  (:mod:`.tiny.fast`), the way ``engine/families/`` is laid out.

It reads the family table (:mod:`..engine.families.registry`) and the reference models' facts
beside it (:mod:`..engine.families.reference_models`), neither of which imports torch, and
nothing else of the engine.

May import: core, backend.engine.families.registry, backend.engine.families.reference_models.
"""
