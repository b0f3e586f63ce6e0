"""KFP components of the dakd pipeline, one file per stage.

Each file holds a plain `<stage>_task(...)` function (the logic: builds the stage's config, calls
the `dakd_core` entry point, returns plain values; unit-tested without KFP) and a `@dsl.component`
wrapper that only imports and calls it and turns its result into KFP outputs. Images: see _base.py.
"""
