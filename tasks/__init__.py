"""The pipeline's steps as plain Python: each usable without Prefect (see ``tasks.stages``)."""
