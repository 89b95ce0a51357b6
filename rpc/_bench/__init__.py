"""``lanerpc bench``: lanerpc on every lane next to grpc.aio and the bare floors, in one
run (see :mod:`rpc._bench._run`). Shipped in the package so it runs from an install; it
imports nothing of the repository's tests or examples (its Echo service's generated
modules are copies of examples/echo's, kept equal by tests/cli/test_bench.py)."""
