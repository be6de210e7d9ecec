"""Developer and test tooling for llmfleet: the local cluster, the e2e pod backer, plots,
fault-injecting workers, load generators and the helpers the integration and e2e tests share.
It is importable in the development virtual environment (an editable install adds ``dev/`` to
``sys.path``) but is never shipped: the wheel holds only the operator and the worker.
"""
