"""A local simulator of Mateo's conversation API: PostgREST behind a proxy, over real HTTP.

Every unknown about the real proxy is a switch of `SandboxConfig`; faults, limits and
introspection (`/_sandbox/rows`, `/_sandbox/stats`) let tests prove what the client sent.
"""

from pipeline.sandbox.app import SandboxApp
from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.data import Dataset, generate_dataset, generate_rows, load_seed
from pipeline.sandbox.server import (
    Sandbox,
    create_app,
    default_dataset,
    mateo_limits_sandbox,
    running_sandbox,
    serve,
)
from pipeline.sandbox.state import SandboxState

__all__ = [
    "Dataset",
    "Sandbox",
    "SandboxApp",
    "SandboxConfig",
    "SandboxState",
    "create_app",
    "default_dataset",
    "generate_dataset",
    "generate_rows",
    "load_seed",
    "mateo_limits_sandbox",
    "running_sandbox",
    "serve",
]
