"""Operations commands: the servers a team reviews runs in, on 127.0.0.1."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from flows.cli.options import DEFAULT_PARAMS, ParamsOptions, Project


def ui(
    *,
    port: int = 5000,
    open_browser: Annotated[bool, Parameter(name="--open")] = False,
    options: ParamsOptions = DEFAULT_PARAMS,
    project: Project,
) -> int:
    """Open the MLflow UI for this project's store on 127.0.0.1.

    Parameters
    ----------
    port
        port of the UI (default: 5000)
    open_browser
        also open it in the default browser
    """
    from flows.servers import mlflow_ui_service, supervise
    from tasks.core.params.storage import resolve_tracking_uri

    uri = resolve_tracking_uri(options.resolve(project).storage.tracking_uri, project.resolve())
    if uri.startswith(("http://", "https://")):
        print(f"The tracking store is a server; its UI is at {uri}")
        return 0
    service = mlflow_ui_service(uri, port)
    print(f"MLflow UI for {uri}:")
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(3.0, webbrowser.open, [f"http://127.0.0.1:{port}"]).start()
    return supervise([service])


def server(
    *,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    backend_store_uri: str | None = None,
    artifacts: str | None = None,
    basic_auth: bool = False,
    options: ParamsOptions = DEFAULT_PARAMS,
    project: Project,
) -> int:
    """Start a Prefect server and an MLflow server on 127.0.0.1 (one box).

    The Prefect server reads the project's own database, where `tlp run` records its flow
    runs, unless PREFECT_HOME or a Prefect database setting says otherwise. While it runs,
    `tlp run` in this project uses it instead of starting a temporary one per run.

    Parameters
    ----------
    prefect_port
        port of the Prefect server (default: 4200)
    mlflow_port
        port of the MLflow server (default: 5000)
    backend_store_uri
        MLflow store (default: storage.tracking_uri, e.g. postgresql://)
    artifacts
        where MLflow keeps artifacts (default: mlartifacts/; or s3://...)
    basic_auth
        MLflow basic auth (admin from MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD)
    """
    from flows.prefect_api import project_database_url, server_record
    from flows.servers import mlflow_server_service, prefect_server_service, supervise
    from tasks.core.params.storage import resolve_tracking_uri

    project = project.resolve()
    configured = resolve_tracking_uri(options.resolve(project).storage.tracking_uri, project)
    store = backend_store_uri or configured
    if store.startswith(("http://", "https://")):
        store = resolve_tracking_uri("sqlite:///mlflow.db", project)
    artifacts = artifacts or str(project / "mlartifacts")
    database = project_database_url(project, server=True)
    services = [
        # the flow runs `tlp run` recorded in the project (.tlp/prefect/prefect.db); a
        # `tlp run` of this project uses this server while it runs (.tlp/prefect/server.json)
        prefect_server_service(
            prefect_port, database, server_record(project, prefect_port, database)
        ),
        mlflow_server_service(store, artifacts, mlflow_port, basic_auth),
    ]
    print("Starting a Prefect server and an MLflow server on 127.0.0.1. Point runs at them with:")
    print(f"  export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api")
    print(f"  export TLP_TRACKING_URI=http://127.0.0.1:{mlflow_port}")
    return supervise(services, log_dir=project / ".tlp" / "logs")


COMMANDS = {"ui": ui, "server": server}
