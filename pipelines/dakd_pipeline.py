"""The dakd DAG:

    start (MLflow parent run) ─┬─ ingest source ∥ ingest target
                               ├─ pretrain teacher ∥ pretrain student          (source only)
                               ├─ adapt teacher ∥ adapt student                (AdaptSegNet / ADVENT)
                               ├─ cache-teacher: ParallelFor shard slices → index fan-in
                               ├─ distill (paradigm; for d: c first, then d initialised from c)
                               ├─ export → evaluate (5 models + FP16 export, one table)
                               └─ register → promote                  exit handler: finish parent run

The parameters (names, form types, defaults, descriptions) and the pipeline's description (the
parameter guide) come from dakd_core.orchestration.params.PipelineParams (one source of truth).
Kubernetes settings (GPU, shm, tolerations, secrets) are ignored by kfp.local with a warning, so
`dakd run` executes this very function on a laptop.
"""

import inspect
import os

from google.protobuf import struct_pb2
from kfp import dsl, kubernetes
from kfp.dsl import Input, Model

from components.adapt import adapt
from components.cache_teacher import cache_teacher_index, cache_teacher_shard
from components.distill import distill, passthrough
from components.evaluate import evaluate
from components.export import export
from components.ingest import ingest
from components.pretrain import pretrain
from components.register import promote, register
from components.start import finish, start
from dakd_core.orchestration.params import (PipelineParams, form_choices, form_guide, form_type, form_values,
                                            pipeline_docstring)
from pipelines import _fast_tasks

_fast_tasks.install()  # before the @dsl.pipeline decorators below build the graph

PIPELINE_NAME = "dakd"
# kfp.local honours retries (with their back-off): `dakd run` sets this before importing the
# pipeline, so a failure on a laptop shows at once instead of after minutes of retries.
LOCAL_RUN_ENV = "DAKD_LOCAL_RUN"
# Teacher-cache shard slices, fixed at compile time: kfp.local cannot fan out over a task's
# output list inside the exit handler, and a static fan-out compiles to the same IR either way.
CACHE_SHARDS = int(os.environ.get("DAKD_CACHE_SHARDS", "4"))

# Secrets the tasks read as env (k8s/secrets/): object store and MLflow client settings.
S3_SECRET = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
             "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"}
MLFLOW_SECRET = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                 "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")  # set by NVIDIA GPU feature discovery
IMAGE_UID = 1000  # docker/Dockerfile.{cuda,cpu}: USER 1000


def _platform(task: dsl.PipelineTask, cache: bool = True) -> dsl.PipelineTask:
    """Credentials from Kubernetes secrets (never parameters); caching only for pure tasks; the
    images' non-root user, which the "restricted" Pod Security Standard needs (KFP >= 2.16 sets
    seccomp, no privilege escalation and dropped capabilities itself: docs/cluster.md)."""
    kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)
    kubernetes.use_secret_as_env(task, "dakd-s3", S3_SECRET)
    kubernetes.use_secret_as_env(task, "dakd-mlflow", MLFLOW_SECRET)
    task.set_env_variable("DAKD_NO_PROGRESS", "1")  # tqdm bars garble pod logs
    task.set_caching_options(cache)
    return task


def _gpu(task: dsl.PipelineTask, gpus=1, cpu: str = "8", memory: str = "48Gi", retries: int = 2) -> dsl.PipelineTask:
    """A training/inference task: `gpus` GPUs (a pipeline parameter) on the GPU pool, memory-backed
    /dev/shm for DataLoader workers, retried (preemptible nodes, transient store errors; stages
    resume from checkpoints). KFP's retry policy cannot tell error kinds apart: a ConfigError or
    DataError is recorded by the task and a retry re-raises it at once (tasks/common.py)."""
    _platform(task)
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="16Gi")
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
    _retry(task, retries)
    return task


def _retry(task: dsl.PipelineTask, retries: int) -> None:
    if os.environ.get(LOCAL_RUN_ENV) != "1":
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)


def _cpu(task: dsl.PipelineTask, cache: bool = True, cpu: str = "2", memory: str = "4Gi") -> dsl.PipelineTask:
    _platform(task, cache)
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    return task


@dsl.pipeline(name="cache-teacher", description="Teacher cache: one task per shard slice, then the index")
def cache_teacher_fanout(config: str, teacher: Input[Model], source_manifest: str, target_manifest: str,
                         store_uri: str, experiment: str) -> str:
    # A sub-pipeline, so that inside the ParallelFor every upstream value is a pipeline input:
    # kfp.local (2.17.3) replaces task-output inputs of a loop body with the loop item. `teacher`:
    # the adapt teacher task's Model, handed to every shard and the index as an artifact.
    # `config` is the plan's cache_teacher settings: the distill stage's resizes (the teacher runs
    # at the student's training geometry).
    inputs = dict(config=config, teacher=teacher, manifests=[source_manifest, target_manifest],
                  num_shards=CACHE_SHARDS,
                  store_uri=store_uri, experiment=experiment, kfp_task=dsl.PIPELINE_TASK_NAME_PLACEHOLDER)
    # On a laptop (`dakd run`) the shards run one at a time: side by side, two-thread torch
    # processes on two cores slowed each other's forward 4-6x with OpenMP's spinning threads.
    local = os.environ.get(LOCAL_RUN_ENV) == "1"
    with dsl.ParallelFor(list(range(CACHE_SHARDS)), name="cache-shards", parallelism=1 if local else None) as shard:
        slice_task = _gpu(cache_teacher_shard(shard_index=shard, **inputs), cpu="4", memory="24Gi")
        slice_task.set_display_name("cache-teacher shard")
    # the fan-in merges shard indices: CPU, retried like the shards (store errors)
    index = _cpu(cache_teacher_index(shard_samples=dsl.Collected(slice_task.output), **inputs), memory="8Gi")
    _retry(index, 2)
    index.set_display_name("cache-teacher index")
    return index.outputs["Output"]


DESCRIPTION = "Domain Adaptive Knowledge Distillation for semantic segmentation"
# The pipeline's description, which the KFP UI shows in its summary panel: the parameter guide
# (dakd submit uploads it as the pipeline's and the version's description too).
GUIDE = form_guide(DESCRIPTION)


def _form(fn):
    """The pipeline's signature is PipelineParams: every parameter with its form type and default,
    in the model's order (KFP reads `inspect.signature` and calls the function with the values in
    that order), and every description from it (KFP parses the docstring's Args into the compiled
    inputDefinitions). No parameter is listed twice."""
    defaults = form_values(PipelineParams())
    fn.__signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name],
                          annotation=form_type(name)) for name in PipelineParams.model_fields])
    fn.__doc__ = pipeline_docstring(DESCRIPTION)
    return fn


@dsl.pipeline(name=PIPELINE_NAME, description=GUIDE)
@_form
def dakd_pipeline(*form_values_in_order):
    # The start task validates the parameters and builds each stage's settings
    # (dakd_core.orchestration.plan): the tasks below get one JSON settings string per stage,
    # never the individual parameters; the few the DAG itself needs are read here.
    pipeline_params = dict(zip(PipelineParams.model_fields, form_values_in_order))
    store_uri, mlflow_experiment = pipeline_params["data_store_uri"], pipeline_params["mlflow_experiment"]
    gpus_per_task, paradigm = pipeline_params["train_gpus_per_task"], pipeline_params["distill_paradigm"]
    job_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    task_name = dsl.PIPELINE_TASK_NAME_PLACEHOLDER
    exit_task = _cpu(finish(kfp_run_id=job_id, experiment=mlflow_experiment), cache=False)
    with dsl.ExitHandler(exit_task, name="dakd-run"):
        begin = _cpu(start(params=pipeline_params, kfp_run_id=job_id, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER),
                     cache=False)
        begin.set_display_name("start: MLflow parent run")  # also checks the parameters and plans the stages
        plan = begin.outputs
        # uncached, run-scoped tasks: the run's folder and its MLflow parent run
        track = dict(store_uri=store_uri, run_name=plan["run_name"], experiment=mlflow_experiment,
                     parent_run_id=plan["parent_run_id"], kfp_run_id=job_id, kfp_task=task_name)
        # cached stages: content and settings only, no per-run identity (a rerun hits the cache)
        stage = dict(store_uri=store_uri, experiment=mlflow_experiment, kfp_task=task_name)

        # -- ingest: reads data outside the pipeline's control, so never cached
        src = _cpu(ingest(fmt=pipeline_params["data_source_format"], root_uri=pipeline_params["data_source_uri"],
                          domain="source", splits=["train"], **track),
                   cache=False, memory="8Gi").set_display_name("ingest source")
        tgt = _cpu(ingest(fmt=pipeline_params["data_target_format"], root_uri=pipeline_params["data_target_uri"],
                          domain="target", splits=["train", "val"], **track),
                   cache=False, memory="8Gi").set_display_name("ingest target")
        src_train = src.outputs["train_manifest"]
        tgt_train, tgt_val = tgt.outputs["train_manifest"], tgt.outputs["val_manifest"]

        # -- pretrain (source only) ∥, then adapt ∥. Checkpoints travel as the producing task's Model
        # artifact (lineage in the UI; the consumer reads the pinned URI from its metadata). The
        # producers are cached, so a cache hit hands on the same artifact and the consumers' cache
        # keys (which hold their input artifacts' identities) still match. Manifests stay strings:
        # see components/ingest.py.
        pre, ada = {}, {}
        for role in ("teacher", "student"):
            pre[role] = _gpu(pretrain(role=role, config=plan[f"pretrain_{role}"], source_manifest=src_train, **stage),
                             gpus=gpus_per_task).set_display_name(f"pretrain {role}")
        for role in ("teacher", "student"):
            ada[role] = _gpu(adapt(role=role, config=plan[f"adapt_{role}"], init=pre[role].outputs["model"],
                                   source_manifest=src_train, target_manifest=tgt_train, **stage),
                             gpus=gpus_per_task).set_display_name(f"adapt {role}")

        # -- teacher cache: a sub-pipeline fanning out over shard slices, then the index fan-in
        teacher = ada["teacher"].outputs["model"]
        cache = cache_teacher_fanout(config=plan["cache_teacher"], teacher=teacher, source_manifest=src_train,
                                     target_manifest=tgt_train,
                                     store_uri=store_uri, experiment=mlflow_experiment)
        cache.set_display_name("cache-teacher")

        # -- distill: the paradigm; for (d), (c) first and (d) initialised from it
        distill_inputs = dict(teacher=teacher, cache_index=cache.output, source_manifest=src_train,
                              target_manifest=tgt_train, **stage)
        first = _gpu(distill(config=plan["distill_first"], init=ada["student"].outputs["model"],
                             **distill_inputs), gpus=gpus_per_task).set_display_name("distill")
        with dsl.If(paradigm == "d", name="paradigm-d"):
            second = _gpu(distill(config=plan["distill_second"], init=first.outputs["model"], **distill_inputs),
                          gpus=gpus_per_task).set_display_name("distill (d) from (c)")
        with dsl.Else(name="paradigm-abc"):
            kept = _cpu(passthrough(model=first.outputs["model"])).set_display_name("distilled student")
        # a OneOf of artifacts: `dakd run` adds what kfp.local 2.17.3 lacks for it (orchestration/local_compat.py)
        distilled = dsl.OneOf(second.outputs["model"], kept.outputs["distilled"])

        # -- export → evaluate → register → promote
        exp = _gpu(export(config=plan["export"], checkpoint=distilled, val_manifest=tgt_val, **stage),
                   retries=1).set_display_name("export")
        ev = _gpu(evaluate(
            config=plan["evaluate"], teacher_source_only=pre["teacher"].outputs["model"], teacher_adapted=teacher,
            student_source_only=pre["student"].outputs["model"],
            student_adapted=ada["student"].outputs["model"], student_distilled=distilled,
            student_onnx_fp16=exp.outputs["onnx_model"], val_manifest=tgt_val, **stage),
            retries=1).set_display_name("evaluate")
        # registry writes are side effects: never served from cache. Register links the stage
        # runs to the parent run by tags (the cached stages never see the parent run's id); it gets
        # the checkpoints' pinned URIs as strings (a dict parameter holds no artifacts).
        stage_outputs = {f"{name}_{role}": tasks[role].outputs["checkpoint"]
                         for name, tasks in (("pretrain", pre), ("adapt", ada)) for role in tasks}
        stage_outputs.update(cache_teacher=cache.output, distill_first=first.outputs["checkpoint"])  # OneOf: no dict member
        reg = _cpu(register(config=plan["register"], export_record=exp.outputs["record"],
                            metrics=ev.outputs["metrics_uri"], stage_outputs=stage_outputs, **track), cache=False)
        _cpu(promote(config=plan["promote"], name=reg.outputs["name"], version=reg.outputs["version"], **track),
             cache=False)


def _choice_lists(pipeline) -> None:
    """Each choice parameter's choices, and a switch's false / true, as its `literals` in the
    compiled IR: the KFP UI's run form (kubeflow/pipelines >= 2.16) shows a drop-down list of them
    instead of a free-text box, and the API server refuses a run whose value is not one of them.
    kfp 2.17.3's compiler writes no literals from a Literal annotation, so they are added to the
    graph it compiles (kfp.local, which `dakd run` uses, ignores them)."""
    def value(choice) -> struct_pb2.Value:
        if isinstance(choice, bool):
            return struct_pb2.Value(bool_value=choice)
        return struct_pb2.Value(number_value=choice) if isinstance(choice, int) else struct_pb2.Value(string_value=choice)

    parameters = pipeline.pipeline_spec.root.input_definitions.parameters
    for name in PipelineParams.model_fields:
        choices = (False, True) if form_type(name) is bool else form_choices(name)
        parameters[name].literals.extend(value(c) for c in choices)


_choice_lists(dakd_pipeline)
