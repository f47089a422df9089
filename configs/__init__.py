"""The settings shipped with mixagent (``*.yaml``), as package data of ``mixagent.configs``.

A setting file names the domains, model, budget and objective of one mixing problem
(``env/setting.py``). This folder is the repository's ``configs/`` and, in a wheel, lives inside the
installed package, so ``--setting math-tiny`` works wherever mixagent is installed.
"""
