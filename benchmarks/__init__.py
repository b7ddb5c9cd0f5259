"""Benchmarks and reference twins: outside the package, so ``import nst_jax`` never imports torch.

``torch_twin`` is the plain-PyTorch reference of the objective (tests and
benchmarks compare against it); ``harness`` runs one measurement per child
process for ``scripts/benchmark.py``; each ``<mode>.py`` beside them with a
``run(flags_dict) -> dict`` and a ``markdown(results) -> str`` is a
``scripts/benchmark.py --mode=<mode>``.
"""
