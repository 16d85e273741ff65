"""Quality evaluation: prompt suites (data), image statistics and human-rating statistics.

Submodules are imported on use (``from lightdiff.evals import imagestats``) so that loading a
suite does not pull in scikit-image or scipy. Nothing here loads a pipeline or touches a GPU.
"""
