"""`tunecraft serve`: load the targets, check the bind address, and run uvicorn.

Binding anything but loopback exposes the model to the network, so it needs an API key; a
keyless server also answers only loopback host names (serve.guards). A model's own code runs
only with `--trust-remote-code` given to this command.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from collections.abc import Callable, Sequence

from tunecraft.errors import TunecraftError
from tunecraft.rundir import is_run_dir
from tunecraft.serve.app import Extension, ServeSettings, create_app
from tunecraft.serve.engine import LoadedModel, ModelCache, load_target


ExtensionFactory = Callable[[dict[str, LoadedModel], ModelCache, dict[str, str]], Extension]


class ServeError(TunecraftError):
    """A server that must not start as asked (e.g. a public address without a key)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: we cannot know where it resolves, so treat it as public
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback address without an API key."""
    if not is_loopback(host) and not api_key:
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who can reach this machine "
            "could use the model. Pass --api-key KEY (clients send Authorization: Bearer KEY), "
            "or keep the default --host 127.0.0.1."
        )


def load_targets(
    targets: Sequence[str],
    on_status: Callable[[str], None] | None = None,
    trust_remote_code: bool = False,
    cache: ModelCache | None = None,
) -> dict[str, LoadedModel]:
    """Load every target once; LoRA runs over the same base share that base's weights."""
    cache = cache if cache is not None else ModelCache()
    models: dict[str, LoadedModel] = {}
    for target in targets:
        if on_status:
            on_status(f"loading {target}")
        lm = load_target(target, cache=cache, trust_remote_code=trust_remote_code)
        if lm.name in models:
            raise ServeError(f"two targets are both named {lm.name!r}; serve them from differently named directories")
        models[lm.name] = lm
    return models


def serve(
    targets: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    settings: ServeSettings | None = None,
    on_status: Callable[[str], None] | None = None,
    trust_remote_code: bool = False,
    extension: ExtensionFactory | None = None,
) -> None:
    """Run the OpenAI-compatible server until interrupted.

    `extension(models, cache, base_targets)` builds routes mounted beside the API (the
    fine-tuning service) over the loaded models; `base_targets` maps each served base model
    (not a run directory) to the argument it was loaded from.
    """
    import uvicorn

    check_bind(host, api_key)
    cache = ModelCache()
    models = load_targets(targets, on_status, trust_remote_code, cache)
    base = settings or ServeSettings()
    bases = {lm.name: t for t, lm in zip(targets, models.values()) if not is_run_dir(Path(t).expanduser())}
    ext = extension(models, cache, bases) if extension is not None else None
    app = create_app(models, ServeSettings(**{**base.__dict__, "api_key": api_key or base.api_key}), ext)
    if on_status:
        on_status(f"serving {', '.join(models)} at http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")
