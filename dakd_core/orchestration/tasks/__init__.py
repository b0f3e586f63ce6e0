"""The logic of each pipeline task, one module per stage, as plain functions `<stage>_task(...)`.

They build the stage's config from pipeline parameters, call the `dakd_core` entry point inside the
tracking context, and return plain values (pinned URIs, metrics). The KFP wrappers in components/
only call them. No kfp import here: at task run time KFP's executor loads kfp in runtime mode,
where the component decorators do not exist.
"""
