"""The benchmark side of carla-safe: the ``python -m benchmarks`` command line (also installed
as ``carla-safe``) and what it drives.

Today it holds ``speed`` (environment steps per second against highway-env). Per the design it
grows the offline data collection (``collect``), CLIP safety labelling (``label``,
``label-report``), training and evaluation of the nine models (``train``, ``evaluate``), the
resumable models x tasks x seeds grid with its Parquet result store (``run``) and the
seed-format comparison table with confidence intervals (``table``). Dependencies point one way:
``benchmarks -> baselines -> vlsafe -> carla_safe_envs``.
"""
