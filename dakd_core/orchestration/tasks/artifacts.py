"""Stage outputs as KFP artifacts (the UI's lineage), and a stage input read back from one.

A stage's output lives in the store at a pinned URI (`<uri>#sha256=<hex>`); its artifact keeps the
URI KFP gave it, under the pipeline root, and records the pinned URI in its metadata (and, so the
artifact is not empty, in a one-line file at its path). KFP's launcher uploads an output artifact
to, and downloads an input artifact from, the artifact's URI through the pipeline root's bucket: an
artifact pointed at the dakd store (another bucket: `s3://dakd/...`) fails that upload, and every
consumer would download whole checkpoints it reads from the store itself anyway.
"""

from __future__ import annotations

from dakd_core.errors import DataError

PINNED_URI = "pinned_uri"  # metadata key of the stage output's pinned store URI


def publish(artifact, pinned_uri: str, **metadata) -> None:
    """Describe the stage output at `pinned_uri` by the KFP output `artifact`."""
    artifact.metadata.update({PINNED_URI: pinned_uri, **metadata})
    with open(artifact.path, "w") as f:
        f.write(pinned_uri + "\n")


def pinned(artifact) -> str:
    """The pinned store URI of the stage output an input artifact describes."""
    uri = artifact.metadata.get(PINNED_URI)
    if not isinstance(uri, str) or not uri:
        raise DataError(f"input artifact {artifact.name or artifact.uri!r} has no metadata '{PINNED_URI}': it was "
                        "not written by a dakd stage task")
    return uri
