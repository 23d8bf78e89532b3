"""Long-running servers: `cai serve` (a vLLM OpenAI-compatible server for a config's model) and `cai dashboard`
(the operator dashboard of a run)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from loop.cli.errors import fail, failures_reported
from loop.cli.options import RunDir
from loop.cli.output import console, out, setup_logging
from loop.config import ConfigError, load_run_config
from policies.models import ModelNotFoundError, resolve_model_dir
from policies.serving.vllm_env import VllmEnvError, ensure_vllm_env, vllm_env_dir
from policies.serving.vllm_server import VllmServer, VllmStartError, host_and_port, served_model_name


def serve(
    config: Annotated[Path, typer.Option("--config", help="Run config YAML: its model and generation.server.")],
    url: Annotated[str | None, typer.Option(help="Where to listen (default: generation.server.url).")] = None,
    log: Annotated[Path | None, typer.Option(help="Server log (default: CAI_HOME/vllm/server-PORT.log).")] = None,
) -> None:
    """Start a vLLM OpenAI-compatible server (CPU build) for the config's base model; Ctrl-C stops it.

    First use creates the vLLM environment under CAI_HOME (minutes). The URL goes to stdout once it is ready.
    """
    setup_logging(None)
    try:
        run_config = load_run_config(config)
        settings = run_config.generation.server
        # The same precision as the transformers backend unless the server section says otherwise.
        settings = settings.model_copy(update={"dtype": settings.dtype or run_config.model.dtype})
        url = (url or settings.url).rstrip("/")
        port = host_and_port(url)[1]
        home = run_config.home
        console.print(f"vLLM environment: {vllm_env_dir(home)} (created on first use)", highlight=False)
        python = ensure_vllm_env(home)
        model_dir = resolve_model_dir(run_config.model.name, home)
        name = served_model_name(run_config.model.name)
        server = VllmServer.start(python, model_dir, served_name=name, settings=settings,
                                  lora_rank=run_config.train.lora.r,
                                  log_path=log or home / "vllm" / f"server-{port}.log",
                                  url=url)
    except (ConfigError, ModelNotFoundError, VllmEnvError, VllmStartError, ValueError) as exc:
        fail(str(exc))
    # SIGTERM (a service manager, `kill`) stops the server too: it runs in its own process group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        console.print(f"starting {name} from {model_dir} (log: {server.log_path})", highlight=False)
        seconds = server.wait_ready(settings.start_timeout_s)
        console.print(f"ready in {seconds:.0f} s at {server.url}. Use it with `generation.backend: vllm-server` "
                      f"and `generation.server.url: {server.url}`. Ctrl-C stops it.", highlight=False)
        out.print(server.url, highlight=False)
        code = server.process.wait()
        fail(f"the vLLM server exited with code {code}; last lines of {server.log_path}:\n{server.log_tail()}")
    except VllmStartError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print("stopping the vLLM server")
    finally:
        server.stop()


def dashboard(
    run_dir: RunDir,
    host: Annotated[str, typer.Option(help="Address to listen on (only this machine by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[str | None, typer.Option(
        envvar="CAI_DASHBOARD_TOKEN", show_envvar=True,
        help="The operator token: with it, operators who present it (the login page, or `Authorization: Bearer "
             "TOKEN`) may review pairs, pause, resume, promote and roll back. Without one the dashboard is "
             "read-only. Prefer the environment variable: an option shows in the process list.")] = None,
) -> None:
    """Serve the operator dashboard of a run: overview, iterations, samples, principles, review queue, controls
    and a JSON API (its OpenAPI document at /openapi.json)."""
    setup_logging(None)
    with failures_reported():
        # The web stack (uvicorn, FastAPI) is heavy: only this command loads it.
        import uvicorn

        from loop.dashboard.app import LOOPBACK_HOSTS, create_app

        # Bound to this machine only, it answers only to this machine's names (no DNS rebinding).
        local = host in LOOPBACK_HOSTS
        dashboard_app = create_app(run_dir, token=token, allowed_hosts=LOOPBACK_HOSTS if local else None)
        mode = "operators with the token may review and control" if token else "read-only (no operator token)"
        console.print(f"dashboard of {run_dir} on http://{host}:{port}/ ({mode}); Ctrl-C stops it", highlight=False)
        try:
            uvicorn.run(dashboard_app, host=host, port=port, log_level="warning")
        finally:
            dashboard_app.state.dashboard.reader.dispose()  # the dashboard opened it: no store was passed
