"""Training stages: one readable loop per method (`pretrain`, `adapt`, `distill`) over `engine`.

The package itself imports nothing heavy: the CLI builds its flags from `train.configs`, and
importing torch (via `engine`) for that made `dakd --help` take seconds. `TrainResult` and
`default_device` are loaded from `engine` on first use."""

__all__ = ["TrainResult", "default_device"]


def __getattr__(name: str):
    if name in __all__:
        from dakd_core.train import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
