"""The mixing service, in two rooms that share nothing but the data contract.

``mixagent.service.server``
    The HTTP server: the FastAPI app (``server.main.create_app``), wire schemas, the run store and
    its database tables, auth, metrics, errors, the policy registry, the export of served runs as
    trajectories, and the ``serve`` / ``export-runs`` commands. It must not import torch,
    transformers, d3rlpy, ``mixagent.env`` or the trainer room (checked by
    ``tests/service/test_layering.py``); it loads policies through ``mixagent.agent.policy`` and
    ``mixagent.agent.baselines`` only.

``mixagent.service.trainer``
    What runs inside a user's training job: the HTTP client (``trainer.client``, httpx only), the
    PyTorch sampler (``trainer.sampler``), the Hugging Face callback (``trainer.hf``) and the
    ``demo`` command, which drives ``mixagent.env`` against an in-process server. torch and
    transformers are imported only by the modules that need them.

``mixagent.service.cli`` registers ``serve``, ``export-runs`` and ``demo`` on the root command and
imports each room only when its command runs. The old flat module paths
(``mixagent.service.client``, ``.sampler``, ``.hf``, ``.main``, ...) still work for one release and
warn with a ``DeprecationWarning``.
"""
