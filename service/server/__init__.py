"""The mixing server: the FastAPI app and everything behind it.

``main.create_app(settings)`` builds the app; ``api`` holds one router per resource; ``deps`` the
route dependencies (caller from the bearer token, store, registry); ``config`` the ``MIXAGENT_*``
settings; ``schemas`` the wire types; ``runs`` the rules of the feedback loop over the database
(``db``, ``models``); ``registry`` the policy versions; ``errors`` the error tree and how it reaches
the wire; ``metrics`` Prometheus; ``export`` served runs as trajectories; ``cli`` the ``serve`` and
``export-runs`` commands.

Must not import: torch, transformers, d3rlpy, gymnasium, ``mixagent.env`` or
``mixagent.service.trainer`` (serving stays a slim CPU install; ``tests/service/test_layering.py``
imports every module here in a fresh interpreter and checks).
"""
