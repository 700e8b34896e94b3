"""The benchmark side of carla-safe: the ``python -m benchmarks`` command line (also installed
as ``carla-safe``) and what it drives.

Commands (``benchmarks.__main__.COMMANDS``): ``speed`` (env steps/s against highway-env),
``collect`` (expert datasets), ``label`` / ``label-report`` (safety labels p(s) and their
quality), ``train`` / ``evaluate`` (one model on one task), ``wm-check`` / ``wm-speed`` (the
world model's predictions and update rate), ``run`` (the resumable models x tasks x seeds grid
with its Parquet result store, local or on Ray: :mod:`benchmarks.grid`, :mod:`benchmarks.run`,
:mod:`benchmarks.executors`, :mod:`benchmarks.store`) and ``table`` (the seed-format
comparison table with bootstrap confidence intervals beside the published numbers:
:mod:`benchmarks.table`, :mod:`benchmarks.stats`, :mod:`benchmarks.plots`,
:mod:`benchmarks.published`).  Dependencies point one way:
``benchmarks -> baselines -> vlsafe -> carla_safe_envs``.
"""
