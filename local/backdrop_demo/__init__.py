"""The demo of the offline world: ``make demo`` (``demo``), its contact sheet (``contactsheet``) and
the image model the local Runflow runs when it processes for real (``imaging``, ``segmentation``).

Nothing in ``backdrop_local`` needs this package except a real run of the local Runflow, which
loads ``imaging`` on first use (``backdrop_local.runflow.processing.real_renderer``).
"""
