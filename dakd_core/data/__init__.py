"""Datasets: on-disk formats, image I/O, ingest to Parquet manifests, transforms and the
training dataset. Import the submodules (`dakd_core.data.formats`, `.imageio`, `.manifest`,
`.ingest`, `.transforms`, `.dataset`) directly; this package imports nothing heavy itself."""
