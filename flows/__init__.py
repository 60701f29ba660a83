"""Prefect flows and the ``tlp`` command line; they only compose the steps in ``tasks``."""
